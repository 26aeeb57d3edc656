"""Gaussian filtering and smoothing in state-space models.

Linear-Gaussian: z₁ ~ N(m₀, P₀), z_t = A z_{t−1} + b + N(0, Q), x_t = C z_t + d + N(0, R).
The Kalman filter gives the exact log-likelihood, against which the DMM's ELBO and IS
estimate are checked; the RTS smoother gives the exact posterior marginals.

Nonlinear with additive Gaussian noise: z_t = f(z_{t−1}) + N(0, Q), x_t = h(z_t) + N(0, R).
The unscented Kalman filter and the unscented RTS smoother (Särkkä 2008) replace each
Gaussian moment integral by a sigma-point rule; their log-likelihood is an approximation,
neither exact nor a bound. For linear f and h they reduce to the exact filter and smoother.
"""

from collections.abc import Callable
from typing import NamedTuple

import equinox as eqx
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
    return rts_backward(ms, Ps, m_preds, P_preds, jnp.einsum("tij,kj->tik", Ps, params.A))


def rts_backward(ms, Ps, m_preds, P_preds, crosses):
    """Backward RTS pass from a Gaussian filter's outputs (smoothed means and covariances).

    ``crosses[t]`` = cov(z_t, z_{t+1}) given x_{1:t}; the gain is G_t = crosses[t] P⁻_{t+1}⁻¹.
    With :func:`unscented_filter`'s sigma-point cross-covariances this is the unscented RTS
    smoother (Särkkä 2008), which needs no further evaluations of f.
    """

    def step(carry, inp):
        m_next, P_next = carry
        m, P, m_pred_next, P_pred_next, cross = inp
        G = jnp.linalg.solve(P_pred_next, cross.T).T
        m_s = m + G @ (m_next - m_pred_next)
        P_s = P + G @ (P_next - P_pred_next) @ G.T
        return (m_s, P_s), (m_s, P_s)

    inputs = (ms[:-1], Ps[:-1], m_preds[1:], P_preds[1:], crosses[:-1])
    _, (m_s, P_s) = jax.lax.scan(step, (ms[-1], Ps[-1]), inputs, reverse=True)
    return jnp.concatenate([m_s, ms[-1:]]), jnp.concatenate([P_s, Ps[-1:]])


class NonlinearGaussianSSM(eqx.Module):
    """z₁ ~ N(m₀, P₀), z_t = f(z_{t−1}) + N(0, Q), x_t = h(z_t) + N(0, R) (covariances).

    ``f`` maps one latent vector to one latent vector and ``h`` one latent vector to one
    observation. Both are static fields, so a model can be passed through ``jax.jit`` as an
    argument (a new function object means a new trace).
    """

    f: Callable[[Array], Array] = eqx.field(static=True)
    h: Callable[[Array], Array] = eqx.field(static=True)
    Q: Float[Array, "latent latent"]
    R: Float[Array, "obs obs"]
    m0: Float[Array, " latent"]
    P0: Float[Array, "latent latent"]


def _sigma_weights(n: int, dtype, alpha: float, beta: float, kappa: float | None):
    """Scaled sigma-point spread c = n + λ and the mean and covariance weights."""
    kappa = 3.0 - n if kappa is None else kappa
    c = alpha**2 * (n + kappa)
    if not c > 0:
        raise ValueError(
            f"`alpha`² (n + `kappa`) must be positive; got alpha={alpha}, kappa={kappa}, n={n}"
        )
    w_mean = jnp.full(2 * n + 1, 0.5 / c, dtype).at[0].set(1.0 - n / c)
    return c, w_mean, w_mean.at[0].add(1.0 - alpha**2 + beta)


def _unscented_moments(fn, m, P, sigma):
    """Sigma-point E[fn(z)], cov(fn(z)) and cov(z, fn(z)) for z ~ N(m, P)."""
    c, w_mean, w_cov = sigma
    offsets = jnp.sqrt(c) * jnp.linalg.cholesky(P).T
    points = jnp.concatenate([m[None], m[None] + offsets, m[None] - offsets])
    images = jax.vmap(fn)(points)
    mean = w_mean @ images
    weighted = w_cov[:, None] * (images - mean[None])
    return mean, weighted.T @ (images - mean[None]), (points - m[None]).T @ weighted


def unscented_filter(
    ssm: NonlinearGaussianSSM,
    x: Float[Array, "time obs"],
    mask: Float[Array, " time"],
    *,
    alpha: float = 1.0,
    beta: float = 0.0,
    kappa: float | None = None,
):
    """Unscented Kalman filter of one sequence, with its approximate masked log-likelihood.

    Sigma points m and m ± √(n + λ) times the columns of chol(P), λ = α²(n + κ) − n; weights
    λ/(n + λ) at the centre (plus 1 − α² + β for covariances) and 1/(2(n + λ)) elsewhere.
    The defaults α = 1, β = 0, κ = 3 − n (``kappa=None``; Julier's choice) put the points
    √3 standard deviations out along each axis with weights 1/6 and (3 − n)/3 at the centre:
    for n = 1 the three-point Gauss–Hermite rule, exact for polynomials up to degree 5. No
    weight is negative for n ≤ 3, and no tiny α makes weights cancel in float32; for n > 3
    pass e.g. ``kappa=0.0, beta=2.0``. The log-likelihood is Σ_t log N(x_t; ŷ_t, S_t) over
    frames with mask 1, ŷ_t and S_t the sigma-point predictive mean and covariance; mask 0
    means no update.

    Returns:
        ``(log_likelihood, means, covariances, predicted means, predicted covariances,
        cross-covariances)``; ``cross-covariances[t]`` = cov(z_t, z_{t+1}) given x_{1:t}.
    """
    sigma = _sigma_weights(ssm.m0.shape[-1], ssm.m0.dtype, alpha, beta, kappa)

    def step(carry, inp):
        m_pred, P_pred = carry
        x_t, m_t = inp
        y_mean, y_cov, cross = _unscented_moments(ssm.h, m_pred, P_pred, sigma)
        S = y_cov + ssm.R
        gain = jnp.linalg.solve(S, cross.T).T
        keep = m_t > 0
        m = jnp.where(keep, m_pred + gain @ (x_t - y_mean), m_pred)
        P = jnp.where(keep, P_pred - gain @ S @ gain.T, P_pred)
        ll = jnp.where(keep, _mvn_logpdf(x_t, y_mean, S), 0.0)
        m_next, P_next, cross_next = _unscented_moments(ssm.f, m, P, sigma)
        return (m_next, P_next + ssm.Q), (m, P, m_pred, P_pred, cross_next, ll)

    _, (ms, Ps, m_preds, P_preds, crosses, lls) = jax.lax.scan(step, (ssm.m0, ssm.P0), (x, mask))
    return jnp.sum(lls), ms, Ps, m_preds, P_preds, crosses


def unscented_smoother(
    ssm: NonlinearGaussianSSM,
    x: Float[Array, "time obs"],
    mask: Float[Array, " time"],
    **sigma_params: float | None,
):
    """Unscented RTS smoothed means and covariances of one sequence (Särkkä 2008).

    ``sigma_params`` (``alpha``, ``beta``, ``kappa``) go to :func:`unscented_filter`.
    """
    return rts_backward(*unscented_filter(ssm, x, mask, **sigma_params)[1:])
