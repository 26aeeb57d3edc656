"""Dynamic constrained HMC: exact-moment z-tests, failure handling, warm-up, planted bugs.

Targets (from test_constrained_hmc.py): the linear-Gaussian generator, whose conditional
of θ is Gaussian in closed form (a step size of 0.9 with N_g = 1 makes energy errors
large enough that ignoring them shows), and the unit sphere in R³ (E u = 0, E u² = 1/3),
on which the energy is constant and only the geometry is tested.

The linear chains start from exact posterior draws (no burn-in). Calibration: ``pytest -m
calibration tests/inference/test_dynamic_chmc.py`` runs the linear moment test on 50 seeds
(1000-1049); with the correct kernel the worst z was 2.68, the lowest ESS 5944, the mean
acceptance statistic 0.908-0.913 and the mean tree depth 1.80-1.82.
Power (test_planted_bugs_are_caught, slow; seed 13): uniform weights over the trajectory
(no multinomial re-weighting) give worst z 6.25; the U-turn criterion with its sign
flipped stops every trajectory after one step: ESS 2137 < 4000 and mean depth 1.0 < 1.5
(z stays 1.9: the sampler is still correct, only slow).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.inference import dynamic, dynamic_chmc, manifold
from dgm.inference.adaptation import warmup
from dgm.inference.chmc_driver import resolve_trajectory
from tests.inference.test_constrained_hmc import (
    Y_LIN,
    linear,
    linear_exact_starts,
    linear_posterior,
    sphere,
)
from tests.stats import moment_stats, z_scores

Z_MAX = 4.5
ESS_FLOOR = 1000.0
LINEAR_ESS_FLOOR = 4000.0  # calibrated minimum 5944
DEPTH_FLOOR = 1.5  # mean tree depth: a kernel that never doubles past 1 step mixes slowly
LINEAR_STEP = 0.9


def run(generator, y, dim, key, step_size, chains=8, draws=1000, init=None, num_warmup=50):
    """Dynamic CHMC chains (dgm's runner cache compiles once per generator; the ``plant``
    fixture clears it for a planted bug)."""
    return dgm.condition(generator, y, dim).sample(
        key,
        num_chains=chains,
        num_samples=draws,
        num_warmup=num_warmup,
        step_size=step_size,
        num_geodesic_steps=1,
        trajectory="dynamic",
        init=init,
        progress_bar=False,
    )


def run_linear(seed):
    key_init, key = jax.random.split(jax.random.key(seed))
    init = linear_exact_starts(key_init)
    return run(linear, Y_LIN, 5, key, LINEAR_STEP, init=init, num_warmup=0)


def linear_z(idata):
    theta = idata.posterior["u"].values[..., :2]
    mean, cov = linear_posterior()
    stats = np.concatenate([theta, theta**2, theta[..., :1] * theta[..., 1:]], -1)
    return z_scores(stats, np.r_[mean, np.diag(cov) + mean**2, cov[0, 1] + mean[0] * mean[1]])


@pytest.fixture(scope="module")
def linear_run():
    return run_linear(13)


def test_linear_gaussian_moments(linear_run):
    z, n_eff = linear_z(linear_run)
    assert np.all(n_eff >= LINEAR_ESS_FLOOR), n_eff
    assert np.all(z < Z_MAX), z


def test_diagnostic_floors(linear_run):
    """Bands around the calibration (module docstring); no failures on a flat manifold."""
    stats = linear_run.sample_stats
    accept = float(stats["acceptance_rate"].values.mean())
    assert 0.88 < accept < 0.94, accept
    depth = stats["tree_depth"].values
    assert depth.min() >= 1 and depth.max() <= 10
    assert depth.mean() > DEPTH_FLOOR, depth.mean()
    assert float(stats["constraint_residual"].values.max()) < 1e-8
    assert int(stats["diverging"].values.sum()) == 0
    assert int(stats["projection_failed"].values.sum() + stats["irreversible"].values.sum()) == 0
    assert linear_run.posterior.attrs["max_depth"] == 10


@pytest.mark.slow
def test_failed_subtrees_are_discarded_and_counted():
    """At an absurd step on the sphere, failures are flagged by kind; a trajectory whose
    first step failed keeps the chain where it was, with acceptance statistic 0 (about
    10 s, compilation)."""
    with jax.enable_x64(True):
        system = manifold.ManifoldSystem(sphere, 3, 1)
        kernel = dynamic_chmc.dynamic_constrained_hmc(
            system, jnp.ones(1), step_size=2.5, num_geodesic_steps=1
        )
        state = kernel.init(jnp.array([0.0, 0.6, 0.8]))
        step = jax.jit(lambda key: kernel.step(key, state, kernel.params))
        outs = [step(k) for k in jax.random.split(jax.random.key(3), 64)]
        new, info = jax.tree.map(lambda *xs: np.stack(xs), *outs)
        failed = np.asarray(info.projection_failed | info.is_irreversible)
        assert failed.sum() >= 10, failed.sum()
        assert not np.any(np.asarray(info.projection_failed & info.is_irreversible))
        first = failed & (np.asarray(info.num_steps) == 1)  # the very first step failed
        assert first.any()
        np.testing.assert_array_equal(
            np.asarray(new.position)[first], [[0.0, 0.6, 0.8]] * first.sum()
        )
        assert np.all(np.asarray(info.accept_prob)[first] == 0.0)
        assert np.all(np.abs(np.linalg.norm(np.asarray(new.position), axis=1) - 1) < 1e-8)


def test_bad_input():
    posterior = dgm.condition(sphere, [1.0], 3)
    with pytest.raises(ValueError, match="`trajectory` must be one of"):
        posterior.sample(jax.random.key(0), trajectory="nuts")
    with pytest.raises(ValueError, match="`max_depth` must be an int >= 1; got 0"):
        posterior.sample(jax.random.key(0), trajectory="dynamic", max_depth=0)
    with pytest.raises(ValueError, match="`num_steps` sets fixed-length trajectories; got"):
        posterior.sample(jax.random.key(0), trajectory="dynamic", num_steps=(4, 8))
    with pytest.raises(ValueError, match="`max_depth` must be an int >= 1"):
        dynamic_chmc.dynamic_constrained_hmc(
            manifold.ManifoldSystem(sphere, 3, 1), [1.0], step_size=0.5, max_depth=-1
        )


@pytest.mark.slow
def test_sphere_moments():
    """About 15 s."""
    idata = run(sphere, [1.0], 3, jax.random.key(11), 0.8)
    u, energy = idata.posterior["u"].values, idata.sample_stats["energy"].values
    # and the chosen leaf's H, ½ + ½‖p‖² with p ~ N(0, I₂) in the tangent plane: E H = 1.5
    stats = np.concatenate([moment_stats(u), energy[..., None]], -1)
    z, n_eff = z_scores(stats, np.r_[np.zeros(3), np.full(3, 1 / 3), 1.5])
    assert np.all(n_eff >= ESS_FLOOR), n_eff
    assert np.all(z < Z_MAX), z


@pytest.mark.slow
def test_warmup_reaches_target_acceptance():
    """Step-size-only warm-up (metric "none", the kernel's own step-size search) drives the
    acceptance statistic to 0.8 ± 0.05 on the linear target (about 20 s)."""
    with jax.enable_x64(True):
        system = manifold.ManifoldSystem(linear, 5, 3)
        kernel = dynamic_chmc.dynamic_constrained_hmc(
            system, jnp.asarray(Y_LIN), step_size=0.1, num_geodesic_steps=1
        )
        u0 = dgm.condition(linear, Y_LIN, 5).initial_points(jax.random.key(0), 4)
        states = jax.vmap(kernel.init)(u0)

        def one(key, state):
            return warmup(key, kernel, state, 400, metric="none", target_accept=0.8)

        out = jax.jit(jax.vmap(one))(jax.random.split(jax.random.key(1), 4), states)
        during = float(out.infos.accept_prob[:, -200:].mean())
        assert abs(during - 0.8) < 0.05, during
        assert np.all(np.asarray(out.params.step_size) > 0)


@pytest.mark.slow
def test_planted_bugs_are_caught(plant):
    """No multinomial re-weighting, and a flipped U-turn sign, each fail (about 20 s): worst z
    6.25 with uniform leaf weights; min ESS 2,137 (floor 4,000) at mean depth 1.0 with the
    U-turn flipped (seed 13)."""
    with plant() as m:
        m.setattr(dynamic, "leaf_log_weight", lambda energy_error: jnp.zeros_like(energy_error))
        z, n_eff = linear_z(run_linear(13))
        print("uniform weights: worst z", z.max(), "min ESS", n_eff.min())
        assert np.max(z) > Z_MAX, z
    with plant() as m:
        m.setattr(
            dynamic,
            "no_turn",
            lambda a, b, rho: (jnp.sum(a * rho, -1) < 0) & (jnp.sum(b * rho, -1) < 0),
        )
        idata = run_linear(13)
        z, n_eff = linear_z(idata)
        depth = float(idata.sample_stats["tree_depth"].values.mean())
        print("flipped U-turn: worst z", z.max(), "min ESS", n_eff.min(), "mean depth", depth)
        assert np.min(n_eff) < LINEAR_ESS_FLOOR and depth < DEPTH_FLOOR, (n_eff, depth)


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_calibration_moments(seed):
    idata = run_linear(1000 + seed)
    z, n_eff = linear_z(idata)
    accept = float(idata.sample_stats["acceptance_rate"].values.mean())
    depth = float(idata.sample_stats["tree_depth"].values.mean())
    print(
        f"CALIB {seed} max_z={z.max():.2f} min_ess={n_eff.min():.0f} acc={accept:.3f} "
        f"depth={depth:.3f}"
    )
    assert np.all(z < Z_MAX) and np.all(n_eff >= LINEAR_ESS_FLOOR)


def test_default_trajectory_is_dynamic_unless_num_steps_is_given():
    assert resolve_trajectory(None, None) == ("dynamic", (4, 8))
    assert resolve_trajectory(None, 5) == ("fixed", 5)
    assert resolve_trajectory("fixed", None) == ("fixed", (4, 8))
    assert resolve_trajectory("dynamic", None) == ("dynamic", (4, 8))


def test_a_failed_projection_is_not_also_counted_as_irreversible():
    """A step whose projection failed is flagged by that kind only (its reverse check is
    meaningless); an irreversible step that projected is flagged as irreversible."""
    from dgm.inference.constrained_hmc import TrajectoryState

    fns = dynamic_chmc.geodesic_leaves(
        manifold.ManifoldSystem(sphere, 3, 1), jnp.ones(1), 1, 1e-8, 100, True
    )
    t, f = jnp.asarray(True), jnp.asarray(False)
    leaf = TrajectoryState(*([None] * 6), t, t)
    np.testing.assert_array_equal(fns.failures(leaf), [True, False])
    np.testing.assert_array_equal(fns.failures(leaf._replace(projection_failed=f)), [False, True])
    np.testing.assert_array_equal(fns.failures(leaf._replace(is_irreversible=f)), [True, False])
