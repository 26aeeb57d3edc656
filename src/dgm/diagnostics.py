"""Convergence diagnostics (through ArviZ) and the per-method summary table."""

import sys
import warnings

import numpy as np

# frames passed over to reach the user's line: dgm's own, and runtime type checkers'
# wrappers around dgm's functions (the suite runs jaxtyping's)
_INNER_PACKAGES = ("dgm", "jaxtyping", "typeguard", "beartype")


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def ess(draws, method: str = "bulk") -> np.ndarray:
    """Multi-chain effective sample size per coordinate of ``(chains, draws, ...)`` arrays
    (flattened to one axis of coordinates); 0 for a coordinate with one value in every chain
    and draw (ArviZ gives a constant array the full draw count, so a sampler that never
    moved would report its best ESS; chains stuck at different values get ArviZ's small
    ESS)."""
    az = _az()
    flat, values = _per_coordinate(lambda ds: az.ess(ds, method=method), draws)
    stuck = np.all(flat == flat[:1, :1], axis=(0, 1))
    return _shaped(np.where(stuck, 0.0, values), draws)


def rhat(draws) -> np.ndarray:
    """Rank-normalised split R-hat per coordinate of ``(chains, draws, ...)`` arrays (NaN
    for a coordinate that never moved)."""
    return _shaped(_per_coordinate(_az().rhat, draws)[1], draws)


def _per_coordinate(stat, draws) -> tuple[np.ndarray, np.ndarray]:
    """``(chains, draws, coordinates)`` float64 draws and ``stat`` (an ArviZ diagnostic of a
    dataset) of every coordinate, in one call."""
    draws = np.asarray(draws, dtype=np.float64)
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    with warnings.catch_warnings():  # e.g. ArviZ dividing by a stuck coordinate's 0 variance
        warnings.simplefilter("ignore")
        values = np.asarray(stat(_az().convert_to_dataset({"x": flat}))["x"].values)
    return flat, values


def _shaped(values: np.ndarray, draws) -> np.ndarray:
    """One value (a 0-d array) for ``(chains, draws)`` input, else one per coordinate."""
    return np.asarray(values[0]) if np.ndim(draws) == 2 else values


def summarize(draws, wall_s: float | None = None) -> dict:
    """Mean, sd, 5%/95% quantiles, bulk/tail ESS, R-hat (and ESS/s) per coordinate."""
    draws = np.asarray(draws, dtype=np.float64)
    flat = draws.reshape(draws.shape[0] * draws.shape[1], -1)
    bulk = ess(draws, "bulk").reshape(-1)
    out = {
        "mean": flat.mean(0),
        "sd": flat.std(0, ddof=1),
        "q5": np.quantile(flat, 0.05, axis=0),
        "q95": np.quantile(flat, 0.95, axis=0),
        "ess_bulk": bulk,
        "ess_tail": ess(draws, "tail").reshape(-1),
        "r_hat": rhat(draws).reshape(-1) if draws.shape[0] > 1 else np.full(flat.shape[1], np.nan),
    }
    if wall_s is not None and wall_s > 0:
        out["ess_per_s"] = bulk / wall_s
    return out


def format_table(rows: list[dict], columns: list[str], title: str | None = None) -> str:
    """A fixed-width text table from a list of dicts (numbers printed with 4 significant
    digits; ``None`` and missing keys as ``-``)."""

    def fmt(v):
        if v is None:  # not defined for this row (e.g. R-hat of a method with no draws)
            return "-"
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)


class ChainDisagreementWarning(UserWarning):
    """Chains of one run disagree: some chain explores a different region (or mode)."""


class StuckChainWarning(UserWarning):
    """A chain rejected every proposal: all its draws are one point."""


def warn_caller(message: str, category: type[Warning]) -> None:
    """``warnings.warn`` attributed to the first frame outside the dgm package (the user's
    ``sample(...)`` line, however deep in dgm the check ran): Python 3.12's
    ``skip_file_prefixes``, by hand."""
    level, frame = 2, sys._getframe(1)
    while frame is not None and _inner(frame.f_globals.get("__name__", "")):
        level, frame = level + 1, frame.f_back
    warnings.warn(message, category, stacklevel=level)


def _inner(module: str) -> bool:
    return module.split(".", 1)[0] in _INNER_PACKAGES


def stuck_chains(draws) -> list[int]:
    """Indices of the chains of ``(chains, draws, ...)`` whose draws (two or more) are all
    equal: every transition was rejected (a step size far too large, a start where the
    target or its gradient is not finite), so they say nothing about the posterior."""
    draws = np.asarray(draws)
    if draws.shape[1] < 2:
        return []
    same = np.all(draws == draws[:, :1], axis=tuple(range(1, draws.ndim)))
    return [int(k) for k in np.flatnonzero(same)]


