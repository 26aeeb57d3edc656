"""Synthetic state-space datasets of the DMM paper (theanomodels ``synthp.py``)."""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.models.kalman import LinearGaussianSSM


def synthetic9() -> LinearGaussianSSM:
    """The paper's 1-D linear model ``synthetic9`` (variances, not scales).

    z₁ ~ N(0, 1), z_t ~ N(z_{t−1} + 0.05, 10), x_t ~ N(0.5 z_t, 20).
    """

    def m(v):
        return jnp.array([[v]], jnp.float32)

    return LinearGaussianSSM(
        A=m(1.0),
        b=jnp.array([0.05], jnp.float32),
        Q=m(10.0),
        C=m(0.5),
        d=jnp.zeros((1,), jnp.float32),
        R=m(20.0),
        m0=jnp.zeros((1,), jnp.float32),
        P0=m(1.0),
    )


def sample_linear_gaussian(
    params: LinearGaussianSSM, num_sequences: int, num_steps: int, key: PRNGKeyArray
) -> tuple[Float[Array, "batch time obs"], Float[Array, "batch time latent"]]:
    """Draw ``num_sequences`` sequences of length ``num_steps``; returns ``(x, z)``."""
    for name, v in [("num_sequences", num_sequences), ("num_steps", num_steps)]:
        if not (isinstance(v, int) and v > 0):
            raise ValueError(f"`{name}` must be a positive int; got {v!r}")
    return _sample(params, num_sequences, num_steps, key)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _sample(params: LinearGaussianSSM, num_sequences: int, num_steps: int, key: PRNGKeyArray):
    p = params
    chol_q, chol_r, chol_0 = (jnp.linalg.cholesky(c) for c in (p.Q, p.R, p.P0))
    latent, obs = p.A.shape[0], p.C.shape[0]

    def one(k):
        k0, kz, kx = jax.random.split(k, 3)
        z1 = p.m0 + chol_0 @ jax.random.normal(k0, (latent,), p.m0.dtype)

        def step(z, eps):
            z_next = p.A @ z + p.b + chol_q @ eps
            return z_next, z_next

        eps = jax.random.normal(kz, (num_steps - 1, latent), p.m0.dtype)
        _, zs = jax.lax.scan(step, z1, eps)
        z = jnp.concatenate([z1[None], zs])
        noise = jax.random.normal(kx, (num_steps, obs), p.m0.dtype)
        x = z @ p.C.T + p.d[None, :] + noise @ chol_r.T
        return x, z

    return jax.vmap(one)(jax.random.split(key, num_sequences))
