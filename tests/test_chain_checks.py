"""Chains that disagree are reported (``dgm.diagnostics.chain_agreement``, ``chain_checks``).

Exact cases: independent N(0, I) chains (log density −½‖x‖²) agree; a chain whose log
density is shifted, or whose draws are shifted in one coordinate, is named.
Calibration (``pytest -m calibration``): 50 seeds of 4 i.i.d. chains of 200 draws gave a
largest R-hat of 1.010 and |lp z| of 2.47 (thresholds 1.1 and 8); 20 seeds of correct
4-chain constrained runs (200 warm-up, 300 draws, default starts) on the issue-16 MLP
generator gave R-hat ≤ 1.022 and |lp z| ≤ 2.18, none flagged (session 25, with the
sampler's ``lp``: ≤ 1.024 and ≤ 2.03). Power (the slow test): one
chain started in the mode 13 nats below the main one stays there (mean log density −7.3
against −0.8) and is named, R-hat 1.53.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm import diagnostics
from dgm.inference import chain_checks
from dgm.inference.chain_checks import MAX_CHECKED_DRAWS
from dgm.models.mlp_generator import MLPGenerator


def _iid(seed, shift=None, num_chains=4, num_draws=200):
    x = np.random.default_rng(seed).normal(size=(num_chains, num_draws, 3))
    if shift is not None:
        x[shift[0], :, shift[1]] += shift[2]
    return x, -0.5 * np.sum(x**2, axis=-1)


def test_agreeing_chains_are_not_flagged():
    out = diagnostics.chain_agreement(*_iid(0))
    assert out["checked"] and out["disagreeing_chains"] == []
    assert diagnostics.chain_warning(out) is None


def test_a_chain_with_lower_log_density_is_named():
    x, lp = _iid(1)
    lp[2] -= 3.0
    out = diagnostics.chain_agreement(x, lp)
    assert out["disagreeing_chains"] == [2]
    assert "chains [2] disagree" in diagnostics.chain_warning(out)


def test_a_chain_apart_in_one_coordinate_is_named_by_rhat():
    x, _ = _iid(2, shift=(3, 1, 1.0))
    lp = -0.5 * np.sum(_iid(2)[0] ** 2, axis=-1)  # the log density does not tell
    out = diagnostics.chain_agreement(x, lp)
    assert out["r_hat_max"] > diagnostics.RHAT_WARN
    assert out["disagreeing_chains"] == [3]


def test_a_chain_that_never_moved_is_named_without_a_warning_from_numpy():
    """A chain stuck at its start (every draw the same; its Monte Carlo error 0) away from
    the others is named; pytest turns NumPy's divide warnings into errors."""
    x, lp = _iid(4)
    x[1], lp[1] = x[1, 0], lp[1, 0] - 5.0
    out = diagnostics.chain_agreement(x, lp)
    assert out["disagreeing_chains"] == [1] and out["lp_z"][1] < -diagnostics.LP_Z_WARN
    x, lp = _iid(5)
    x[:], lp[:] = x[0, 0], lp[0, 0]  # every chain stuck at the same point: nothing to name
    assert diagnostics.chain_agreement(x, lp)["disagreeing_chains"] == []


def test_short_or_single_chain_runs_are_not_checked():
    x, lp = _iid(3, num_draws=diagnostics.MIN_DRAWS - 1)
    lp[0] -= 10.0
    assert not diagnostics.chain_agreement(x, lp)["checked"]
    x, lp = _iid(3, num_chains=1)
    assert diagnostics.chain_agreement(x, lp)["disagreeing_chains"] == []


def test_stuck_chains_are_those_whose_draws_never_change():
    x, _ = _iid(6)
    x[2] = x[2, 0]
    assert diagnostics.stuck_chains(x) == [2]
    x[2, 5, 1] += 1e-12  # one move, however small, is a move
    assert diagnostics.stuck_chains(x) == []
    assert diagnostics.stuck_chains(x[:, :1]) == []  # one draw cannot show it
    assert diagnostics.stuck_warning([], 200) is None


