"""Stochastic Lotka–Volterra predator–prey generator (Euler–Maruyama), as in Graham & Storkey.

Inputs u = [u_z (4) ; u_n (2T)] ~ N(0, I) with interleaved noise [n1(1), n2(1), n1(2), …];
rates z = exp(u_z − 2); outputs y = [y1(1), y2(1), …, y1(T), y2(T)]. The predator update
uses the already-updated prey y1(t), as the original code (and its observed data) does.
"""

from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dgm.inference.manifold import DenseCholesky, TriangularBlockGram

NUM_PARAMS = 4
TRUE_RATES = (0.4, 0.005, 0.05, 0.001)


class NoiseMapJacobian(eqx.Module):
    """D = ∂n/∂y of the closed-form noise map at fixed rates: J_n⁻¹, block bidiagonal.

    For an interleaved vector r = [r1(1), r2(1), r1(2), …] (with r(0) = 0),
    scale · (D r)1(t) = r1(t) + c11(t) r1(t−1) + c12(t) r2(t−1) and
    scale · (D r)2(t) = r2(t) + e21(t) r1(t) + c22(t) r2(t−1), where scale = √dt·σ.
    Used as the ``inverse`` of :class:`~dgm.inference.manifold.TriangularBlockGram`.
    """

    c11: Float[Array, " steps"]
    c12: Float[Array, " steps"]
    e21: Float[Array, " steps"]
    c22: Float[Array, " steps"]
    inv_scale: float = eqx.field(static=True)  # 1 / scale: a constant, not chain state

    @staticmethod
    def _split(x):
        x = x.reshape(-1, 2, *x.shape[1:])
        return x[:, 0], x[:, 1]

    @staticmethod
    def _merge(x1, x2):
        return jnp.stack([x1, x2], axis=1).reshape(-1, *x1.shape[1:])

    @staticmethod
    def _col(c, x):
        return c.reshape(-1, *([1] * (x.ndim - 1)))

    def matvec(self, x):
        """D x for x of shape (obs,) or (obs, k)."""
        x1, x2 = self._split(x)
        prev1 = jnp.concatenate([jnp.zeros_like(x1[:1]), x1[:-1]])
        prev2 = jnp.concatenate([jnp.zeros_like(x2[:1]), x2[:-1]])
        c = lambda a: self._col(a, x1)  # noqa: E731
        d1 = x1 + c(self.c11) * prev1 + c(self.c12) * prev2
        d2 = x2 + c(self.e21) * x1 + c(self.c22) * prev2
        return self.inv_scale * self._merge(d1, d2)

    def rmatvec(self, x):
        """Dᵀ x for x of shape (obs,) or (obs, k)."""
        v1, v2 = self._split(x)
        c = lambda a: self._col(a, v1)  # noqa: E731
        # row (t+1, ·) of D reaches column t through the c·(t+1) coefficients
        n1 = jnp.concatenate([c(self.c11)[1:] * v1[1:], jnp.zeros_like(v1[:1])])
        n2 = jnp.concatenate(
            [c(self.c12)[1:] * v1[1:] + c(self.c22)[1:] * v2[1:], jnp.zeros_like(v2[:1])]
        )
        return self.inv_scale * self._merge(v1 + c(self.e21) * v2 + n1, v2 + n2)


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

    @property
    def noise_scale(self) -> float:
        """√dt·σ: the factor of each noise input in the Euler–Maruyama update."""
        return float(np.sqrt(self.dt) * self.sigma)

    def rates(self, u_z: Float[Array, " 4"]) -> Float[Array, " 4"]:
        return jnp.exp(u_z + self.prior_loc)

    def generate(self, u: Float[Array, " dim"]) -> Float[Array, " obs"]:
        """y = G(u): the simulated, interleaved prey and predator sequence."""
        z = self.rates(u[:NUM_PARAMS])
        noise = u[NUM_PARAMS:].reshape(self.num_steps, 2)
        scale = self.noise_scale

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
        scale = self.noise_scale
        return (jnp.stack([n1, n2], axis=1) / scale).reshape(-1)

    def noise_map_jacobian(self, u: Float[Array, " dim"]) -> NoiseMapJacobian:
        """J_n(u)⁻¹, where J_n = ∂G/∂u_n is the (lower triangular) noise block of J.

        For fixed rates the generator is a bijection from noise to outputs whose inverse
        is :meth:`noise_given_params`, so J_n(u)⁻¹ = ∂n/∂y at y = G(u), at every u (on the
        manifold or not); it is block bidiagonal, as n(t) reads only y(t) and y(t − 1).
        """
        z = self.rates(u[:NUM_PARAMS])
        y = self.generate(u).reshape(self.num_steps, 2)
        prev = jnp.concatenate([jnp.asarray([self.y0], y.dtype), y[:-1]], axis=0)
        y1p, y2p, y1 = prev[:, 0], prev[:, 1], y[:, 0]
        dt = self.dt
        return NoiseMapJacobian(
            c11=-1.0 - dt * (z[0] - z[1] * y2p),
            c12=dt * z[1] * y1p,
            e21=-dt * z[3] * y2p,
            c22=-1.0 - dt * (-z[2] + z[3] * y1),
            inv_scale=1.0 / self.noise_scale,
        )

    def gram_factor(
        self, u: Float[Array, " dim"], jac: Float[Array, "obs dim"]
    ) -> TriangularBlockGram:
        """Structured factor of J Jᵀ for ``gram_factor_fn``: J = [J_z | J_n] with J_n⁻¹
        banded (:meth:`noise_map_jacobian`), so every (J Jᵀ)⁻¹ solve is two banded products
        and a 4×4 Woodbury solve."""
        return TriangularBlockGram.from_jacobian(jac, NUM_PARAMS, self.noise_map_jacobian(u))

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
        scale = self.noise_scale
        return self.output_dim * np.log(scale) + DenseCholesky.from_gram(gram4).half_log_det()

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
