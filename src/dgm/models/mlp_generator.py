"""A small random MLP generator with additive noise: the test case of simulation-based checks.

Inputs u = [z (latent_dim) | n (output_dim)] ~ N(0, I); outputs
y = f(z) + noise_scale · n with f(z) = W₂ tanh(W₁ z + b₁) + b₂ + skip · z (the skip term
needs ``output_dim == latent_dim``). The weights are drawn once from a seed, so the
generator is a fixed, smooth, non-linear map with several local modes of p(z | y).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float


class MLPGenerator(NamedTuple):
    """Weights and constants of the generator (NumPy arrays: hashable by identity)."""

    w1: np.ndarray
    b1: np.ndarray
    w2: np.ndarray
    b2: np.ndarray
    noise_scale: float = 0.1
    skip: float = 0.5

    @staticmethod
    def random(
        seed: int = 0,
        latent_dim: int = 3,
        hidden_dim: int = 16,
        noise_scale: float = 0.1,
        weight_scale: float = 1.0,
    ) -> "MLPGenerator":
        """Weights with N(0, weight_scale²/fan_in) entries (biases N(0, 1), N(0, ¼)) from a
        NumPy seed."""
        rng = np.random.default_rng(seed)
        w1 = rng.normal(size=(hidden_dim, latent_dim)) * weight_scale / np.sqrt(latent_dim)
        w2 = rng.normal(size=(latent_dim, hidden_dim)) * weight_scale / np.sqrt(hidden_dim)
        b1 = rng.normal(size=hidden_dim)
        b2 = rng.normal(size=latent_dim) * 0.5
        return MLPGenerator(w1, b1, w2, b2, float(noise_scale))

    @property
    def latent_dim(self) -> int:
        return int(self.w1.shape[1])

    @property
    def input_dim(self) -> int:
        return 2 * self.latent_dim

    @property
    def output_dim(self) -> int:
        return self.latent_dim

    def mean(self, z: Float[Array, " latent"]) -> Float[Array, " obs"]:
        """f(z), the noise-free output."""
        dtype = z.dtype
        h = jnp.tanh(jnp.asarray(self.w1, dtype) @ z + jnp.asarray(self.b1, dtype))
        return jnp.asarray(self.w2, dtype) @ h + jnp.asarray(self.b2, dtype) + self.skip * z

    def generate(self, u: Float[Array, " dim"]) -> Float[Array, " obs"]:
        """y = f(z) + noise_scale · n for u = [z | n]."""
        k = self.latent_dim
        return self.mean(u[:k]) + self.noise_scale * u[k:]

    def log_posterior_latent(self, z: Float[Array, " latent"], y) -> Float[Array, ""]:
        """log p(z | y) + const: N(z; 0, I) times N(y; f(z), noise_scale² I)."""
        r = (y - self.mean(z)) / self.noise_scale
        return -0.5 * jnp.dot(z, z) - 0.5 * jnp.dot(r, r)

    def simulate(self, key, num: int) -> tuple[Array, Array]:
        """``num`` prior draws of u and their outputs."""
        u = jax.random.normal(key, (num, self.input_dim))
        return u, jax.vmap(self.generate)(u)