def _sphere(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


def test_a_chain_that_rejects_everything_warns_in_dgm_sample_and_condition():
    """A single chain (no R-hat to catch it) that rejects every proposal: ``dgm.sample``
    (HMC with a step far too large, no warm-up) and constrained HMC (a step too large for
    the projections) warn and count it; a well-tuned run of the same shapes does not."""
    kwargs = dict(num_warmup=0, num_samples=30, num_chains=2, kernel="hmc", num_steps=3)
    kwargs |= dict(key=jax.random.key(0), progress_bar=False, metric="none")
    logp = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    with pytest.warns(diagnostics.StuckChainWarning, match=r"chains \[0, 1\] rejected") as seen:
        idata = dgm.sample(logp, jnp.zeros(2), step_size=1e4, **kwargs)
    assert idata.posterior.attrs["chains_stuck"] == 2
    assert seen[0].filename == __file__  # the user's line, not dgm's (user audit 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", diagnostics.StuckChainWarning)
        assert (
            dgm.sample(logp, jnp.zeros(2), step_size=0.5, **kwargs).posterior.attrs["chains_stuck"]
            == 0
        )
    posterior = dgm.condition(_sphere, [1.0], 3)
    run = dict(num_chains=2, num_samples=20, num_warmup=0, num_steps=2, adapt=False)
    run |= dict(progress_bar=False)
    with pytest.warns(diagnostics.StuckChainWarning, match="rejected every proposal") as seen:
        idata = posterior.sample(jax.random.key(1), step_size=50.0, **run)
    assert idata.posterior.attrs["chains_stuck"] == 2
    assert seen[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error", diagnostics.StuckChainWarning)
        idata = posterior.sample(jax.random.key(1), step_size=0.5, **run)
    assert idata.posterior.attrs["chains_stuck"] == 0


@pytest.mark.calibration
def test_calibration_iid_chains():
    worst_r, worst_z = 0.0, 0.0
    for seed in range(50):
        out = diagnostics.chain_agreement(*_iid(100 + seed))
        worst_r = max(worst_r, out["r_hat_max"])
        worst_z = max(worst_z, np.max(np.abs(out["lp_z"])))
        assert out["disagreeing_chains"] == []
    print(f"iid: worst R-hat {worst_r:.3f}, worst |lp z| {worst_z:.2f}")


@pytest.fixture(scope="module")
def mlp_posterior():
    model = MLPGenerator.random(8)
    with jax.enable_x64(True):
        y = model.simulate(jax.random.key(8), 1)[1][0]
    return dgm.condition(model.generate, y, model.input_dim)


RUN = dict(num_chains=4, num_samples=300, num_warmup=200, progress_bar=False)


@pytest.mark.slow
def test_a_chain_stuck_in_a_lower_mode_warns(mlp_posterior):
    post = mlp_posterior
    with jax.enable_x64(True):
        u0 = jax.random.normal(jax.random.key(108), (16, 6), jnp.float64)
        u0 = post._newton(u0, jnp.repeat(post.y_obs[None], 16, 0), 1e-11, 100)
        system = post.system.at(post.y_obs)
        lp = jax.vmap(lambda u: -system.potential(u, post.system.cache(u)[1]))(u0)
    init = jnp.concatenate(
        [u0[int(np.argmin(lp))][None], post.initial_points(jax.random.key(1), 3)]
    )
    with pytest.warns(diagnostics.ChainDisagreementWarning, match=r"chains \[0\] disagree"):
        idata = post.sample(jax.random.key(2), init=init, **RUN)
    attrs = idata.posterior.attrs
    assert attrs["chains_disagree"] == 1 and attrs["disagreeing_chains"] == "0"
    assert attrs["lp_chain_mean"][0] < np.min(attrs["lp_chain_mean"][1:]) - 3.0


@pytest.mark.calibration
def test_calibration_correct_runs(mlp_posterior):
    worst_r, worst_z = 0.0, 0.0
    for seed in range(20):
        with warnings.catch_warnings():
            warnings.simplefilter("error", diagnostics.ChainDisagreementWarning)
            idata = mlp_posterior.sample(jax.random.key(300 + seed), **RUN)
        attrs = idata.posterior.attrs
        worst_r = max(worst_r, attrs["r_hat_max"])
        assert attrs["chains_checked"] == 1 and attrs["chains_disagree"] == 0
        assert 1 <= attrs["start_candidates_agreeing"] <= attrs["start_candidates"] == 16
        agreement = chain_checks.check(
            idata.posterior["u"].values, idata.sample_stats["lp"].values, warn=False
        )
        worst_z = max(worst_z, np.max(np.abs(agreement["lp_z"])))
    print(f"MLP runs: worst R-hat {worst_r:.3f}, worst |lp z| {worst_z:.2f}")


def test_lp_z_is_the_difference_in_standard_errors_of_a_difference():
    """``lp_z[k]`` is chain k's mean log density minus the median of the others', over the
    standard error of that difference, √(se_k² + se_others²). Chains that share one noise
    sequence (so one se) and differ by offsets give it in closed form; a gap of 0.5 nat is
    never named however large its z (the one-nat floor)."""
    import arviz as az

    base = np.random.default_rng(7).normal(size=4000)
    offsets = np.array([0.0, 0.0, 0.0, 0.5])
    lp = base[None, :] + offsets[:, None]
    x = np.random.default_rng(8).normal(size=(4, 4000, 2))
    out = diagnostics.chain_agreement(x, lp)
    se = base.std(ddof=1) / np.sqrt(float(az.ess(base[None])))
    expected = offsets / (np.sqrt(2.0) * se)  # the others' median is 0 for every chain
    np.testing.assert_allclose(out["lp_z"], expected, rtol=1e-9)
    assert out["lp_z"][3] > diagnostics.LP_Z_WARN  # z alone would name it
    assert out["disagreeing_chains"] == []


def test_long_runs_are_thinned_to_at_most_the_checked_draws():
    """``chain_checks.check`` thins to at most ``MAX_CHECKED_DRAWS`` draws per chain (the
    length its thresholds were calibrated at): ceil(n / max), not floor."""
    n = MAX_CHECKED_DRAWS + MAX_CHECKED_DRAWS // 2
    x, lp = _iid(9, num_draws=n)
    out = chain_checks.check(x, lp, warn=False)
    assert out["thin"] == 2 and len(range(0, n, out["thin"])) <= MAX_CHECKED_DRAWS


def test_chains_named_by_log_density_are_kept_when_r_hat_is_also_high():
    """Chain 2's log density is 2 nats low (z about 16) and chain 3 sits 5 sd apart in one
    coordinate (R-hat 1.53): the log density names chain 2, and the R-hat fallback
    (for runs where only R-hat is high) does not replace it."""
    x, lp = _iid(10)
    x[3, :, 1] += 5.0
    lp[2] -= 2.0
    out = diagnostics.chain_agreement(x, lp)
    assert out["r_hat_max"] > diagnostics.RHAT_WARN
    assert out["disagreeing_chains"] == [2]
