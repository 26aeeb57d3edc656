"""Convergence diagnostics (through ArviZ) and the per-method summary table."""

import warnings

import numpy as np


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import arviz as az
    return az


def ess(draws, method: str = "bulk") -> np.ndarray:
    """Multi-chain effective sample size per coordinate of ``(chains, draws, ...)`` arrays."""
    az = _az()
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim == 2:
        return np.asarray(az.ess(draws, method=method))
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    return np.array([az.ess(flat[..., i], method=method) for i in range(flat.shape[-1])])


def rhat(draws) -> np.ndarray:
    """Rank-normalised split R-hat per coordinate of ``(chains, draws, ...)`` arrays."""
    az = _az()
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim == 2:
        return np.asarray(az.rhat(draws))
    flat = draws.reshape(draws.shape[0], draws.shape[1], -1)
    return np.array([az.rhat(flat[..., i]) for i in range(flat.shape[-1])])


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
    """A fixed-width text table from a list of dicts (numbers printed with 4 significant digits)."""

    def fmt(v):
        if isinstance(v, float | np.floating):
            return f"{v:.4g}"
        return str(v)

    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = [title] if title else []
    lines.append("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(lines)
