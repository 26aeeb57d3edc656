"""Constrained HMC on a 3-d ``y = f(z) + σ n`` toy against exact moments (STYLE §9).

Inputs ``u = [z₁, z₂, n] ~ N(0, I₃)``, one output ``y = f(z) + σ n`` with
``f(z) = z₁ + z₂²`` and σ = 0.3, conditioned on y = 1: the posterior lives on a
2-d surface in R³, the form of the pose and in-painting generators (k = 2 latents, N = 1
output). Its moments are exact to ~1e-10 by quadrature: the z-marginal is
``N(z; 0, I) N(y; f(z), σ²)`` and n = (y − f(z)) / σ on the manifold. The gradient of f
varies over the posterior, so ½ log det(J Jᵀ) = ½ log(1 + 4 z₂² + σ²) matters.

First and second moments of the three inputs are z-tested (threshold 4.5) with the
multi-chain ESS (≥ 1000 required) and an acceptance band.
Calibration (`pytest -m calibration tests/inference/test_additive_noise_toy.py`, seeds
0-49): worst z 3.98, ESS 1366-17670, acceptance 0.930-0.945 (floors below: ESS ≥ 1000,
acceptance in (0.85, 0.98)). Power (`-m slow`): with ½ log det(J Jᵀ) dropped from the
potential (the planted bug) the worst z was 24.9.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.conditioning import ConditionedGenerator
from tests.stats import moment_stats, z_scores

Y, SIGMA, K = 1.0, 0.3, 2
Z_MAX = 4.5


def f(z):
    return (z[0] + z[1] ** 2)[None]


@functools.cache
def exact_moments() -> np.ndarray:
    """E u and E u² of [z₁, z₂, n] by quadrature on a 801² grid over [−8, 8]²."""
    grid = np.linspace(-8.0, 8.0, 801)
    z1, z2 = np.meshgrid(grid, grid, indexing="ij")
    fz = z1 + z2**2
    logw = -0.5 * (z1**2 + z2**2) - 0.5 * ((Y - fz) / SIGMA) ** 2
    w = np.exp(logw - logw.max())
    w /= w.sum()
    u = np.stack([z1, z2, (Y - fz) / SIGMA], -1)
    return np.einsum("ij,ijk->k", w, moment_stats(u))


@functools.cache
def _posterior(drop_log_det: bool = False):
    post = dgm.condition_additive_noise(f, np.array([Y]), K, SIGMA)
    if not drop_log_det:
        return post
    s = post.system  # the planted bug: φ(u) = ½ uᵀu, no ½ log det(J Jᵀ)
    return ConditionedGenerator(
        s.generator, post.y_obs, s.input_dim, None, s._jac, s._gram_factor_fn,
        post.init_fn, half_log_det_fn=lambda u: jnp.zeros((), u.dtype),
    )  # fmt: skip


def _run(key, drop_log_det: bool = False):
    idata = _posterior(drop_log_det).sample(
        key, num_chains=8, num_samples=600, num_warmup=0, step_size=0.6,
        num_steps=(3, 5), chain_map="vmap", chunk_size=600, progress_bar=False,
    )  # fmt: skip
    u = idata.posterior["u"].values
    z, ess = z_scores(moment_stats(u), exact_moments())
    accept = float(idata.sample_stats["is_accepted"].values.mean())
    return z, ess, accept, float(idata.sample_stats["constraint_residual"].values.max())


def test_exact_moments_are_a_distribution():
    """The quadrature itself: E u² > (E u)², E z₂ = 0 (f is even in z₂), and 0 < E z₁ < y."""
    m = exact_moments()
    assert np.all(m[3:] > m[:3] ** 2)
    assert abs(m[1]) < 1e-12 and 0 < m[0] < Y


def test_chmc_moments_match_quadrature():
    z, ess, accept, residual = _run(jax.random.key(20))
    assert np.all(z < Z_MAX), z
    assert np.all(ess >= 1000), ess
    assert 0.85 < accept < 0.98, accept
    assert residual < 1e-8


@pytest.mark.slow
def test_planted_log_det_bug_is_caught():
    """Dropping ½ log det(J Jᵀ) from the potential fails the same test."""
    z, *_ = _run(jax.random.key(20), drop_log_det=True)
    print(f"planted log-det bug: worst z {z.max():.2f}")
    assert np.max(z) > Z_MAX, z


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_calibration(seed):
    z, ess, accept, _ = _run(jax.random.key(1000 + seed))
    print(f"seed {seed}: worst z {z.max():.2f}, ESS {ess.min():.0f}-{ess.max():.0f}, {accept=:.3f}")
    assert np.all(z < Z_MAX)
