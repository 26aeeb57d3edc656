"""Simulation-based calibration of constrained HMC: ``dgm run sbc --model NAME``.

Runs :func:`dgm.sbc` with its default sampler settings on one generator:

* ``mlp`` (default): the issue-16 generator ``u = [z (3) | n (3)]``,
  ``y = f(z) + 0.1 n`` with ``f`` a random 2-layer tanh MLP plus ``0.5 z``
  (:class:`~dgm.models.mlp_generator.MLPGenerator`), its generic dense Gram factor;
* ``lotka-volterra``: the stochastic predator–prey generator (4 log-rates + 2T noise
  inputs), with its structured Gram factor and closed-form log-determinant, its log-rates
  centred on the true ones with prior sd ``lv_prior_scale`` (0.1; under the paper's
  N(−2, 1) prior 199 of 200 simulations overflow). Prior draws whose simulation
  overflows are counted and skipped.

Writes ``metrics.json`` (p-values of the chi-square uniformity test per input and
derived quantity, skipped and failed replications with their indices, time),
``ranks.npz`` and ``rank_histograms.png``. ``--resume`` continues from the replications
checkpointed so far (every 10).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dgm.calibration import SBCResult, plot_rank_histograms, sbc
from dgm.config import check_choice, check_positive, check_positive_scalar
from dgm.runs import RunContext, save_npz, write_text

NAME = "sbc"
DESCRIPTION = "Simulation-based calibration of constrained HMC (Talts et al. 2018)"
EXTRA_ARGS = {"model": "model"}
MODELS = ("mlp", "lotka-volterra")
ALPHA = 0.01  # the target: every chi-square p-value above it
PLOTTED_INPUTS = 8  # rank histograms of at most this many inputs (plus derived quantities)


@dataclasses.dataclass(frozen=True)
class Config:
    model: str = "mlp"
    num_replications: int = 200
    num_ranks: int = 99
    thin: int = 4
    num_chains: int = 1
    num_warmup: int = 200
    num_bins: int = 10
    mlp_seed: int = 0
    lv_num_time_steps: int = 50
    # log-rates ~ N(log θ*, lv_prior_scale²): under the paper's N(−2, 1) prior 199 of 200
    # simulations overflow, which leaves nothing to calibrate
    lv_prior_scale: float = 0.1

    def __post_init__(self):
        check_choice("model", self.model, MODELS)
        names = ("num_replications", "num_ranks", "thin", "num_chains", "num_bins")
        for name in (*names, "lv_num_time_steps"):
            check_positive(name, getattr(self, name), integer=True)
        check_positive_scalar("lv_prior_scale", self.lv_prior_scale)


PRESETS = {
    "paper": Config(),
    "quick": Config(),
    "smoke": Config(num_replications=10, num_ranks=19, thin=1, num_warmup=20, num_bins=5),
}


def generator_of(config: Config) -> tuple:
    """``(generator, input_dim, derived, condition_kwargs, names)`` of the configured model."""
    if config.model == "mlp":
        from dgm.models.mlp_generator import MLPGenerator

        model = MLPGenerator.random(config.mlp_seed)
        k = model.latent_dim
        names = {"u": [f"z{i}" for i in range(k)] + [f"n{i}" for i in range(k)]}
        return model.generate, model.input_dim, {}, {}, names
    from dgm.models.lotka_volterra import NUM_PARAMS, TRUE_RATES, LotkaVolterra

    loc = jnp.log(jnp.asarray(TRUE_RATES))
    scale = config.lv_prior_scale

    class CentredLotkaVolterra(LotkaVolterra):
        """Rates exp(log θ* + scale · u_z); the structured Gram factor and the closed-form
        log-determinant go through ``rates``, so they stay exact."""

        def rates(self, u_z):
            return jnp.exp(loc.astype(u_z.dtype) + scale * u_z)

    model = CentredLotkaVolterra(num_steps=config.lv_num_time_steps)
    derived = {"log_rates": lambda u: loc.astype(u.dtype) + scale * u[:NUM_PARAMS]}
    condition_kwargs = {
        "gram_factor_fn": model.gram_factor,
        "half_log_det_fn": model.half_log_det_gram,  # (u, y_obs): serves every replication
    }
    names = {"log_rates": ["log θ1", "log θ2", "log θ3", "log θ4"]}
    return model.generate, model.input_dim, derived, condition_kwargs, names


def run(config: Config, key, ctx: RunContext) -> dict:
    generator, input_dim, derived, condition_kwargs, names = generator_of(config)
    done = _load_done(ctx)
    fresh: dict[int, tuple[dict, float]] = {}

    def on_replication(i, ranks, accept):
        fresh[i] = (ranks, accept)
        if len(fresh) % 10 == 0:
            _save_done(ctx, done | fresh)

    with jax.enable_x64(True):
        result = sbc(
            generator,
            input_dim,
            key,
            num_replications=config.num_replications,
            num_ranks=config.num_ranks,
            thin=config.thin,
            num_chains=config.num_chains,
            num_warmup=config.num_warmup,
            num_bins=config.num_bins,
            derived=derived,
            condition_kwargs=condition_kwargs,
            done=done,
            on_replication=on_replication,
        )
    _save_done(ctx, done | fresh)
    save_npz(ctx.path("ranks.npz"), indices=result.indices, **result.ranks)
    if result.indices.size:
        ctx.save_figure("rank_histograms.png", plot_rank_histograms(_plotted(result), names))
    metrics = {"model": config.model, **result.metrics()}
    p_all = [min(p) for p in metrics["p_values"].values() if p]
    metrics["uniform_at_0.01"] = bool(p_all) and min(p_all) > ALPHA
    p_adjusted = list(metrics["p_min_bonferroni"].values())
    metrics["uniform_at_0.01_bonferroni"] = bool(p_adjusted) and min(p_adjusted) > ALPHA
    write_text(ctx.path("report.md"), summary(metrics) + "\n")
    return metrics


def _plotted(result: SBCResult) -> SBCResult:
    ranks = dict(result.ranks)
    p_values = dict(result.p_values)
    ranks["u"], p_values["u"] = ranks["u"][:, :PLOTTED_INPUTS], p_values["u"][:PLOTTED_INPUTS]
    return dataclasses.replace(result, ranks=ranks, p_values=p_values)


def _load_done(ctx: RunContext) -> dict:
    saved = ctx.load_checkpoint("sbc_replications")
    if saved is None:
        return {}
    names = [k[len("ranks_") :] for k in saved if k.startswith("ranks_")]
    return {
        int(i): ({name: saved[f"ranks_{name}"][row] for name in names}, float(saved["accept"][row]))
        for row, i in enumerate(saved["indices"])
    }


def _save_done(ctx: RunContext, rows: dict) -> None:
    if not rows:
        return
    indices = np.array(sorted(rows))
    names = list(rows[int(indices[0])][0])
    arrays = {f"ranks_{n}": np.stack([rows[int(i)][0][n] for i in indices]) for n in names}
    accept = np.array([rows[int(i)][1] for i in indices])
    ctx.save_checkpoint("sbc_replications", indices=indices, accept=accept, **arrays)


def summary(metrics: dict) -> str:
    accept = metrics["accept_rate_mean"]
    accept = "-" if accept is None else f"{accept:.3f}"  # None: no replication ran
    lines = [
        f"SBC on {metrics['model']}: {metrics['num_replications_run']} replications, "
        f"L = {metrics['num_ranks']}, {metrics['num_bins']} bins, {metrics['wall_s']:.1f} s",
        f"skipped (non-finite simulation): {metrics['num_skipped_nonfinite']}; "
        f"failed: {len(metrics['failed'])}; mean acceptance {accept}",
    ]
    for name, p in metrics["p_values"].items():
        if p:
            lines.append(f"{name}: min p = {min(p):.4f} over {len(p)}")
    lines.append(f"uniform at p > {ALPHA}: {metrics['uniform_at_0.01']}")
    lines.append(
        f"uniform at p > {ALPHA} after Bonferroni's correction (p_min × number of p-values): "
        f"{metrics['uniform_at_0.01_bonferroni']}"
    )
    return "\n".join(lines)
