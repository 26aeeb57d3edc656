"""Simulation-based calibration of the constrained sampler on a user's generator.

``dgm.sbc(generator, input_dim)`` draws inputs u* ~ N(0, I) (the prior), simulates
y = generator(u*), conditions on each y and samples, and records the rank of u* (and of
named derived quantities f(u*)) among L thinned posterior draws. If the sampler is exact,
each rank is uniform on {0, …, L}; a chi-square test on binned ranks and a rank histogram
show departures (Talts et al. 2018). Constrained HMC is exact, so this is a check any
user can run on their own generator.

A prior draw on which the generator returns NaN or inf is counted and skipped with its
index (``skipped``); a replication whose conditioning fails (no start on the manifold) is
skipped the same way (``failed``). Neither stops the run. The replications run in batches
of observations through ``posterior.sample(keys, y_obs=Y)`` (one compiled job per batch,
sharded over the host devices; every batch has the same size, so compilation is paid
once), with the sampler's defaults: typical-set starts, step-size adaptation during the
warm-up, dynamic trajectories. Replication ``i`` uses keys derived from ``fold_in(key, i)``
only, so its draws do not depend on the batch it ran in (or on a resume).

References:
    Talts, Betancourt, Simpson, Vehtari & Gelman (2018), "Validating Bayesian inference
    algorithms with simulation-based calibration", arXiv:1804.06788.
"""

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from dgm._types import check_key
from dgm.conditioning import condition
from dgm.config import check_positive


@dataclasses.dataclass
class SBCResult:
    """Ranks and uniformity tests of one SBC run.

    Attributes:
        ranks: name -> ``(replications, size)`` int ranks in {0, …, num_ranks}, for ``u``
            and each derived quantity (flattened), over the replications that ran.
        num_ranks: L, the thinned posterior draws per replication.
        num_bins: bins of the chi-square test.
        p_values: name -> ``(size,)`` chi-square p-values of uniformity.
        indices: the replication index of each row of ``ranks``.
        skipped: indices whose simulated output was not finite.
        failed: index -> message, replications whose conditioning failed.
        accept_rate: mean acceptance per replication (rows of ``ranks``).
        wall_s: seconds for the whole run.
    """

    ranks: dict[str, np.ndarray]
    num_ranks: int
    num_bins: int
    p_values: dict[str, np.ndarray]
    indices: np.ndarray
    skipped: list[int]
    failed: dict[int, str]
    accept_rate: np.ndarray
    wall_s: float

    def metrics(self) -> dict:
        """JSON-ready summary: p-values, their minimum per quantity (and that minimum times
        the number of p-values, Bonferroni's correction), counts, time."""
        return {
            "num_replications_run": int(self.indices.size),
            "num_ranks": self.num_ranks,
            "num_bins": self.num_bins,
            "p_values": {k: v.tolist() for k, v in self.p_values.items()},
            "p_min": {k: float(np.min(v)) for k, v in self.p_values.items() if v.size},
            # the smallest of k p-values is ≈ 1/(k+1) for an exact sampler: Bonferroni's
            # k · p_min is the multiplicity-aware reading (e.g. 104 Lotka–Volterra inputs)
            "p_min_bonferroni": {
                k: float(min(1.0, np.min(v) * v.size)) for k, v in self.p_values.items() if v.size
            },
            "skipped_nonfinite": list(self.skipped),
            "num_skipped_nonfinite": len(self.skipped),
            "failed": {str(k): v for k, v in self.failed.items()},
            "accept_rate_mean": float(np.mean(self.accept_rate)) if self.accept_rate.size else None,
            "wall_s": self.wall_s,
        }


def chi_square_uniformity(ranks: np.ndarray, num_ranks: int, num_bins: int) -> np.ndarray:
    """p-values of uniformity of ``(replications, size)`` ranks in {0, …, L}, per column.

    Ranks are binned into ``num_bins`` equal groups of ``(L + 1) / num_bins`` values (L + 1
    must be a multiple of ``num_bins``); the statistic Σ (count − expected)² / expected
    is compared with a chi-square law of ``num_bins − 1`` degrees of freedom.
    """
    ranks = np.asarray(ranks)
    if (num_ranks + 1) % num_bins:
        raise ValueError(f"num_ranks + 1 = {num_ranks + 1} must be a multiple of {num_bins} bins")
    bins = ranks // ((num_ranks + 1) // num_bins)
    counts = np.stack([np.sum(bins == b, axis=0) for b in range(num_bins)])
    expected = ranks.shape[0] / num_bins
    stat = np.sum((counts - expected) ** 2, axis=0) / expected
    return scipy.stats.chi2.sf(stat, num_bins - 1)


