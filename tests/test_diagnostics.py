"""dgm.diagnostics: ESS of coordinates a sampler never moved."""

import numpy as np

from dgm import diagnostics
from dgm.experiments._mnist_inpainting_report import _ess


def test_a_coordinate_no_chain_moved_has_no_effective_samples():
    """ArviZ gives a constant array the full draw count (2 × 50 = 100 here); dgm reports 0
    for it, so a stuck sampler cannot show the best ESS of a table. Coordinates that move
    keep ArviZ's value."""
    import arviz as az

    rng = np.random.default_rng(0)
    draws = rng.normal(size=(2, 50, 3))
    draws[:, :, 1] = 0.25  # stuck everywhere
    moving = float(az.ess(draws[:, :, 0]))
    assert float(az.ess(draws[:, :, 1])) == 100.0  # what ArviZ says
    for method in ("bulk", "tail"):
        got = diagnostics.ess(draws, method)
        assert got[1] == 0.0
        np.testing.assert_allclose(
            got[[0, 2]], [az.ess(draws[:, :, i], method=method) for i in (0, 2)]
        )
    np.testing.assert_allclose(diagnostics.ess(draws)[0], moving)
    assert diagnostics.ess(draws[:, :, 1]) == 0.0  # a (chains, draws) array
    summary = diagnostics.summarize(draws, wall_s=2.0)
    assert summary["ess_bulk"][1] == 0.0 and summary["ess_per_s"][1] == 0.0
    assert np.isnan(summary["r_hat"][1]) and np.all(np.isfinite(summary["r_hat"][[0, 2]]))
    pixels = _ess(draws)  # the in-painting report's one-call ESS
    assert pixels[1] == 0.0
    np.testing.assert_allclose(pixels[0], moving)


def test_table_shows_undefined_cells_as_a_dash():
    rows = [{"method": "chmc", "r_hat": 1.00312, "ess": 651.6}, {"method": "abc", "r_hat": None}]
    lines = diagnostics.format_table(rows, ["method", "r_hat", "ess"]).splitlines()
    assert lines == [
        "method  r_hat    ess",  # right-aligned, two spaces between columns
        "------  -----  -----",
        "  chmc  1.003  651.6",
        "   abc      -      -",
    ]


def test_chains_stuck_at_different_values_keep_arviz_ess():
    """Only a coordinate with one value in every chain and draw gets ESS 0: chains each
    stuck at their own value disagree, and ArviZ's (small, nonzero) ESS says so."""
    import arviz as az

    draws = np.zeros((2, 50, 1))
    draws[1] = 1.0  # each chain constant, at different values
    expected = float(az.ess(draws[:, :, 0]))
    assert expected > 0.0
    np.testing.assert_allclose(diagnostics.ess(draws)[0], expected)


def test_summary_against_numpy_and_ess_per_second_only_for_a_positive_time():
    draws = np.random.default_rng(1).normal(size=(2, 30, 2))
    flat = draws.reshape(60, 2)
    summary = diagnostics.summarize(draws, wall_s=3.0)
    np.testing.assert_allclose(summary["mean"], flat.mean(0))
    np.testing.assert_allclose(summary["sd"], flat.std(0, ddof=1))
    np.testing.assert_allclose(summary["q5"], np.percentile(flat, 5, axis=0))
    np.testing.assert_allclose(summary["q95"], np.percentile(flat, 95, axis=0))
    np.testing.assert_allclose(summary["ess_per_s"], summary["ess_bulk"] / 3.0)
    for wall_s in (None, 0.0):
        assert "ess_per_s" not in diagnostics.summarize(draws, wall_s=wall_s)


def test_a_chain_of_two_equal_draws_is_stuck():
    draws = np.array([[[1.0], [1.0]], [[1.0], [2.0]]])  # (chains, draws, dim)
    assert diagnostics.stuck_chains(draws) == [0]
    assert diagnostics.stuck_chains(draws[:, :1]) == []  # one draw says nothing