def stuck_warning(stuck: list[int], num_draws: int) -> str | None:
    """The warning text for :func:`stuck_chains`' result, or None when every chain moved."""
    if not stuck:
        return None
    return (
        f"chains {stuck} rejected every proposal: their {num_draws} draws are one point "
        "and say nothing of the posterior; lower the step size (or raise the target "
        "acceptance), or check that the log density and its gradient are finite there"
    )


# Thresholds of :func:`chain_agreement`, calibrated on correct runs (tests/test_chain_checks.py).
RHAT_WARN = 1.1  # Gelman et al. (2013)'s classic R-hat threshold, rank-normalised split R-hat
LP_Z_WARN = 8.0  # |chain mean of log p − the others' mean| in Monte Carlo standard errors
LP_NATS_WARN = 1.0  # ... and in nats: a difference below one nat is never flagged
MIN_DRAWS = 50  # R-hat of fewer draws per chain is too noisy to warn on


def _chain_mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-chain mean and Monte Carlo standard error (sd / √ESS) of ``(chains, draws)``."""
    az = _az()
    means = x.mean(1)
    ses = np.array([c.std(ddof=1) / np.sqrt(max(float(az.ess(c[None])), 1.0)) for c in x])
    return means, ses


def chain_agreement(draws, log_density) -> dict:
    """Whether the chains of a run agree, as Stan and NumPyro users read it.

    Args:
        draws: ``(chains, draws, ...)`` parameter draws.
        log_density: ``(chains, draws)`` log density at the same (or thinned) draws.

    Returns:
        A dict: ``r_hat_max`` (rank-normalised split R-hat, the largest over the
        coordinates of ``draws`` and the log density), ``lp_chain_mean`` (per chain),
        ``lp_z`` (per chain: its mean log density minus the median of the other chains'
        means, in Monte Carlo standard errors), ``disagreeing_chains`` (chain indices: a
        log-density z above :data:`LP_Z_WARN` and one nat, or, when only R-hat exceeds
        :data:`RHAT_WARN`, the chain farthest from the others in the worst coordinate)
        and ``checked`` (False with one chain or fewer than :data:`MIN_DRAWS` draws).
    """
    draws = np.asarray(draws, np.float64)
    lp = np.asarray(log_density, np.float64)
    num_chains, num_draws = lp.shape
    means = lp.mean(1) if num_draws else np.full(num_chains, np.nan)
    out = {"r_hat_max": float("nan"), "lp_chain_mean": means.tolist(), "checked": False}
    out |= {"lp_z": [0.0] * num_chains, "disagreeing_chains": []}
    if num_chains < 2 or num_draws < MIN_DRAWS or not np.all(np.isfinite(lp)):
        return out
    flat = draws.reshape(num_chains, draws.shape[1], -1)
    both = np.concatenate([flat, lp[..., None]], axis=-1) if flat.shape[1] == num_draws else lp
    r_hat = rhat(both).reshape(-1)
    means, ses = _chain_mean_se(lp)
    z, gaps = np.zeros(num_chains), np.zeros(num_chains)
    for k in range(num_chains):  # against the median of the others: one odd chain out
        rest = np.delete(np.arange(num_chains), k)
        diff = means[k] - np.median(means[rest])
        se = np.hypot(ses[k], np.median(ses[rest]))
        if se > 0:
            z[k] = diff / se
        else:  # chains that never moved: no Monte Carlo error
            z[k] = np.copysign(np.inf, diff) if diff else 0.0
        gaps[k] = diff
    bad = [int(k) for k in np.flatnonzero((np.abs(z) > LP_Z_WARN) & (np.abs(gaps) > LP_NATS_WARN))]
    r_max = float(np.nanmax(r_hat)) if np.any(np.isfinite(r_hat)) else float("nan")
    if not bad and r_max > RHAT_WARN:  # name the chain farthest out in the worst coordinate
        worst = both.reshape(num_chains, -1, r_hat.size)[..., int(np.nanargmax(r_hat))]
        m = worst.mean(1)
        bad = [int(np.argmax([abs(m[k] - np.median(np.delete(m, k))) for k in range(len(m))]))]
    out |= {"r_hat_max": r_max, "lp_z": z.tolist(), "disagreeing_chains": bad, "checked": True}
    return out


def chain_warning(agreement: dict) -> str | None:
    """The warning text for a :func:`chain_agreement` result, or None when chains agree."""
    bad = agreement["disagreeing_chains"]
    if not bad:
        return None
    means = np.round(agreement["lp_chain_mean"], 2).tolist()
    return (
        f"chains {bad} disagree with the others (max R-hat {agreement['r_hat_max']:.3f}, "
        f"mean log density per chain {means}): a chain may be stuck in another mode or "
        "still far from the typical set; run longer, check the starting points, or "
        "compare the chains (the run's attrs hold these diagnostics)"
    )
