"""A user's ODE simulator, conditioned with the defaults: ``dgm run ode-predator-prey``.

The generator (:class:`~dgm.models.ode_predator_prey.PredatorPreyODE`) solves a
deterministic predator–prey ODE by RK4 and multiplies each of its 2K observations by
log-normal noise, an explicit input: 4 rate inputs + 20 noise inputs, 20 outputs. It is
conditioned on data simulated at the true rates exactly as a new user would: the generic
dense Gram factor, the default (typical-set) starts and step-size adaptation. The
reference is NUTS (``dgm.sample``) on the equivalent explicit likelihood
log y ~ N(log x(θ), σ²) over the 4 rate inputs, run long.

Why this model: log-normal noise keeps populations positive (additive noise on an ODE
solution does not), its explicit likelihood is exact (so the reference is exact up to
Monte Carlo error), and it is the setup of issue 16's timing (there with 2,000 RK4
sub-steps; here 20 per unit time, 200 in all, so the quick preset fits in 2 minutes).

Writes ``metrics.json`` (per method: posterior mean and sd of the rate inputs, bulk ESS,
R-hat, acceptance, times: ``wall_s`` is warm-up and sampling, compilation excluded, for both
methods, ``ess_per_s_min`` the min bulk ESS over it; for CHMC also ``mean_error_in_ref_sd``
and ``sd_ratio`` against the reference and the chain-agreement attributes), ``posterior.nc``
(CHMC's ArviZ data), ``report.md``, ``marginals.png`` and ``trace.png``.
"""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgm import diagnostics
from dgm.conditioning import condition
from dgm.config import check_positive
from dgm.inference.base import chain_seconds
from dgm.models.ode_predator_prey import NUM_PARAMS, PredatorPreyODE
from dgm.runs import RunContext, write_text
from dgm.sampling import sample

NAME = "ode-predator-prey"
DESCRIPTION = "Constrained HMC on an RK4 predator-prey ODE with log-normal noise vs NUTS"
PARAM_NAMES = ["u_θ1", "u_θ2", "u_θ3", "u_θ4"]


@dataclasses.dataclass(frozen=True)
class Config:
    num_chains: int = 4
    num_samples: int = 1000
    num_warmup: int = 300
    ref_num_chains: int = 4
    ref_num_samples: int = 10000
    ref_num_warmup: int = 1000
    num_obs_times: int = 10
    substeps: int = 20
    data_seed: int = 0

    def __post_init__(self):
        for f in dataclasses.fields(self):
            if f.name != "data_seed":
                check_positive(f.name, getattr(self, f.name), integer=True)


PRESETS = {
    "paper": Config(),
    "quick": Config(num_samples=300, num_warmup=200, ref_num_samples=2000, ref_num_warmup=300),
    "smoke": Config(
        num_chains=2,
        num_samples=20,
        num_warmup=10,
        ref_num_chains=2,
        ref_num_samples=100,
        ref_num_warmup=150,
        num_obs_times=4,
        substeps=5,
    ),  # fmt: skip
}


def _metrics(draws: np.ndarray, wall_s: float, compile_s: float, accept: float) -> dict:
    summ = diagnostics.summarize(draws, wall_s)
    return {
        "posterior_mean": summ["mean"].tolist(),
        "posterior_sd": summ["sd"].tolist(),
        "ess_bulk_min": float(np.min(summ["ess_bulk"])),
        "ess_per_s_min": float(np.min(summ["ess_bulk"]) / wall_s) if wall_s > 0 else None,
        "r_hat_max": float(np.nanmax(summ["r_hat"])) if draws.shape[0] > 1 else None,
        "accept_rate": float(accept),
        "wall_s": float(wall_s),
        "compile_s": float(compile_s),
    }


