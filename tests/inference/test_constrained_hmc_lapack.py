"""Constrained HMC through LAPACK's Gram Cholesky, against quadrature (STYLE §9).

No other moment test reaches LAPACK's Cholesky (a ``DenseCholesky`` of more than
``manifold.SMALL_GRAM`` = 4 rows; smaller ones are unrolled) with a Gram determinant that
varies over the posterior. Here
``y = f(θ) + σ n`` with inputs ``u = [θ, n] ~ N(0, I₇)``, N = 6 outputs
``f_i(θ) = sin(a_i θ) + b_i θ²`` (a from 0.5 to 2, b from −0.5 to 0.5), σ = 0.4 and
y one draw at θ = 0.8. J = [f'(θ) | σ I], so J Jᵀ = σ² I + f' f'ᵀ is 6×6: LAPACK's Cholesky
and ``cho_solve``; and ½ log det(J Jᵀ) = 6 log σ + ½ log(1 + |f'(θ)|²/σ²), whose θ-dependent
part runs from about 0.8 to 2.1 over the posterior. The θ-marginal is one-dimensional,
N(θ; 0, 1) Π N(y_i; f_i(θ), σ²) (skewed, sd 0.14), so E θ and E θ² are exact to ~1e-10 by
quadrature; n = (y − f(θ))/σ on the manifold, so θ's law is the whole posterior's.

φ and ∇φ through the 6×6 factor are checked against autodiff by every second-order route
(fast). The moment test (slow: 9.5 s of CPU on 2 busy cores, a third of it compilation)
runs the default route, a forward Jacobian with "remat" (``jacobian="rev"`` gave the same
draws to 1e-12). Chains start from exact draws (θ by the quadrature's inverse CDF, n
solved from y): 4 × 1500 draws at a fixed step 0.8, 2-4 steps, no warm-up. E θ and E θ²
are z-tested (threshold 4.5) with the ESS of each statistic's mean (``method="mean"``):
the rank-normalised bulk ESS overstated θ²'s (bulk 10200, mean 4060 on average), and over
50 seeds the bulk-based z of θ² had sd 1.66 and reached 4.18. Seed 30 (the test): z 1.22
and 1.76, ESS 7072 and 4382, acceptance 0.926, 1.6 % projection failures.

Calibration (``pytest -m calibration tests/inference/test_constrained_hmc_lapack.py``,
seeds 1000-1049): worst z 2.96 (θ²; θ: 2.87), root-mean-square z 1.03 and 1.06, ESS
2240-6224, acceptance 0.920-0.940, projection failures 1.2-2.0 % (floors below: ESS
≥ 1000, acceptance in (0.85, 0.98), failures < 5 %).
Power (``-m slow``, seed 30): ½ log det(J Jᵀ) dropped from φ and ∇φ, worst z 22.2 (the
term shifts E θ by 0.26 posterior sd); ``DenseCholesky.half_log_det`` doubled (φ wrong, ∇φ
right, so the Metropolis step targets the wrong law), worst z 14.5. By hand: LAPACK's
``cho_solve`` given the factor as upper triangular fails every proposal (the floors).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.inference import manifold
from tests.stats import z_scores

Z_MAX = 4.5
N, SIGMA, THETA = 6, 0.4, 0.8
A = np.linspace(0.5, 2.0, N)
B = 0.5 * np.linspace(-1.0, 1.0, N)
Y = np.sin(A * THETA) + B * THETA**2 + SIGMA * np.random.default_rng(3).normal(size=N)


def f(theta):
    return jnp.sin(jnp.asarray(A) * theta) + jnp.asarray(B) * theta**2


def generator(u):
    return f(u[0]) + SIGMA * u[1:]


@functools.cache
def quadrature() -> tuple[np.ndarray, np.ndarray]:
    """The θ-marginal's grid over [−6, 6] (200001 points) and its normalised weights."""
    grid = np.linspace(-6.0, 6.0, 200001)
    fg = np.sin(A * grid[:, None]) + B * grid[:, None] ** 2
    logw = -0.5 * grid**2 - 0.5 * np.sum((Y - fg) ** 2, 1) / SIGMA**2
    w = np.exp(logw - logw.max())
    return grid, w / w.sum()


def exact_moments() -> np.ndarray:
    grid, w = quadrature()
    return np.array([w @ grid, w @ grid**2])


def exact_starts(key, chains: int) -> np.ndarray:
    """Exact posterior draws on the manifold: θ by inverse CDF, n = (y − f(θ)) / σ."""
    grid, w = quadrature()
    theta = np.interp(np.asarray(jax.random.uniform(key, (chains,))), np.cumsum(w), grid)
    noise = (Y - np.sin(A * theta[:, None]) - B * theta[:, None] ** 2) / SIGMA
    return np.concatenate([theta[:, None], noise], axis=1)


