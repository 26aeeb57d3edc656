"""Stochastic Lotka–Volterra predator–prey generator (Euler–Maruyama), as in Graham & Storkey.

Inputs u = [u_z (4) ; u_n (2T)] ~ N(0, I) with interleaved noise [n1(1), n2(1), n1(2), …];
rates z = exp(u_z − 2); outputs y = [y1(1), y2(1), …, y1(T), y2(T)]. The predator update
uses the already-updated prey y1(t), as the original code (and its observed data) does.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dgm.inference.manifold import gram_factor

NUM_PARAMS = 4
TRUE_RATES = (0.4, 0.005, 0.05, 0.001)


class LotkaVolterra(NamedTuple):
    """Model constants (defaults: the paper's)."""

    num_steps: int = 50
    dt: float = 1.0
    sigma: float = 1.0
    y0: tuple[float, float] = (100.0, 100.0)
    prior_loc: float = -2.0

    @property
    def input_dim(self) -> int:
        return NUM_PARAMS + 2 * self.num_steps

    @property
    def output_dim(self) -> int:
        return 2 * self.num_steps

    def rates(self, u_z: Float[Array, " 4"]) -> Float[Array, " 4"]:
        return jnp.exp(u_z + self.prior_loc)

    def generate(self, u: Float[Array, " dim"]) -> Float[Array, " obs"]:
        """y = G(u): the simulated, interleaved prey and predator sequence."""
        z = self.rates(u[:NUM_PARAMS])
        noise = u[NUM_PARAMS:].reshape(self.num_steps, 2)
        scale = np.sqrt(self.dt) * self.sigma

        def body(y, n):
            y1, y2 = y
            y1 = y1 + self.dt * (z[0] * y1 - z[1] * y1 * y2) + scale * n[0]
            y2 = y2 + self.dt * (-z[2] * y2 + z[3] * y1 * y2) + scale * n[1]
            return (y1, y2), jnp.stack([y1, y2])

        y_init = (jnp.asarray(self.y0[0], u.dtype), jnp.asarray(self.y0[1], u.dtype))
        _, ys = jax.lax.scan(body, y_init, noise)
        return ys.reshape(-1)

    def noise_given_params(
        self, u_z: Float[Array, " 4"], y_obs: Float[Array, " obs"]
    ) -> Float[Array, " noise"]:
        """The noise inputs u_n with G([u_z, u_n]) = y_obs (closed form; additive noise)."""
        z = self.rates(u_z)
        y = y_obs.reshape(self.num_steps, 2)
        prev = jnp.concatenate([jnp.asarray([self.y0], y.dtype), y[:-1]], axis=0)
        y1p, y2p = prev[:, 0], prev[:, 1]
        y1, y2 = y[:, 0], y[:, 1]
        n1 = y1 - y1p - self.dt * (z[0] * y1p - z[1] * y1p * y2p)
        n2 = y2 - y2p - self.dt * (-z[2] * y2p + z[3] * y1 * y2p)
        scale = np.sqrt(self.dt) * self.sigma
        return (jnp.stack([n1, n2], axis=1) / scale).reshape(-1)

    def half_log_det_gram(self, u: Float[Array, " dim"], y_obs) -> Float[Array, ""]:
        """½ log det(J Jᵀ) of the generator's Jacobian J, exact on {u : G(u) = y_obs}.

        With J = [J_z, J_n], J_n is lower triangular with diagonal √dt·σ, so
        J Jᵀ = J_n (I + B Bᵀ) J_nᵀ with B = J_n⁻¹ J_z, and on the manifold B = −∂n/∂u_z
        for the closed-form noise map n(u_z). Hence
        ½ log det(J Jᵀ) = N log(√dt·σ) + ½ log det(I₄ + Bᵀ B): a 4×4 determinant of a
        Jacobian with 4 columns, instead of a 100×100 Cholesky (u_n is not read).
        """
        b = jax.jacfwd(self.noise_given_params)(u[:NUM_PARAMS], y_obs)
        gram4 = jnp.eye(NUM_PARAMS, dtype=u.dtype) + b.T @ b
        scale = np.sqrt(self.dt) * self.sigma
        return self.output_dim * np.log(scale) + jnp.sum(jnp.log(jnp.diagonal(gram_factor(gram4))))

    def input_on_manifold(self, u_z, y_obs) -> Float[Array, " dim"]:
        return jnp.concatenate([u_z, self.noise_given_params(u_z, y_obs)])

    def log_posterior_params(self, u_z: Float[Array, " 4"], y_obs) -> Float[Array, ""]:
        """Exact log p(u_z | y_obs) + const: the noise map has unit-triangular Jacobian."""
        n = self.noise_given_params(u_z, y_obs)
        return -0.5 * jnp.dot(u_z, u_z) - 0.5 * jnp.dot(n, n)

    def observed_inputs(self, seed: int = 1234) -> np.ndarray:
        """The inputs behind the paper's observed data: log z* + 2 and legacy-NumPy noise."""
        noise = np.random.RandomState(seed).normal(size=2 * self.num_steps)
        return np.concatenate([np.log(TRUE_RATES) - self.prior_loc, noise])
