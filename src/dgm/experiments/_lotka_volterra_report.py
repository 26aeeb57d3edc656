"""Figures and ``report.md`` of the Lotka–Volterra experiment."""

import numpy as np

from dgm import diagnostics
from dgm.models.lotka_volterra import NUM_PARAMS, TRUE_RATES
from dgm.runs import RunContext

PARAM_NAMES = ["log z1", "log z2", "log z3", "log z4"]
# Thesis/journal ESS per second (mean over 10 chains), spec §7.1.
PAPER_ESS_PER_S = {
    "chmc": [3.14, 3.13, 3.22, 3.24],
    "abc_slice_uniform_100": [1.02, 1.05, 0.99, 1.20],
    "abc_slice_uniform_10": [0.019, 0.019, 0.013, 0.013],
    "abc_slice_gaussian_10": [0.27, 0.27, 0.21, 0.25],
    "abc_hmc_10": [0.095, 0.101, 0.067, 0.082],
}


def plot_marginals(ctx: RunContext, draws: dict[str, np.ndarray], ref: dict) -> None:
    """Histograms per log-rate over the reference mean ± 6 sd.

    Each is scaled by the method's total draw count, so a method with most of its mass
    outside the window (a wide ABC posterior, a chain that has not converged) shows as a
    low curve rather than being renormalised.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, NUM_PARAMS, figsize=(4 * NUM_PARAMS, 3.4))
    handles: dict = {}
    for i, ax in enumerate(axes):
        mean, sd = ref["posterior_mean"][i], ref["posterior_sd"][i]
        bins = np.linspace(mean - 6 * sd, mean + 6 * sd, 41)
        for k, (name, d) in enumerate(draws.items()):
            flat = d[..., i].reshape(-1)
            inside = flat[(flat >= bins[0]) & (flat <= bins[-1])]
            if inside.size < 2:
                continue
            weights = np.full(inside.size, 1.0 / (flat.size * (bins[1] - bins[0])))
            style = {"linewidth": 2.0} if name in ("chmc", "reference") else {"linewidth": 1.0}
            color = f"C{k % 10}"  # fixed per method, whichever axes it appears on
            ax.hist(inside, bins=bins, weights=weights, histtype="step", color=color, **style)
            handles.setdefault(name, plt.Line2D([], [], color=color, **style))
        ax.axvline(np.log(TRUE_RATES[i]), color="k", linestyle="--")
        ax.set_xlabel(PARAM_NAMES[i])
    handles["true"] = plt.Line2D([], [], color="k", linestyle="--")
    axes[-1].legend(
        handles.values(), handles.keys(), fontsize=7, bbox_to_anchor=(1.02, 1), loc="upper left"
    )
    fig.suptitle("Lotka–Volterra: marginal posteriors of the log-rates")
    ctx.save_figure("marginals.png", fig)


def plot_ess(ctx: RunContext, results: dict) -> None:
    """The paper's figure: bulk ESS/s per log-rate and method (log scale), thesis marks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in results if n != "reference"]
    fig, ax = plt.subplots(figsize=(max(7.0, 1.1 * len(names) + 3), 3.8))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        r = results[name]
        ess_s = np.asarray(r["ess_bulk"], dtype=float) / r["wall_s"] if r["wall_s"] > 0 else None
        x = np.arange(NUM_PARAMS) + j * width
        if ess_s is not None:
            ess_s = np.where(ess_s > 0, ess_s, np.nan)  # nothing to draw on a log axis
            unconverged = r.get("r_hat_max") is not None and r["r_hat_max"] > 1.1
            ax.bar(x, ess_s, width, label=name, hatch="//" if unconverged else None)
        paper = PAPER_ESS_PER_S.get(name)
        if paper is not None:
            ax.scatter(x, paper, marker="_", s=120, color="k", zorder=3)
    ax.scatter([], [], marker="_", s=120, color="k", label="thesis (2017)")
    ax.bar([0], [np.nan], color="w", edgecolor="k", hatch="//", label="R-hat > 1.1")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(NUM_PARAMS) + width * (len(names) - 1) / 2, PARAM_NAMES)
    ax.set_ylabel("bulk ESS per second")
    ax.set_title("Lotka–Volterra: sampling efficiency (compilation excluded)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ctx.save_figure("ess_per_s.png", fig)


def _fmt_means(r: dict) -> str:
    if any(v is None for v in r["posterior_mean"]):
        return "no draws"
    return ", ".join(
        f"{m:.3f} ± {s:.3f}" for m, s in zip(r["posterior_mean"], r["posterior_sd"], strict=True)
    )


def _method_rows(m: dict) -> list[dict]:
    """One table row per method block of the metrics."""
    rows = []
    for name, r in m.items():
        if not isinstance(r, dict):
            continue
        paper = PAPER_ESS_PER_S.get(name)
        err = r.get("mean_error_in_ref_sd")
        rows.append(
            {
                "method": name,
                "ESS/s (min)": r["ess_per_s_min"],
                "ESS/s per chain (min)": r.get("ess_per_chain_s_min"),
                "ESS min": r["ess_bulk_min"],
                "accept": r["accept_rate"],
                "R-hat max": r["r_hat_max"],
                "wall s": r["wall_s"],
                "compile s": r["compile_s"],
                "sims": r.get("n_simulations", "-"),
                "max |mean err| (ref sd)": max(err) if err and None not in err else "-",
                "paper ESS/s (min)": min(paper) if paper else "-",
            }
        )
    return rows


def report(m: dict) -> str:
    rows = _method_rows(m)
    table = diagnostics.format_table(rows, list(rows[0]))
    c = m["chmc"]
    means = "\n".join(
        f"| {p} | {np.log(t):.4f} | {a:.4f} ± {sa:.4f} | {b:.4f} ± {sb:.4f} |"
        for p, t, a, sa, b, sb in zip(
            PARAM_NAMES,
            TRUE_RATES,
            c["posterior_mean"],
            c["posterior_sd"],
            m["reference"]["posterior_mean"],
            m["reference"]["posterior_sd"],
            strict=True,
        )
    )
    abc_means = "\n".join(
        f"| {name} | {_fmt_means(r)} |"
        for name, r in m.items()
        if isinstance(r, dict) and name.startswith("abc_")
    )
    errors = ", ".join(f"{v:.3f}" for v in m["chmc_mean_error_in_ref_sd"])
    return f"""# Lotka–Volterra: constrained HMC vs baselines

```
{table}
```

ESS/s is the minimum over the 4 log-rates of the multi-chain bulk ESS per second of
sampling (warm-up included, compilation excluded); `sims` counts generator evaluations.
Paper (thesis) ESS/s: constrained HMC 3.13–3.24, ABC slice sampling (uniform, ε = 100)
0.99–1.20, ε = 10: 0.013–0.019, (Gaussian, ε = 10) 0.21–0.27, ABC-HMC (ε = 10)
0.067–0.101, on the authors' 2017 hardware, one chain at a time.

| parameter | true | CHMC mean ± sd | exact reference mean ± sd |
|---|---|---|---|
{means}

CHMC mean error in reference posterior sds: {errors}.
Constrained HMC: {c["n_transitions"]} transitions, {c["n_projection_failures"]} projection failures,
{c["n_irreversible"]} irreversible steps, {c["n_divergent"]} divergences, max constraint residual
{c["max_constraint_residual"]:.2e}, {c["ms_per_step"]:.2f} ms per integrator step per chain.

ABC baselines, posterior mean ± sd of (log z1, log z2, log z3, log z4). An ABC posterior
is not the exact one (ε > 0), and chains that have not converged show up here:

| method | mean ± sd |
|---|---|
{abc_means}
"""


def mean_error(r: dict, ref: dict) -> list:
    """|mean − reference mean| in reference sds, per log-rate (None without draws)."""
    if any(m is None for m in r["posterior_mean"]):
        return [None] * NUM_PARAMS
    gap = np.abs(np.subtract(r["posterior_mean"], ref["posterior_mean"]))
    return (gap / np.asarray(ref["posterior_sd"])).tolist()


def save_posterior(ctx: RunContext, draws: dict, attrs: dict) -> None:
    """Add one group per non-CHMC method to CHMC's ``posterior.nc`` (see module doc)."""
    import arviz as az

    path = ctx.path("posterior.nc")
    if path.exists():
        stored = az.from_netcdf(str(path))
        chmc_groups = ("posterior", "sample_stats", "observed_data")
        idata = az.InferenceData(
            **{g: getattr(stored, g).load() for g in stored.groups() if g in chmc_groups}
        )
    else:  # resumed run whose CHMC file was lost: keep its log-rates at least
        idata = az.from_dict(posterior={"log_rates": draws["chmc"]})
    groups = {}
    for name, d in draws.items():
        if name == "chmc" or d.shape[1] == 0:
            continue
        ds = az.convert_to_dataset({"log_rates": d}, dims={"log_rates": ["log_rates_dim_0"]})
        ds.attrs.update({k: v for k, v in attrs.get(name, {}).items() if v is not None})
        groups[name] = ds
    idata.add_groups(groups)
    ctx.save_with("posterior.nc", lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))
