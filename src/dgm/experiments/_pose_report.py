"""Outputs of the pose experiment: posterior file, RMSE figure, skeleton figure, report."""

import numpy as np

from dgm import diagnostics
from dgm.experiments._pose_methods import POSITION_DIMS
from dgm.runs import RunContext

LABELS = {
    "chmc": "constrained HMC",
    "hmc": "HMC (140 inputs)",
    "hier": "HMC (hierarchical, inexact)",
}


def save_posterior(ctx: RunContext, positions: dict) -> None:
    """CHMC's ``posterior.nc`` plus one group per baseline holding its ``positions``."""
    import arviz as az

    path = ctx.path("posterior.nc")
    if path.exists():
        stored = az.from_netcdf(str(path))
        keep = ("posterior", "sample_stats", "observed_data")
        idata = az.InferenceData(
            **{g: getattr(stored, g).load() for g in stored.groups() if g in keep}
        )
    else:  # CHMC not run (or its file lost on resume)
        idata = az.InferenceData()
    dims = {"positions": list(POSITION_DIMS)}
    groups = {
        name: az.convert_to_dataset({"positions": p}, dims=dims)
        for name, p in positions.items()
        if name != "chmc" or "posterior" not in idata.groups()
    }
    if groups:  # none when CHMC ran alone
        idata.add_groups(groups)
    ctx.save_with("posterior.nc", lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))


def plot_rmse(ctx: RunContext, curves: dict, thesis: dict, config) -> None:
    """log RMSE of the running posterior mean against seconds per chain (the paper's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for k, (name, c) in enumerate(curves.items()):
        ax.plot(c[:, 0], c[:, 1], color=f"C{k}", label=f"{LABELS[name]} (ours)")
    for name, c in thesis.items():
        ax.plot(
            c[:, 0],
            c[:, 1],
            color="k",
            ls="--" if name == "chmc" else ":",
            label=f"{LABELS[name]} (thesis)",
        )
    ax.set_yscale("log")
    ax.set_xlabel("sampling time per chain (s)")
    ax.set_ylabel("RMSE of posterior mean joints")
    ax.set_title(f"pose, scene {config.scene}, {config.setting} setting")
    ax.legend(fontsize=8)
    ctx.save_figure("rmse.png", fig)


def plot_skeleton(
    ctx: RunContext, gen, truth, y_obs, positions: dict, num_samples: int = 5
) -> None:
    """The true pose with posterior draws (3-D), and both camera views with the data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    from dgm.bvh.render import plot_pose_2d, plot_pose_3d, set_equal_3d

    pairs = gen.output_bones()
    cams = len(y_obs) // 38
    fig = plt.figure(figsize=(4 * (1 + cams), 4))
    ax = fig.add_subplot(1, 1 + cams, 1, projection="3d")
    plot_pose_3d(ax, truth[:3].T, pairs, color="k", lw=2.5)
    shown = [truth[:3].T]
    handles = [Line2D([], [], color="k", lw=2.5, label="truth")]
    for k, (name, p) in enumerate(positions.items()):
        handles.append(Line2D([], [], color=f"C{k}", lw=1, label=LABELS.get(name, name)))
        flat = p.reshape(-1, 4, 19)
        for s in flat[np.linspace(len(flat) // 2, len(flat) - 1, num_samples).astype(int)]:
            plot_pose_3d(ax, s[:3].T, pairs, color=f"C{k}", lw=1, alpha=0.5, points=False)
            shown.append(s[:3].T)
    set_equal_3d(ax, np.concatenate(shown))
    ax.set_title("truth and late draws")
    fig.legend(handles=handles, fontsize=7, loc="lower left", ncol=2, frameon=False)
    fig.subplots_adjust(bottom=0.2)
    images = np.asarray(y_obs).reshape(cams, 2, 19)
    for c in range(cams):
        ax2 = fig.add_subplot(1, 1 + cams, 2 + c)
        plot_pose_2d(ax2, images[c], pairs, color="k")
        ax2.set_title(f"camera {c + 1} (observed)")
        ax2.xaxis.set_major_locator(plt.MaxNLocator(2))
    ctx.save_figure("skeleton.png", fig)


def report(m: dict) -> str:
    names = [k for k in LABELS if k in m]
    rows = [
        {
            "method": k,
            "rmse_final": m[k]["rmse_final"],
            "s/chain": m[k]["s_per_chain"],
            "compile_s": m[k]["compile_s"],
            "accept": m[k]["accept_rate"],
            "ess_min": m[k]["ess_bulk_min"] if m[k]["ess_bulk_min"] is not None else float("nan"),
            "draws": m[k]["num_draws"],
        }
        for k in names
    ]
    table = diagnostics.format_table(rows, list(rows[0]))
    at = "\n".join(
        f"| {k} | "
        + " | ".join("—" if v is None else f"{v:.4g}" for v in m[k]["rmse_at_s"].values())
        + " |"
        for k in names
    )
    times = " | ".join(f"{t} s" for t in m[names[0]]["rmse_at_s"])
    extra = ""
    if "chmc" in m:
        c = m["chmc"]
        extra = (
            f"Constrained HMC: {c['n_projection_failures']} projection failures, "
            f"{c['n_irreversible']} irreversible steps, {c['n_divergent']} divergences in "
            f"{c['n_transitions']} transitions; max constraint residual "
            f"{c['max_constraint_residual']:.2g}."
        )
    thesis = ", ".join(f"{k} {v:.4g}" for k, v in m.get("thesis_rmse_final", {}).items())
    setting = f"{m['setting']} setting, σ = {m['sigma']}, {m['observation']} observation"
    return f"""# Pose, scene {m["scene"]} ({setting})

```
{table}
```

RMSE of the running posterior mean over the 76 homogeneous joint entries (chain average),
at seconds of sampling per chain:

| method | {times} |
|---|{"---|" * len(m[names[0]]["rmse_at_s"])}
{at}

{extra}
Thesis final RMSE (≈450 s per chain, 2017 hardware): {thesis or "no curve for this scene/setting"}.
The hierarchical baseline omits a normaliser: its target is not the posterior.
"""
