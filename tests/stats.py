"""ESS-based z-tests (STYLE §9): z = |mean(f) − E f| / (sd(f) / sqrt(ESS_f)).

The one statistics helper of the sampler tests (test_hmc.py, test_abc.py, ...).
"""

import numpy as np

from dgm.diagnostics import ess


def z_scores(
    values: np.ndarray,
    expected: np.ndarray,
    expected_var: np.ndarray | float = 0.0,
    method: str = "bulk",
) -> tuple[np.ndarray, np.ndarray]:
    """z and multi-chain ESS (bulk by default) for each statistic; ``values`` is
    (chains, draws, k).

    ``expected_var``: the variance of ``expected`` itself when it is an estimate (e.g. a
    mean over ``n`` independent reference draws: ``var / n``), added to the chains'
    Monte Carlo variance ``sd² / ESS``.
    ``method``: the :func:`dgm.diagnostics.ess` method. ``"mean"`` is the ESS of the raw
    values' mean, the one the z-test's standard error needs; the rank-normalised bulk ESS
    can overstate it for a skewed statistic (test_constrained_hmc_lapack.py: bulk 10200,
    mean 4060 for θ², and z spread with sd 1.66 across seeds instead of 1).
    """
    values = np.asarray(values, np.float64)
    flat = values.reshape(-1, values.shape[-1])
    n_eff = ess(values, method).reshape(-1)
    mc_var = flat.var(0, ddof=1) / n_eff
    z = np.abs(flat.mean(0) - expected) / np.sqrt(mc_var + expected_var)
    return z, n_eff


def moment_stats(u: np.ndarray) -> np.ndarray:
    """First and second moments per coordinate, stacked on the last axis."""
    return np.concatenate([u, u**2], axis=-1)
