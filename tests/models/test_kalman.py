"""Kalman filter and RTS smoother against dense Gaussian conditioning; the unscented filter
and smoother against them on linear models, exact quadratic moments, and synthetic10/11."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.data import synthetic
from dgm.models import kalman

# A 3-D latent, 2-D observation model with non-diagonal matrices (float64).
_A = np.array([[0.9, 0.2, 0.0], [-0.1, 0.8, 0.3], [0.05, 0.0, 0.7]])
_B = np.array([0.1, -0.2, 0.05])
_C = np.array([[1.0, 0.5, -0.3], [0.2, -0.7, 1.1]])
_D = np.array([0.3, -0.1])


def _spd(diag, off):
    L = np.tril(np.full((len(diag), len(diag)), off)) + np.diag(diag)
    return L @ L.T


pytestmark = pytest.mark.usefixtures("x64")  # exact filtering checks, in float64

with jax.enable_x64(True):  # the model's arrays keep float64 outside the context too
    LINEAR = kalman.LinearGaussianSSM(
        A=jnp.asarray(_A),
        b=jnp.asarray(_B),
        Q=jnp.asarray(_spd([0.6, 0.5, 0.4], 0.2)),
        C=jnp.asarray(_C),
        d=jnp.asarray(_D),
        R=jnp.asarray(_spd([0.7, 0.5], 0.3)),
        m0=jnp.asarray([0.5, -1.0, 0.2]),
        P0=jnp.asarray(_spd([1.0, 0.8, 0.6], -0.3)),
    )
    # Observed frames; the last two are padding and frame 2 is missing.
    MASK = jnp.asarray([1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0])


def _as_unscented(p: kalman.LinearGaussianSSM) -> kalman.NonlinearGaussianSSM:
    return kalman.NonlinearGaussianSSM(
        f=lambda z: p.A @ z + p.b, h=lambda z: p.C @ z + p.d, Q=p.Q, R=p.R, m0=p.m0, P0=p.P0
    )


@pytest.fixture(scope="module")
def x():
    with jax.enable_x64(True):
        return synthetic.sample_linear_gaussian(LINEAR, 1, len(MASK), jax.random.key(0))[0][0]


def _dense_posterior(p, x, observed):
    """Mean, covariance of all z given x at ``observed`` frames, and log p(those x)."""
    p = kalman.LinearGaussianSSM(*(np.asarray(a) for a in p))
    T, n = len(x), p.A.shape[0]
    A, C = np.asarray(p.A), np.asarray(p.C)
    # z = mu + M e with e_1 ~ N(0, P0), e_t ~ N(0, Q): block (t, s) of M is A^(t-s).
    M, mu = np.zeros((T * n, T * n)), np.zeros(T * n)
    for t in range(T):
        mu[t * n : (t + 1) * n] = p.m0 if t == 0 else A @ mu[(t - 1) * n : t * n] + p.b
        for s in range(t + 1):
            M[t * n : (t + 1) * n, s * n : (s + 1) * n] = np.linalg.matrix_power(A, t - s)
    noise = np.kron(np.eye(T), p.Q)
    noise[:n, :n] = p.P0
    cov_z = M @ noise @ M.T
    rows = np.concatenate([np.arange(t * C.shape[0], (t + 1) * C.shape[0]) for t in observed])
    C_big = np.kron(np.eye(T), C)[rows]
    cov_x = C_big @ cov_z @ C_big.T + np.kron(np.eye(len(observed)), p.R)
    resid = np.asarray(x)[observed].reshape(-1) - (C_big @ mu + np.tile(p.d, len(observed)))
    gain = np.linalg.solve(cov_x, C_big @ cov_z).T
    log_lik = -0.5 * (
        resid @ np.linalg.solve(cov_x, resid) + np.linalg.slogdet(2 * np.pi * cov_x)[1]
    )
    return mu + gain @ resid, cov_z - gain @ cov_x @ gain.T, log_lik


def _block(mean, cov, t, n):
    return mean[t * n : (t + 1) * n], cov[t * n : (t + 1) * n, t * n : (t + 1) * n]


def test_kalman_filter_and_smoother_match_dense_conditioning(x):
    n, mask = 3, np.asarray(MASK)
    log_lik, ms, Ps, *_ = kalman.kalman_filter(LINEAR, x, MASK)
    m_s, P_s = kalman.rts_smoother(LINEAR, x, MASK)
    observed = np.flatnonzero(mask)
    mean, cov, exact = _dense_posterior(LINEAR, x, observed)
    np.testing.assert_allclose(log_lik, exact, rtol=1e-10)
    for t in range(len(mask)):
        np.testing.assert_allclose(m_s[t], _block(mean, cov, t, n)[0], atol=1e-10)
        np.testing.assert_allclose(P_s[t], _block(mean, cov, t, n)[1], atol=1e-10)
        filt_mean, filt_cov, _ = _dense_posterior(LINEAR, x, observed[observed <= t])
        np.testing.assert_allclose(ms[t], _block(filt_mean, filt_cov, t, n)[0], atol=1e-10)
        np.testing.assert_allclose(Ps[t], _block(filt_mean, filt_cov, t, n)[1], atol=1e-10)


@pytest.mark.parametrize(
    "sigma",
    [
        {},
        pytest.param({"kappa": 0.0, "beta": 2.0}, marks=pytest.mark.slow),
        pytest.param({"alpha": 0.5, "kappa": 1.0, "beta": 2.0}, marks=pytest.mark.slow),
    ],
)
def test_unscented_equals_kalman_on_linear_model(x, sigma):
    """The unscented transform is exact for affine maps, whatever the sigma-point weights."""
    assert x.dtype == jnp.float64
    ukf = jax.jit(lambda ssm, a, m: kalman.unscented_filter(ssm, a, m, **sigma))
    log_lik, ms, Ps, m_preds, P_preds, _ = ukf(_as_unscented(LINEAR), x, MASK)
    ref_log_lik, *ref = kalman.kalman_filter(LINEAR, x, MASK)
    np.testing.assert_allclose(log_lik, ref_log_lik, rtol=1e-12)
    for got, want in zip((ms, Ps, m_preds, P_preds), ref, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    smoothed = kalman.unscented_smoother(_as_unscented(LINEAR), x, MASK, **sigma)
    for got, want in zip(smoothed, kalman.rts_smoother(LINEAR, x, MASK), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "sigma", [{}, {"kappa": 0.0, "beta": 2.0}, {"alpha": 0.5, "kappa": 0.0, "beta": 2.0}]
)
def test_unscented_quadratic_emission_moments_are_exact(sigma):
    """x = z² + N(0, r), z ~ N(m, p): mean m² + p, variance 4m²p + 2p² + r, cov(z, x) = 2mp
    are exact when β = 2 − α²κ (all three parameter sets here)."""
    m, p, r, obs = 0.7, 1.3, 0.4, 2.5
    ssm = kalman.NonlinearGaussianSSM(
        f=lambda z: z,
        h=lambda z: z**2,
        Q=jnp.eye(1),
        R=jnp.full((1, 1), r),
        m0=jnp.full((1,), m),
        P0=jnp.full((1, 1), p),
    )
    log_lik, ms, Ps, *_ = kalman.unscented_filter(ssm, jnp.full((1, 1), obs), jnp.ones(1), **sigma)
    mean, var, cross = m**2 + p, 4 * m**2 * p + 2 * p**2 + r, 2 * m * p
    want = -0.5 * ((obs - mean) ** 2 / var + np.log(2 * np.pi * var))
    np.testing.assert_allclose(log_lik, want, rtol=1e-12)
    np.testing.assert_allclose(ms[0, 0], m + cross / var * (obs - mean), rtol=1e-12)
    np.testing.assert_allclose(Ps[0, 0, 0], p - cross**2 / var, rtol=1e-12)


@pytest.mark.parametrize(
    "name,smooth_vs_filter,smooth_vs_naive",
    [("synthetic10", 0.92, 0.65), ("synthetic11", 1.0, 0.9)],
)
def test_unscented_smoother_tracks_true_z(name, smooth_vs_filter, smooth_vs_naive):
    """In float32 at the true parameters, smoothing beats filtering, which beats x / 0.5.

    Over seeds 0-9 (100 sequences of T = 25) smoother/filter RMSE was at most 0.86 on
    synthetic10 and 0.992 on synthetic11, smoother/naive at most 0.58 and 0.85.
    """
    ssm = synthetic.nonlinear_ssm(name)
    x, z = synthetic.sample_nonlinear(name, 100, 25, jax.random.key(0))

    def one(a, m):
        log_lik, *filtered = kalman.unscented_filter(ssm, a, m)
        return log_lik, filtered[0], kalman.rts_backward(*filtered)[0]

    log_lik, filt, smooth = jax.jit(jax.vmap(one))(x, jnp.ones(x.shape[:2], jnp.float32))
    assert log_lik.dtype == smooth.dtype == jnp.float32
    assert np.all(np.isfinite(log_lik))

    def rmse(a):
        return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(z)) ** 2)))

    assert rmse(smooth) < smooth_vs_filter * rmse(filt)
    assert rmse(smooth) < smooth_vs_naive * rmse(2.0 * x)


def test_bad_sigma_point_parameters_are_named():
    ssm = _as_unscented(LINEAR)
    with pytest.raises(ValueError, match=r"`alpha`² \(n \+ `kappa`\) must be positive"):
        kalman.unscented_filter(ssm, jnp.zeros((3, 2)), jnp.ones(3), kappa=-3.0)
