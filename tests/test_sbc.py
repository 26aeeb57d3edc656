"""Simulation-based calibration (``dgm.sbc``, ``dgm run sbc``).

Exact pieces: the chi-square uniformity test on exactly uniform and on piled-up ranks,
and ranks against known draws. On a linear-Gaussian generator whose output is NaN for a
part of the prior, the NaN replications are skipped with their indices, never a crash,
and the ranks of the others cover {0, …, L}. Slow set: the MLP generator of issue 16 at
the default settings gives p > 0.01 per input over 200 replications, and with the
Gram log-det term removed (``half_log_det_fn`` returning 0: the planted bug) SBC rejects
uniformity of the test quantity ½ log det(J Jᵀ) on y = z³ + n (p < 1e-4, measured 1.3e-7;
0.078 without the bug).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

import dgm
from dgm.calibration import chi_square_uniformity, ranks_of
from dgm.cli import main
from dgm.inference.manifold import DenseCholesky
from dgm.models.mlp_generator import MLPGenerator


def test_chi_square_accepts_uniform_and_rejects_piled_up_ranks():
    uniform = np.tile(np.arange(100), 3)[:, None]  # every rank equally often
    np.testing.assert_allclose(chi_square_uniformity(uniform, 99, 10), 1.0)
    piled = np.concatenate([uniform, np.zeros((60, 1), int)])  # 60 extra zeros
    assert chi_square_uniformity(piled, 99, 10)[0] < 1e-6
    with pytest.raises(ValueError, match="multiple of 10 bins"):
        chi_square_uniformity(uniform, 98, 10)


def test_a_key_that_is_not_one_prng_key_is_refused_by_name():
    with pytest.raises(ValueError, match="`key` must be one PRNG key"):
        dgm.sbc(lambda u: u[:1], 2, 0)


def test_every_chain_count_ranks_against_exactly_l_draws():
    """num_ranks = 9 from 3 chains, thin 2: the ranks reach 9 (all L draws kept); a chain
    count that does not divide L is refused (2 chains ranked against 8 draws, 4 against 96
    of 99, while the chi-square test binned ranks over 0..L: an exact sampler failed)."""
    res = dgm.sbc(
        lambda u: u[:1] + 0.5 * u[1:], 2, jax.random.key(1), num_replications=30, num_ranks=9,
        thin=2, num_chains=3, num_warmup=10, num_bins=5,
    )  # fmt: skip
    assert res.ranks["u"].max() == 9 and res.ranks["u"].min() == 0
    with pytest.raises(ValueError, match=r"`num_chains` \(2\) must divide `num_ranks` \(9\)"):
        dgm.sbc(lambda u: u[:1], 2, jax.random.key(0), num_ranks=9, num_chains=2)


def test_ranks_count_draws_below_the_truth():
    draws = np.array([[0.0, 5.0], [1.0, 6.0], [2.0, 7.0]])
    np.testing.assert_array_equal(ranks_of(np.array([1.5, 4.0]), draws), [2, 0])


def _nan_generator(u):
    y = u[:1] + 0.5 * u[1:]
    return jnp.where(u[0] > 1.0, jnp.nan, y)  # NaN on about 16 % of the prior


def test_nonfinite_simulations_are_skipped_with_their_index():
    res = dgm.sbc(
        _nan_generator, 2, jax.random.key(0), num_replications=12, num_ranks=9, thin=1,
        num_warmup=10, num_bins=5,
    )  # fmt: skip
    with jax.enable_x64(True):
        u = jax.random.normal(jax.random.split(jax.random.key(0))[0], (12, 2), jnp.float64)
    expected = [int(i) for i in np.flatnonzero(np.asarray(u[:, 0]) > 1.0)]
    assert expected and res.skipped == expected
    # a start can also fail (the NaN region cuts the manifold): counted, with its index
    ran = res.indices.tolist() + res.skipped + list(res.failed)
    assert sorted(ran) == list(range(12)) and len(res.failed) <= 2, res.failed
    assert res.ranks["u"].shape == (12 - len(expected) - len(res.failed), 2)
    assert res.ranks["u"].min() >= 0 and res.ranks["u"].max() <= 9
    assert res.metrics()["num_skipped_nonfinite"] == len(expected)
    bonferroni = res.metrics()["p_min_bonferroni"]["u"]
    assert bonferroni == pytest.approx(min(1.0, 2 * float(np.min(res.p_values["u"]))))


def _mlp_sbc(seed, **kwargs):
    model = MLPGenerator.random(0)
    return dgm.sbc(model.generate, model.input_dim, jax.random.key(seed), **kwargs)


@pytest.mark.slow
def test_mlp_ranks_are_uniform_at_the_defaults():
    res = _mlp_sbc(1)
    assert np.all(res.p_values["u"] > 0.01), res.p_values["u"]


def _cubic(u):
    return u[:1] ** 3 + u[1:]  # y = z³ + n: |∇G| varies along the manifold


CUBIC_DERIVED = {
    "half_log_det": lambda u: DenseCholesky.from_jacobian(jax.jacfwd(_cubic)(u)).half_log_det()
}


@pytest.mark.slow
@pytest.mark.parametrize("planted_bug", [False, True])
def test_sbc_flags_a_sampler_without_the_log_det_term(planted_bug):
    """The planted bug: ``half_log_det_fn`` returning 0 drops ½ log det(J Jᵀ) from the
    potential (and its gradient). On y = z³ + n the input ranks stay near uniform (the bias
    changes sign with y: p = 0.76 with the bug), but the ranks of the derived test quantity
    ½ log det(J Jᵀ) pile up: p < 1e-4 (measured 1.3e-7), against p = 0.078 without the bug."""
    zero = {"half_log_det_fn": lambda u, y: jnp.zeros((), u.dtype)}
    res = dgm.sbc(
        _cubic, 2, jax.random.key(1), derived=CUBIC_DERIVED,
        condition_kwargs=zero if planted_bug else None,
    )  # fmt: skip
    p = res.p_values["half_log_det"][0]
    assert (p < 1e-4) if planted_bug else (p > 0.01), p


@pytest.mark.slow
def test_cli_smoke_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "sbc", "--smoke", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = json.loads((out / "metrics.json").read_text())
    assert (out / "rank_histograms.png").stat().st_size > 0
    assert main([*args, "--resume"]) == 0  # every replication comes from the checkpoint
    again = json.loads((out / "metrics.json").read_text())
    assert again["p_values"] == first["p_values"] and again["wall_s"] < first["wall_s"]
    from dgm.experiments import sbc

    assert f"mean acceptance {first['accept_rate_mean']:.3f}\n" in sbc.summary(first)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("lv_num_time_steps=0", "`lv_num_time_steps` must be a positive int; got 0"),
        ("lv_prior_scale=0", "`lv_prior_scale` must be a positive finite scalar; got 0.0"),
        ("lv_prior_scale=-0.1", "`lv_prior_scale` must be a positive finite scalar; got -0.1"),
    ],
)
def test_cli_refuses_a_bad_lotka_volterra_setting_by_name(tmp_path, capsys, setting, message):
    """lv_num_time_steps=0 failed after compiling with "zero-size array to reduction
    operation max which has no identity"; a zero prior scale ran a degenerate prior."""
    args = ["run", "sbc", "--smoke", "--model", "lotka-volterra", "--set", setting]
    assert main([*args, "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err == f"dgm: error: {message}\n"


def test_chi_square_p_values_are_scipys_on_the_binned_ranks():
    """Ranks in {0, …, 19} in 5 bins of 4 values: the p-value of each column is SciPy's
    chi-square test of its bin counts (4 degrees of freedom).

    Catches (audit plants): bins of L / bins values, one degree of freedom too many, the
    expected count over bins − 1."""
    ranks = np.random.default_rng(0).integers(0, 20, size=(200, 3))
    ranks[:40, 2] = 0  # one column far from uniform
    counts = np.stack([np.bincount(ranks[:, j] // 4, minlength=5) for j in range(3)])
    want = scipy.stats.chisquare(counts, axis=1).pvalue
    np.testing.assert_allclose(chi_square_uniformity(ranks, 19, 5), want, rtol=1e-10)


def test_thinning_keeps_every_thin_th_draw_of_each_chain():
    """Chains of 6 draws thinned by 3 keep each chain's 3rd and 6th draw (the last one
    kept, not the first after warm-up). Catches (audit plant): the offset dropped."""
    from dgm.calibration import _thinned

    draws = np.arange(12.0)[:, None]  # 2 chains × 6 draws, chain-major
    np.testing.assert_array_equal(_thinned(draws, 2, 3)[:, 0], [2, 5, 8, 11])


def test_the_experiment_reads_uniformity_with_and_without_bonferroni(tmp_path, monkeypatch):
    """A fabricated run whose smallest of 10 p-values is 0.005: not uniform at 0.01, but
    uniform once corrected for the 10 tests (0.05). Catches (audit plant): the corrected
    verdict computed from the uncorrected p-values, the report's minimum p-value
    a maximum."""
    from dgm.calibration import SBCResult
    from dgm.experiments import sbc
    from dgm.runs import RunContext

    ranks = {"u": np.random.default_rng(0).integers(0, 20, size=(3, 10))}
    p = {"u": np.array([0.005, *np.linspace(0.2, 0.9, 9)])}
    result = SBCResult(ranks, 19, 5, p, np.arange(3), [], {}, np.ones(3), 1.0)
    monkeypatch.setattr(sbc, "sbc", lambda *a, **k: result)
    monkeypatch.setattr(sbc, "plot_rank_histograms", lambda *a: None)
    monkeypatch.setattr(RunContext, "save_figure", lambda *a: None)
    m = sbc.run(sbc.PRESETS["smoke"], None, RunContext(tmp_path))
    assert m["uniform_at_0.01"] is False and m["uniform_at_0.01_bonferroni"] is True
    assert "u: min p = 0.0050 over 10\n" in (tmp_path / "report.md").read_text()


def test_a_draw_equal_to_the_truth_is_not_below_it():
    """Ties count as not below (#{draws < truth}), so a chain stuck at the truth cannot
    push its rank up. Catches (audit plant): ``<=``."""
    draws = np.array([[0.0, 5.0], [1.0, 5.0], [1.0, 5.0], [2.0, 6.0]])
    np.testing.assert_array_equal(ranks_of(np.array([1.0, 5.0]), draws), [1, 0])
