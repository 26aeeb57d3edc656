"""A deterministic predator–prey ODE solved by RK4, observed with log-normal noise.

Inputs u = [u_θ (4) | n (2K)] ~ N(0, I); rates θ = exp(prior_loc + prior_scale · u_θ)
of dx/dt = θ₁x − θ₂xy, dy/dt = −θ₃y + θ₄xy from (x₀, y₀), solved with ``substeps``
classical Runge–Kutta steps per unit of time; outputs at t = 1, …, K:
y = [x(1) e^{σ n₁}, y(1) e^{σ n₂}, …] (interleaved). Every part is differentiable, and the
noise is an explicit input, so the generator can be conditioned on its output; the
equivalent explicit likelihood, log y ~ N(log x(θ), σ²), gives an exact reference.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

NUM_PARAMS = 4
TRUE_RATES = (1.0, 0.1, 1.5, 0.075)


class PredatorPreyODE(NamedTuple):
    """Model constants."""

    num_obs_times: int = 10
    substeps: int = 20
    sigma: float = 0.1
    x0: tuple[float, float] = (10.0, 5.0)
    prior_loc: tuple[float, ...] = tuple(float(np.log(r)) for r in TRUE_RATES)
    prior_scale: float = 0.5

    @property
    def input_dim(self) -> int:
        return NUM_PARAMS + self.output_dim

    @property
    def output_dim(self) -> int:
        return 2 * self.num_obs_times

    def rates(self, u_theta: Float[Array, " 4"]) -> Float[Array, " 4"]:
        return jnp.exp(jnp.asarray(self.prior_loc, u_theta.dtype) + self.prior_scale * u_theta)

    def trajectory(self, u_theta: Float[Array, " 4"]) -> Float[Array, " obs"]:
        """[x(1), y(1), …, x(K), y(K)]: the noise-free solution at the observation times."""
        a, b, c, d = self.rates(u_theta)
        h = 1.0 / self.substeps

        def f(s):
            x, y = s[0], s[1]
            return jnp.stack([a * x - b * x * y, -c * y + d * x * y])

        def rk4(s, _):
            k1 = f(s)
            k2 = f(s + 0.5 * h * k1)
            k3 = f(s + 0.5 * h * k2)
            k4 = f(s + h * k3)
            return s + (h / 6.0) * (k1 + 2.0 * k2 + 2.0 * k3 + k4), None

        def unit(s, _):
            s, _ = jax.lax.scan(rk4, s, None, length=self.substeps)
            return s, s

        s0 = jnp.asarray(self.x0, u_theta.dtype)
        _, states = jax.lax.scan(unit, s0, None, length=self.num_obs_times)
        return states.reshape(-1)

    def generate(self, u: Float[Array, " dim"]) -> Float[Array, " obs"]:
        """y = x(θ) ⊙ exp(σ n)."""
        return self.trajectory(u[:NUM_PARAMS]) * jnp.exp(self.sigma * u[NUM_PARAMS:])

    def log_posterior_params(self, u_theta: Float[Array, " 4"], y_obs) -> Float[Array, ""]:
        """log p(u_θ | y) + const: N(u_θ; 0, I) times N(log y; log x(θ), σ² I)."""
        r = (jnp.log(y_obs) - jnp.log(self.trajectory(u_theta))) / self.sigma
        return -0.5 * jnp.dot(u_theta, u_theta) - 0.5 * jnp.dot(r, r)

    def observe(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(u*, y*)``: the true rates and NumPy-seeded noise, and their output."""
        noise = np.random.default_rng(seed).normal(size=self.output_dim)
        u = np.concatenate([np.zeros(NUM_PARAMS), noise])
        with jax.enable_x64(True):
            return u, np.asarray(self.generate(jnp.asarray(u)))
