"""Synthetic state-space datasets of the DMM paper (theanomodels ``synthp.py``).

``synthetic9`` is linear-Gaussian (exact answers from the Kalman filter); ``synthetic10``
(1-D) and ``synthetic11`` (2-D) have nonlinear transitions. All second arguments of N(·, ·)
below are **variances**.
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.config import check_choice, check_positive
from dgm.models.kalman import LinearGaussianSSM, NonlinearGaussianSSM


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


NONLINEAR = ("synthetic10", "synthetic11")
SYNTHETIC11_ALPHA, SYNTHETIC11_BETA = 0.5, -0.1


def _synthetic10_step(z):
    return 2.0 * jnp.sin(z) + z


def _synthetic11_step(z):
    return jnp.stack(
        [
            0.2 * z[..., 0] + jnp.tanh(SYNTHETIC11_ALPHA * z[..., 1]),
            0.2 * z[..., 1] + jnp.sin(SYNTHETIC11_BETA * z[..., 0]),
        ],
        axis=-1,
    )


# name: (latent dim, transition mean, transition var, emission var, initial var)
_NONLINEAR_SPECS = {
    "synthetic10": (1, _synthetic10_step, 5.0, 5.0, 0.01),
    "synthetic11": (2, _synthetic11_step, 1.0, 0.1, 1.0),
}


def _emission_mean(z):
    return 0.5 * z


def nonlinear_latent_dim(name: str) -> int:
    """Latent (= observed) dimension of a nonlinear synthetic dataset."""
    check_choice("dataset", name, NONLINEAR)
    return _NONLINEAR_SPECS[name][0]


def nonlinear_ssm(name: str) -> NonlinearGaussianSSM:
    """The model :func:`sample_nonlinear` draws from (float32), for the unscented smoother."""
    dim = nonlinear_latent_dim(name)
    _, mean_fn, q_var, r_var, p0_var = _NONLINEAR_SPECS[name]
    eye = jnp.eye(dim, dtype=jnp.float32)
    return NonlinearGaussianSSM(
        f=mean_fn,
        h=_emission_mean,
        Q=q_var * eye,
        R=r_var * eye,
        m0=jnp.zeros((dim,), jnp.float32),
        P0=p0_var * eye,
    )


def sample_nonlinear(
    name: str, num_sequences: int, num_steps: int, key: PRNGKeyArray
) -> tuple[Float[Array, "batch time obs"], Float[Array, "batch time latent"]]:
    """Draw ``(x, z)`` from a nonlinear synthetic state-space model of the paper.

    ``synthetic10``: z₁ ~ N(0, 0.01), z_t ~ N(2 sin(z_{t−1}) + z_{t−1}, 5), x_t ~ N(0.5 z_t, 5).
    ``synthetic11``: z_t ~ N([0.2 z⁰ + tanh(α z¹); 0.2 z¹ + sin(β z⁰)], I) with α = 0.5,
    β = −0.1, x_t ~ N(0.5 z_t, 0.1 I); the spec leaves its initial state open, and
    z₁ ~ N(0, I) is used here.
    """
    nonlinear_latent_dim(name)
    for arg, v in [("num_sequences", num_sequences), ("num_steps", num_steps)]:
        check_positive(arg, v, integer=True)
    return _sample_nonlinear(name, num_sequences, num_steps, key)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _sample_nonlinear(name: str, num_sequences: int, num_steps: int, key: PRNGKeyArray):
    dim, mean_fn, q_var, r_var, p0_var = _NONLINEAR_SPECS[name]
    k0, kz, kx = jax.random.split(key, 3)
    z1 = jnp.sqrt(p0_var) * jax.random.normal(k0, (num_sequences, dim), jnp.float32)

    def step(z, eps):
        z_next = mean_fn(z) + jnp.sqrt(q_var) * eps
        return z_next, z_next

    eps = jax.random.normal(kz, (num_steps - 1, num_sequences, dim), jnp.float32)
    _, zs = jax.lax.scan(step, z1, eps)
    z = jnp.concatenate([z1[None], zs]).transpose(1, 0, 2)
    x = _emission_mean(z) + jnp.sqrt(r_var) * jax.random.normal(kx, z.shape, jnp.float32)
    return x, z


def sample_linear_gaussian(
    params: LinearGaussianSSM, num_sequences: int, num_steps: int, key: PRNGKeyArray
) -> tuple[Float[Array, "batch time obs"], Float[Array, "batch time latent"]]:
    """Draw ``num_sequences`` sequences of length ``num_steps``; returns ``(x, z)``."""
    for name, v in [("num_sequences", num_sequences), ("num_steps", num_steps)]:
        check_positive(name, v, integer=True)
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