def _run(key) -> dict:
    posterior = dgm.condition(generator, Y, N + 1)
    assert posterior.system.uses_lapack_cholesky  # the path under test
    key_init, key_run = jax.random.split(key)
    idata = posterior.sample(
        key_run, num_chains=4, num_samples=1500, num_warmup=0, step_size=0.8, adapt=False,
        num_steps=(2, 4), init=exact_starts(key_init, 4), chunk_size=1500, progress_bar=False,
    )  # fmt: skip
    theta = idata.posterior["u"].values[..., :1]
    z, ess = z_scores(np.concatenate([theta, theta**2], -1), exact_moments(), method="mean")
    stats = idata.sample_stats
    return {
        "z": z,
        "ess": ess,
        "accept": float(stats["is_accepted"].values.mean()),
        "failed": float(stats["projection_failed"].values.mean()),
        "residual": float(stats["constraint_residual"].values.max()),
    }


def test_exact_moments_are_a_distribution():
    """The quadrature itself: mass well inside the grid, E θ² > (E θ)², a skewed marginal
    near the θ that generated y."""
    grid, w = quadrature()
    assert w[np.abs(grid) > 4].sum() < 1e-12
    m1, m2 = exact_moments()
    assert m2 > m1**2 and 0.4 < m1 < 0.9


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    ("jacobian", "second_order"),
    [("fwd", "remat"), ("rev", "remat"), ("fwd", "vjp"), ("rev", "vjp"), ("fwd", "tangent")],
)
def test_potential_and_gradient_match_autodiff(jacobian, second_order):
    """φ and ∇φ through the 6×6 LAPACK factor, by every route to ∇ ½ log det(J Jᵀ), equal
    autodiff through ``slogdet``, on the manifold and off it (the "tangent" route computes
    only the tangential part, which is all the sampler uses). The z-test below runs the
    default route, forward/"remat"; "rev"/"remat" gave the same draws to 1e-12."""
    system = manifold.ManifoldSystem(generator, N + 1, N, jacobian, second_order=second_order)
    assert system.uses_lapack_cholesky

    def phi(v):
        j = jax.jacfwd(generator)(v)
        return 0.5 * v @ v + 0.5 * jnp.linalg.slogdet(j @ j.T)[1]

    on = jnp.asarray(exact_starts(jax.random.key(0), 1)[0])
    off = on + 0.3 * jax.random.normal(jax.random.key(1), on.shape, jnp.float64)

    @jax.jit
    def both(u):
        value, grad, jac, factor = system.potential_and_grad(u)
        want = jax.grad(phi)(u)
        if second_order == "tangent":
            grad, want = (manifold.project_tangent(g, jac, factor) for g in (grad, want))
        return value, phi(u), grad, want

    for u in (on, off):
        value, want_value, grad, want = both(u)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        np.testing.assert_allclose(grad, want, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_chmc_moments_match_quadrature():
    out = _run(jax.random.key(30))
    print(out)
    assert np.all(out["z"] < Z_MAX), out
    assert np.all(out["ess"] >= 1000), out
    assert 0.85 < out["accept"] < 0.98, out
    assert out["failed"] < 0.05, out
    assert out["residual"] < 1e-8, out


@pytest.mark.slow
def test_planted_log_det_bugs_are_caught(plant):
    """Each broken potential fails the same z-test (a recompilation each: 2 × ≈ 6 s)."""
    with plant() as m:  # no ½ log det(J Jᵀ) in φ or ∇φ
        m.setattr(manifold.ManifoldSystem, "potential", lambda self, u, factor: 0.5 * u @ u)
        m.setattr(manifold.ManifoldSystem, "potential_grad", lambda self, u, j, c: u)
        dropped = _run(jax.random.key(30))
    with plant() as m:  # log det(J Jᵀ) in φ, the right ∇φ
        m.setattr(manifold.DenseCholesky, "half_log_det", lambda self: 2 * _sum_log_diag(self))
        doubled = _run(jax.random.key(30))
    print(f"worst z: log-det dropped {dropped['z'].max():.2f}, doubled {doubled['z'].max():.2f}")
    assert np.max(dropped["z"]) > Z_MAX, dropped
    assert np.max(doubled["z"]) > Z_MAX, doubled


def _sum_log_diag(factor):
    return jnp.sum(jnp.log(jnp.diagonal(factor.lower)))


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_calibration(seed):
    out = _run(jax.random.key(1000 + seed))
    print(
        f"seed {seed}: z {np.round(out['z'], 2)}, ESS {out['ess'].min():.0f}, "
        f"accept {out['accept']:.3f}, failed {out['failed']:.3f}"
    )
    assert np.all(out["z"] < Z_MAX)