def ranks_of(truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """#{draws < truth} per coordinate: ``truth`` (size,), ``draws`` (L, size)."""
    return np.sum(np.asarray(draws) < np.asarray(truth)[None], axis=0)


def sbc(
    generator: Callable,
    input_dim: int,
    key: Any,
    *,
    num_replications: int = 200,
    num_ranks: int = 99,
    thin: int = 4,
    num_chains: int = 1,
    num_warmup: int = 200,
    num_bins: int = 10,
    derived: dict[str, Callable] | None = None,
    condition_kwargs: dict[str, Any] | None = None,
    batch_size: int = 50,
    tol: float = 1e-8,
    sample_kwargs: dict[str, Any] | None = None,
    done: dict | None = None,
    on_replication: Callable | None = None,
) -> SBCResult:
    """Simulation-based calibration of ``dgm.condition(generator, ...).sample``.

    Args:
        generator: ``u -> y`` with ``u ~ N(0, I_input_dim)`` (as for ``dgm.condition``).
        input_dim: M, the number of inputs.
        key: PRNG key (the prior draws and each replication's sampler key derive from it).
        num_replications: simulated data sets.
        num_ranks: L, kept draws per replication after thinning; ``L + 1`` must be a
            multiple of ``num_bins``.
        thin: keep every ``thin``-th draw (reduces autocorrelation; Talts et al. §5).
        num_chains: chains per replication (their thinned draws are pooled).
        num_warmup: warm-up (step-size adaptation) iterations per chain.
        num_bins: bins of the chi-square test.
        derived: named functions ``u -> array`` whose ranks are also tested.
        condition_kwargs: further arguments of :func:`dgm.condition` (``jacobian``,
            ``gram_factor_fn``, ``half_log_det_fn`` as ``(u, y_obs) -> …``, ``init_fn`` as
            ``(key, y_obs) -> u``), which must serve any observation.
        batch_size: replications per ``sample`` call (the last batch is padded).
        tol: the manifold tolerance (starts and projections).
        sample_kwargs: further arguments of ``posterior.sample`` (e.g. ``num_steps`` for
            fixed-length trajectories, ``chain_map``); by default its own defaults, with
            the chains run one after another (``chain_map="map"``: dynamic trajectories
            vary in length, and batched chains would each wait for the longest).
        done: ``{index: (ranks dict, accept)}`` of replications already run (resume).
        on_replication: called as ``on_replication(index, ranks dict, accept)`` after each.

    Returns:
        An :class:`SBCResult`.
    """
    for name, value in (("num_replications", num_replications), ("num_ranks", num_ranks)):
        check_positive(name, value, integer=True)
    for name, value in (("thin", thin), ("num_chains", num_chains), ("num_bins", num_bins)):
        check_positive(name, value, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    if num_ranks % num_chains:  # each chain gives num_ranks / num_chains thinned draws
        raise ValueError(f"`num_chains` ({num_chains}) must divide `num_ranks` ({num_ranks})")
    start = time.perf_counter()
    # each quantity compiled once, evaluated at [truth, draws] (one shape) per replication
    quantities = {"u": lambda u: u} | dict(derived or {})
    quantities = {name: jax.jit(jax.vmap(fn)) for name, fn in quantities.items()}
    check_key(key)
    key_prior, key_runs = jax.random.split(key)
    with jax.enable_x64(True):
        u_true = jax.random.normal(key_prior, (num_replications, input_dim), jnp.float64)
        ys = np.asarray(jax.jit(jax.vmap(generator))(u_true))
    u_true = np.asarray(u_true)
    finite = np.all(np.isfinite(ys.reshape(num_replications, -1)), axis=1)
    rows: dict[int, tuple[dict, float]] = dict(done or {})
    failed: dict[int, str] = {}
    todo = [int(i) for i in np.flatnonzero(finite) if int(i) not in rows]
    if todo:
        posterior = condition(generator, ys[todo[0]], input_dim, **dict(condition_kwargs or {}))
        size = min(batch_size, len(todo))
        sample_kw = dict(
            num_chains=num_chains, num_samples=num_ranks * thin // num_chains,
            num_warmup=num_warmup, tol=tol, progress_bar=False, check_chains=False,
            chain_map="map",
        ) | dict(sample_kwargs or {})  # fmt: skip
        for first in range(0, len(todo), size):
            batch = todo[first : first + size]
            keys = jnp.stack([jax.random.split(jax.random.fold_in(key_runs, i)) for i in batch])
            u0, ok = _starts(posterior, ys[batch], keys[:, 0], num_chains, tol)
            failed |= {
                i: "no starting point on the manifold"
                for i, good in zip(batch, ok, strict=True)
                if not good
            }
            ran = [j for j, good in enumerate(ok) if good]
            if not ran:
                continue
            pad = np.array(ran + [ran[0]] * (size - len(ran)))  # same shapes: no recompiling
            idata = posterior.sample(keys[pad, 1], y_obs=ys[batch][pad], init=u0[pad], **sample_kw)
            draws = np.asarray(idata.posterior["u"].values)  # (chain, draw, obs, M)
            accept = np.asarray(idata.sample_stats["acceptance_rate"].values).mean(axis=(0, 1))
            for col, j in enumerate(ran):
                i = batch[j]
                kept = _thinned(draws[:, :, col].reshape(-1, input_dim), num_chains, thin)
                if len(kept) < num_ranks:  # `sample_kwargs` asked for fewer draws
                    raise ValueError(
                        f"{len(kept)} thinned draws for {num_ranks} ranks: `num_samples` in "
                        f"`sample_kwargs` must be at least num_ranks * thin / num_chains"
                    )
                ranks = {n: _rank(fn, u_true[i], kept[:num_ranks]) for n, fn in quantities.items()}
                rows[i] = (ranks, float(accept[col]))
                if on_replication is not None:
                    on_replication(i, ranks, float(accept[col]))
    return _result(rows, num_ranks, num_bins, np.flatnonzero(~finite), failed, start)


def _starts(posterior, ys, keys, num_chains: int, tol: float):
    """``((num_obs, num_chains, M) starts, (num_obs,) on-manifold flags)``: the posterior's
    own candidates (its closed form if it serves any observation, else typical-set starts);
    a row whose starts miss the manifold (or are not finite) is flagged, not raised."""
    with jax.enable_x64(True):
        ys = jnp.asarray(ys, jnp.float64)
        u, _ = posterior._candidate_points(keys, num_chains, tol, ys)
        residual = np.asarray(posterior._residuals(u, jnp.repeat(ys, num_chains, axis=0)))
    ok = np.isfinite(residual) & (residual <= tol)
    return u.reshape(ys.shape[0], num_chains, -1), np.all(ok.reshape(-1, num_chains), axis=1)


def _thinned(draws: np.ndarray, num_chains: int, thin: int) -> np.ndarray:
    per_chain = draws.reshape(num_chains, -1, draws.shape[-1])[:, thin - 1 :: thin]
    return per_chain.reshape(-1, draws.shape[-1])


def _rank(fn: Callable, truth: np.ndarray, draws: np.ndarray) -> np.ndarray:
    """Ranks of ``fn(truth)`` among ``fn(draws)``; ``fn`` is batched (``vmap``) over rows."""
    with jax.enable_x64(True):
        values = np.asarray(fn(jnp.asarray(np.concatenate([truth[None], draws]))))
    values = values.reshape(values.shape[0], -1)
    return ranks_of(values[0], values[1:])


def _result(rows: dict, num_ranks, num_bins, skipped, failed, start) -> SBCResult:
    indices = np.array(sorted(rows), dtype=int)
    names = list(rows[indices[0]][0]) if indices.size else ["u"]
    ranks = {
        name: np.stack([rows[i][0][name] for i in indices])
        if indices.size
        else np.zeros((0, 0), int)
        for name in names
    }
    p_values = {
        name: chi_square_uniformity(r, num_ranks, num_bins) if r.shape[0] else np.zeros(0)
        for name, r in ranks.items()
    }
    accept = np.array([rows[i][1] for i in indices])
    return SBCResult(
        ranks, num_ranks, num_bins, p_values, indices, [int(i) for i in skipped], failed,
        accept, time.perf_counter() - start,
    )  # fmt: skip


def plot_rank_histograms(result: SBCResult, names: dict[str, list[str]] | None = None):
    """A figure of rank histograms (one panel per coordinate) with the 99% band of the
    bin counts under uniformity (binomial)."""
    import matplotlib.pyplot as plt

    panels = [
        (name, j, (names or {}).get(name, [f"{name}[{k}]" for k in range(r.shape[1])])[j])
        for name, r in result.ranks.items()
        for j in range(r.shape[1])
    ]
    cols = min(4, max(1, len(panels)))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 2.4 * rows), squeeze=False)
    n = result.indices.size
    lo, hi = scipy.stats.binom.ppf([0.005, 0.995], n, 1 / result.num_bins)
    width = (result.num_ranks + 1) // result.num_bins
    for ax, (name, j, label) in zip(axes.flat, panels, strict=False):
        counts = np.bincount(result.ranks[name][:, j] // width, minlength=result.num_bins)
        ax.axhspan(lo, hi, color="0.85")
        ax.bar(np.arange(result.num_bins), counts, width=0.9)
        ax.set_title(f"{label}  p={result.p_values[name][j]:.3f}", fontsize=8)
        ax.set_xticks([])
    for ax in axes.flat[len(panels) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel(f"rank ({result.num_bins} bins)", fontsize=8)
    fig.suptitle(
        f"SBC rank histograms, {n} replications, {result.num_ranks} draws each; grey: "
        "99% band of a bin's count if uniform",
        fontsize=9,
    )
    fig.tight_layout()
    return fig