def run_chmc(cfg: Config, model: PredatorPreyODE, y_obs, key, ctx: RunContext):
    posterior = condition(model.generate, y_obs, model.input_dim)
    idata = posterior.sample(
        key,
        num_chains=cfg.num_chains,
        num_samples=cfg.num_samples,
        num_warmup=cfg.num_warmup,
        progress_bar=ctx.progress,
        checkpoint=ctx.checkpoint_path("chmc_chains"),
    )
    if idata.posterior.attrs["interrupted"]:
        raise KeyboardInterrupt
    ctx.save_with("posterior.nc", lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))
    attrs, stats = idata.posterior.attrs, idata.sample_stats
    draws = idata.posterior["u"].values[..., :NUM_PARAMS]
    accept = float(stats["is_accepted"].values.mean())
    metrics = _metrics(draws, float(attrs["wall_s"]), float(attrs["compile_s"]), accept)
    metrics |= {
        "step_size": float(attrs["step_size"]),
        "n_projection_failures": int(stats["projection_failed"].values.sum()),
        "max_constraint_residual": float(stats["constraint_residual"].values.max()),
        "chains_disagree": int(attrs["chains_disagree"]),
        # wall_s timed warm-up too, so all its steps (sample_stats counts the kept draws');
        # per chain on its device, as lotka-volterra's: the chains share the devices
        "ms_per_step": 1e3
        * chain_seconds(attrs["wall_s"], cfg.num_chains)
        * cfg.num_chains
        / float(attrs["n_steps_run"]),
    }
    return metrics, draws


def run_reference(cfg: Config, model: PredatorPreyODE, y_obs, key, ctx: RunContext):
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        idata = sample(
            lambda v: model.log_posterior_params(v, y),
            jnp.zeros(NUM_PARAMS, jnp.float64),
            key=key,
            num_warmup=cfg.ref_num_warmup,
            num_samples=cfg.ref_num_samples,
            num_chains=cfg.ref_num_chains,
            progress_bar=ctx.progress,
        )
    if idata.posterior.attrs["interrupted"]:  # the draws so far: stop, as for CHMC
        raise KeyboardInterrupt
    draws = idata.posterior["x"].values
    attrs = idata.posterior.attrs
    accept = float(idata.sample_stats["acceptance_rate"].mean())
    # warm-up included, as constrained HMC's wall_s (dgm.sample's wall_s is sampling only)
    wall = float(attrs["wall_s"]) + float(attrs["warmup_s"])
    compile_s = float(attrs["compile_s"])
    return _metrics(draws, wall, compile_s, accept), draws


def run(config: Config, key, ctx: RunContext) -> dict:
    model = PredatorPreyODE(num_obs_times=config.num_obs_times, substeps=config.substeps)
    u_true, y_obs = model.observe(config.data_seed)
    key_chmc, key_ref = jax.random.split(key)
    results, draws = {}, {}
    for name, fn in (
        ("reference", lambda: run_reference(config, model, y_obs, key_ref, ctx)),
        ("chmc", lambda: run_chmc(config, model, y_obs, key_chmc, ctx)),
    ):
        results[name], draws[name] = _run_or_resume(name, fn, ctx)
    ref, chmc = results["reference"], results["chmc"]
    ref_sd = np.asarray(ref["posterior_sd"])
    err = (np.asarray(chmc["posterior_mean"]) - np.asarray(ref["posterior_mean"])) / ref_sd
    chmc["mean_error_in_ref_sd"] = err.tolist()
    chmc["sd_ratio"] = (np.asarray(chmc["posterior_sd"]) / ref_sd).tolist()
    metrics = {**results, "true_u_theta": u_true[:NUM_PARAMS].tolist(), "y_obs": y_obs.tolist()}
    _plot(ctx, draws)
    write_text(ctx.path("report.md"), report(config, metrics))
    return metrics


RATES = ("θ₁ prey growth", "θ₂ predation", "θ₃ predator death", "θ₄ predator growth")


