"""ESS-based z-tests (STYLE §9): z = |mean(f) − E f| / (sd(f) / sqrt(ESS_f))."""

import numpy as np

from dgm.diagnostics import ess


def z_scores(values: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z and multi-chain bulk ESS for each statistic; ``values`` is (chains, draws, k)."""
    values = np.asarray(values, np.float64)
    flat = values.reshape(-1, values.shape[-1])
    n_eff = ess(values, "bulk").reshape(-1)
    z = np.abs(flat.mean(0) - expected) / (flat.std(0, ddof=1) / np.sqrt(n_eff))
    return z, n_eff


def moment_stats(u: np.ndarray) -> np.ndarray:
    """First and second moments per coordinate, stacked on the last axis."""
    return np.concatenate([u, u**2], axis=-1)
