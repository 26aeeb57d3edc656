"""Step-size warm-up of ``dgm.condition(...).sample`` (``num_warmup`` with ``adapt=True``).

The mean acceptance of the kept draws must land within ±0.05 of ``target_accept`` on the
linear-Gaussian generator (no projection failures) and, in the slow set, on the sphere
(where large steps fail to project: failures count as acceptance 0). 4 chains, 400 draws
after NUM_WARMUP iterations of warm-up, starting from a step size about 5× too small.

Calibration (``pytest -m calibration``, seeds 200-219, targets 0.6 and 0.8, 4 chains,
1000 warm-up + 400 draws): worst deviation 0.040 (target 0.8), mean acceptance 0.612 and
0.812, against the ±0.05 band. Power: with the refinement phase dropped (the plain
dual-averaging average) the 0.6 case fails (acceptance 0.685); with failed projections
counted as acceptance 1 the sphere cases fail (the step size grows until every
transition fails: acceptance 0.000). The sphere tests take about 8 s each under load
after a 15 s compile (slow set).
"""

import warnings

import jax
import numpy as np
import pytest

import dgm
from dgm.inference.chmc_driver import chain_keys
from tests.inference.test_constrained_hmc import Y_LIN, linear, sphere

NUM_WARMUP = 1000
KWARGS = dict(num_chains=4, num_samples=400, num_warmup=NUM_WARMUP, step_size=0.25)
KWARGS |= dict(num_steps=(2, 4), progress_bar=False, chunk_size=200)


@pytest.fixture(scope="module")
def linear_posterior():
    return dgm.condition(linear, Y_LIN, 5)


def _check(idata, target):
    acc = float(idata.sample_stats["acceptance_rate"].mean())
    assert abs(acc - target) < 0.05, f"acceptance {acc:.3f} for target {target}"
    eps = idata.sample_stats["step_size"].values
    assert np.all(eps == eps[:, :1]), "the step size is frozen after warm-up"
    assert len(np.unique(eps[:, 0])) == eps.shape[0], "each chain adapts on its own"
    attrs = idata.posterior.attrs
    assert attrs["adapted"] == 1 and attrs["target_accept"] == target
    np.testing.assert_allclose(attrs["step_size"], eps[:, 0].mean())


@pytest.mark.parametrize("target", [0.6, 0.8])
def test_adaptation_reaches_its_target_acceptance(linear_posterior, target):
    idata = linear_posterior.sample(jax.random.key(21), target_accept=target, **KWARGS)
    _check(idata, target)


@pytest.fixture(scope="module")
def sphere_posterior():
    return dgm.condition(sphere, [1.0], 3)


@pytest.mark.slow
@pytest.mark.parametrize("target", [0.6, 0.8, 0.9])
def test_adaptation_on_the_sphere_counts_failures_as_rejections(sphere_posterior, target):
    idata = sphere_posterior.sample(jax.random.key(22), target_accept=target, **KWARGS)
    assert int(idata.sample_stats["projection_failed"].sum()) > 0  # failures did occur
    _check(idata, target)


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5, -0.2, "high", True, float("nan")])
def test_target_accept_outside_the_unit_interval_is_refused(linear_posterior, target):
    with pytest.raises(ValueError, match=r"`target_accept` must be a number in \(0, 1\); got"):
        linear_posterior.sample(jax.random.key(0), target_accept=target, progress_bar=False)


def test_bad_adapt_flag(linear_posterior):
    with pytest.raises(ValueError, match="`adapt` must be a bool; got 'yes'"):
        linear_posterior.sample(jax.random.key(0), adapt="yes", progress_bar=False)


def test_resumed_warmup_gives_the_uninterrupted_draws(linear_posterior, tmp_path, monkeypatch):
    from tests.test_conditioning import _interrupt_on_call

    args = dict(KWARGS, num_samples=200, num_warmup=NUM_WARMUP)
    full = linear_posterior.sample(jax.random.key(23), **args)
    ckpt = tmp_path / "chains.npz"
    with monkeypatch.context() as m, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # ArviZ: no kept draws yet
        _interrupt_on_call(m, 4)  # the search, then warm-up chunks; Ctrl-C in the third
        part = linear_posterior.sample(jax.random.key(23), checkpoint=ckpt, **args)
    assert part.posterior.attrs["interrupted"] == 1
    resumed = linear_posterior.sample(jax.random.key(23), checkpoint=ckpt, **args)
    np.testing.assert_array_equal(resumed.posterior["u"].values, full.posterior["u"].values)
    np.testing.assert_array_equal(
        resumed.sample_stats["step_size"].values, full.sample_stats["step_size"].values
    )


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(20))
def test_calibration_acceptance(linear_posterior, seed):
    for target in (0.6, 0.8):
        idata = linear_posterior.sample(jax.random.key(200 + seed), target_accept=target, **KWARGS)
        acc = float(idata.sample_stats["acceptance_rate"].mean())
        print(f"seed {200 + seed} target {target}: acceptance {acc:.3f}")
        assert abs(acc - target) < 0.05


def test_search_init_and_chain_keys_are_all_different():
    """``chain_keys`` gives each observation's run an initialisation key, one step-size
    search key and one chain key per chain: all different (a search key equal to its
    chain's key replays the search's draws in the chain's first transition)."""
    for adapting in (True, False):
        key_init, keys_search, keys_chains = chain_keys(
            jax.random.split(jax.random.key(0), 2), 3, adapting
        )
        parts = [key_init, keys_chains] + ([keys_search] if adapting else [])
        rows = np.concatenate([np.asarray(jax.random.key_data(k)).reshape(-1, 2) for k in parts])
        assert rows.shape[0] == 2 + 6 + (6 if adapting else 0)
        assert np.unique(rows, axis=0).shape[0] == rows.shape[0], adapting