def report(config: Config, m: dict) -> str:
    """``report.md``: the rate inputs u_θ (θ = exp(prior_loc + 0.5 u_θ)) per method, and
    each method's run."""
    chmc, ref = m["chmc"], m["reference"]
    lines = [
        f"# {NAME}",
        "",
        f"An RK4 predator–prey ODE ({config.substeps} sub-steps per unit time) observed at "
        f"t = 1, …, {config.num_obs_times} with log-normal noise, conditioned on data simulated "
        f"at the true rates (data seed {config.data_seed}): constrained HMC on all "
        f"{NUM_PARAMS + 2 * config.num_obs_times} inputs against NUTS on the explicit "
        "likelihood of the 4 rate inputs (the reference). Rows: the rate inputs u_θ, "
        "θ = exp(prior_loc + 0.5 u_θ).",
        "",
        "| rate input | true | reference mean (sd) | CHMC mean (sd) | CHMC mean error "
        "(reference sd) | CHMC sd / reference sd |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(RATES):
        lines.append(
            f"| {name} | {m['true_u_theta'][i]:.3f} | {ref['posterior_mean'][i]:.3f} "
            f"({ref['posterior_sd'][i]:.3f}) | {chmc['posterior_mean'][i]:.3f} "
            f"({chmc['posterior_sd'][i]:.3f}) | {chmc['mean_error_in_ref_sd'][i]:+.2f} | "
            f"{chmc['sd_ratio'][i]:.2f} |"
        )
    lines += [
        "",
        "| method | chains × draws | ESS min | R-hat max | accept | wall s (warm-up and "
        "sampling) | compile s |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, r, (chains, draws) in (
        ("constrained HMC", chmc, (config.num_chains, config.num_samples)),
        ("NUTS (reference)", ref, (config.ref_num_chains, config.ref_num_samples)),
    ):
        rhat = "–" if r["r_hat_max"] is None else f"{r['r_hat_max']:.3f}"
        lines.append(
            f"| {label} | {chains} × {draws} | {r['ess_bulk_min']:.0f} | {rhat} | "
            f"{r['accept_rate']:.2f} | {r['wall_s']:.1f} | {r['compile_s']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _run_or_resume(name: str, fn, ctx: RunContext):
    """``(metrics, draws)`` from the method's checkpoint when resuming, else by running it."""
    saved = ctx.load_checkpoint(f"method_{name}")
    if saved is not None:
        return json.loads(str(saved["metrics_json"])), saved["draws"]
    start = time.perf_counter()
    metrics, draws = fn()
    metrics["total_s"] = time.perf_counter() - start
    ctx.save_checkpoint(f"method_{name}", draws=draws, metrics_json=np.asarray(json.dumps(metrics)))
    return metrics, draws


def _plot(ctx: RunContext, draws: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, NUM_PARAMS, figsize=(4 * NUM_PARAMS, 3.2))
    for i, ax in enumerate(axes):
        for name, d in draws.items():
            ax.hist(d[..., i].reshape(-1), bins=40, density=True, histtype="step", label=name)
        ax.set_xlabel(PARAM_NAMES[i])
    axes[-1].legend()
    fig.tight_layout()
    ctx.save_figure("marginals.png", fig)
    fig, axes = plt.subplots(NUM_PARAMS, 1, figsize=(8, 1.8 * NUM_PARAMS), sharex=True)
    for i, ax in enumerate(axes):
        for c, chain in enumerate(draws["chmc"][..., i]):
            ax.plot(chain, linewidth=0.5, label=f"chain {c}")
        ax.set_ylabel(PARAM_NAMES[i])
    axes[-1].set_xlabel("draw (constrained HMC)")
    fig.tight_layout()
    ctx.save_figure("trace.png", fig)


def summary(metrics: dict) -> str:
    chmc, ref = metrics["chmc"], metrics["reference"]
    lines = [f"{'':10s} {'mean':>30s} {'sd':>30s} {'ESS min':>8s} {'R-hat':>6s} {'wall s':>7s}"]
    for name, r in (("chmc", chmc), ("reference", ref)):
        mean = " ".join(f"{v:7.3f}" for v in r["posterior_mean"])
        sd = " ".join(f"{v:7.3f}" for v in r["posterior_sd"])
        rhat = r["r_hat_max"] if r["r_hat_max"] is not None else float("nan")
        lines.append(
            f"{name:10s} {mean:>30s} {sd:>30s} {r['ess_bulk_min']:8.0f} {rhat:6.3f} "
            f"{r['wall_s']:7.1f}"
        )
    err = " ".join(f"{v:+.2f}" for v in chmc["mean_error_in_ref_sd"])
    lines.append(f"CHMC mean error in reference sd: {err}")
    lines.append(f"CHMC sd / reference sd: {' '.join(f'{v:.2f}' for v in chmc['sd_ratio'])}")
    return "\n".join(lines)
