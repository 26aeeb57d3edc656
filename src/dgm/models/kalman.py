"""Exact inference in linear-Gaussian state-space models: Kalman filter and RTS smoother.

Model: z₁ ~ N(m₀, P₀), z_t = A z_{t−1} + b + N(0, Q), x_t = C z_t + d + N(0, R). The filter
gives the exact log-likelihood, against which the DMM's ELBO and IS estimate are checked.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


class LinearGaussianSSM(NamedTuple):
    """Parameters of a linear-Gaussian state-space model (covariances, not scales)."""

    A: Float[Array, "latent latent"]
    b: Float[Array, " latent"]
    Q: Float[Array, "latent latent"]
    C: Float[Array, "obs latent"]
    d: Float[Array, " obs"]
    R: Float[Array, "obs obs"]
    m0: Float[Array, " latent"]
    P0: Float[Array, "latent latent"]


def _mvn_logpdf(x, mean, cov):
    chol = jnp.linalg.cholesky(cov)
    r = jax.scipy.linalg.solve_triangular(chol, x - mean, lower=True)
    dim = x.shape[-1]
    return -0.5 * (r @ r) - jnp.sum(jnp.log(jnp.diag(chol))) - 0.5 * dim * jnp.log(2 * jnp.pi)


def kalman_filter(
    params: LinearGaussianSSM, x: Float[Array, "time obs"], mask: Float[Array, " time"]
):
    """Filtered means and covariances and the exact masked log-likelihood of one sequence.

    Frames with mask 0 contribute nothing (no update), so trailing padding is harmless.

    Returns:
        ``(log_likelihood, means (time, latent), covariances (time, latent, latent),
        predicted means, predicted covariances)``.
    """
    p = params
    first = jnp.arange(x.shape[0]) == 0

    def step(carry, inp):
        m, P = carry
        x_t, m_t, is_first = inp
        m_pred = jnp.where(is_first, p.m0, p.A @ m + p.b)
        P_pred = jnp.where(is_first, p.P0, p.A @ P @ p.A.T + p.Q)
        S = p.C @ P_pred @ p.C.T + p.R
        y_mean = p.C @ m_pred + p.d
        ll = _mvn_logpdf(x_t, y_mean, S)
        gain = jnp.linalg.solve(S, p.C @ P_pred).T
        m_new = m_pred + gain @ (x_t - y_mean)
        P_new = P_pred - gain @ S @ gain.T
        keep = m_t > 0
        m_new = jnp.where(keep, m_new, m_pred)
        P_new = jnp.where(keep, P_new, P_pred)
        return (m_new, P_new), (m_new, P_new, m_pred, P_pred, jnp.where(keep, ll, 0.0))

    init = (jnp.zeros_like(p.m0), jnp.zeros_like(p.P0))
    _, (ms, Ps, m_preds, P_preds, lls) = jax.lax.scan(step, init, (x, mask, first))
    return jnp.sum(lls), ms, Ps, m_preds, P_preds


def rts_smoother(
    params: LinearGaussianSSM, x: Float[Array, "time obs"], mask: Float[Array, " time"]
):
    """Rauch–Tung–Striebel smoothed means and covariances of one sequence."""
    return rts_from_filter(params, *kalman_filter(params, x, mask)[1:])


def rts_from_filter(params: LinearGaussianSSM, ms, Ps, m_preds, P_preds):
    """:func:`rts_smoother` from :func:`kalman_filter`'s outputs (without re-filtering)."""

    def step(carry, inp):
        m_next, P_next = carry
        m, P, m_pred_next, P_pred_next = inp
        G = jnp.linalg.solve(P_pred_next, params.A @ P).T
        m_s = m + G @ (m_next - m_pred_next)
        P_s = P + G @ (P_next - P_pred_next) @ G.T
        return (m_s, P_s), (m_s, P_s)

    inputs = (ms[:-1], Ps[:-1], m_preds[1:], P_preds[1:])
    _, (m_s, P_s) = jax.lax.scan(step, (ms[-1], Ps[-1]), inputs, reverse=True)
    return jnp.concatenate([m_s, ms[-1:]]), jnp.concatenate([P_s, Ps[-1:]])
