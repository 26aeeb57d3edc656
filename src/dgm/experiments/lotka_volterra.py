"""Lotka–Volterra: constrained HMC against ABC baselines and the exact posterior.

Conditions the stochastic predator–prey generator (4 log-rates + 100 noise inputs) on
the paper's observed sequence, runs constrained HMC at the paper's settings, the ABC
baselines of spec §5 on the same generator, and an exact-likelihood HMC reference on the
4 log-rates (exact because the noise is additive). Writes into the run directory:

* ``metrics.json``: one entry per method key (``chmc``, ``reference`` and
  ``abc_<name>`` for each name in ``config.abc.methods``, e.g. ``abc_slice_uniform_100``,
  ``abc_slice_uniform_10``, ``abc_slice_gaussian_10``, ``abc_hmc_10``,
  ``abc_pmmh_uniform_1000``, ``abc_pmmh_gaussian_100``, ``abc_rejection``; all names in
  :data:`ABC_METHODS`), each with ``ess_bulk_min``, ``ess_per_s_min`` (min bulk ESS over
  the 4 log-rates per second of sampling, compilation excluded: all chains pooled, over
  the wall time of all chains at once), ``ess_per_chain_s_min`` (the thesis's protocol:
  each chain's ESS over its share of the device time, averaged over chains), ``compile_s``,
  ``wall_s``, ``posterior_mean``, ``posterior_sd``, ``accept_rate``,
  ``mean_error_in_ref_sd``; ABC entries also ``n_simulations``.
* ``posterior.nc``: ArviZ InferenceData. CHMC's draws are the standard groups
  (``posterior`` with ``u`` and ``log_rates``, ``sample_stats``, ``observed_data``);
  every other method is one extra group named by its key (``reference``,
  ``abc_slice_uniform_100``, ...) holding ``log_rates`` with dims
  ``(chain, draw, log_rates_dim_0)`` and the settings as attributes. Read one with
  ``az.from_netcdf(path).abc_slice_uniform_100`` (``az.summary`` accepts it).
* ``report.md`` (a row per method), ``marginals.png`` and ``ess_per_s.png`` (the
  paper's ESS/s figure: bars per log-rate and method on a log scale, with the thesis's
  published values as black marks).
"""

import dataclasses
import functools
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

from dgm import diagnostics
from dgm.conditioning import condition
from dgm.config import check_positive
from dgm.data.lotka_volterra import observed_data
from dgm.experiments._lotka_volterra_abc import (
    ABC_METHODS,
    ABCConfig,
    ABCRunners,
    run_method,
)
from dgm.experiments._lotka_volterra_abc import DEFAULT_METHODS as DEFAULT_ABC_METHODS
from dgm.experiments._lotka_volterra_report import (
    PAPER_ESS_PER_S,
    PARAM_NAMES,
    mean_error,
    plot_ess,
    plot_marginals,
    report,
    save_posterior,
)
from dgm.inference import hmc
from dgm.inference.base import ChainRunner, chain_seconds
from dgm.models.lotka_volterra import NUM_PARAMS, TRUE_RATES, LotkaVolterra
from dgm.runs import RunContext, write_text

NAME = "lotka-volterra"
DESCRIPTION = "Constrained HMC vs ABC on the stochastic Lotka-Volterra model (Graham & Storkey)"
__all__ = [
    "ABC_METHODS",
    "PAPER_ESS_PER_S",
    "PARAM_NAMES",
    "ABCConfig",
    "CHMCConfig",
    "Config",
    "ReferenceConfig",
    "run",
]


@dataclasses.dataclass(frozen=True)
class CHMCConfig:
    step_size: float = 0.25
    num_steps: tuple[int, int] = (4, 8)
    num_geodesic_steps: int = 3
    num_chains: int = 10
    num_samples: int = 1000
    num_warmup: int = 10
    tol: float = 1e-8
    max_iters: int = 100
    chunk_size: int = 50
    # ½ log det(J Jᵀ) from the closed-form noise map (4×4) instead of the dense Gram
    # factor and its second-order gradient, and Gram solves by the banded inverse of the
    # noise block plus a 4×4 Woodbury solve (no 100×100 Cholesky); same dynamics, about
    # half the CPU. Its solves batch well, so the chains of a device then run vmapped.
    structured_log_det: bool = True
    # dual-averaging step size during the warm-up; the paper's runs keep step_size fixed
    adapt: bool = False

    def __post_init__(self):
        check_positive("chmc.step_size", self.step_size)
        for name in ("num_geodesic_steps", "num_chains", "num_samples", "max_iters", "chunk_size"):
            check_positive(f"chmc.{name}", getattr(self, name), integer=True)


@dataclasses.dataclass(frozen=True)
class ReferenceConfig:
    num_chains: int = 8
    num_samples: int = 10000
    num_warmup: int = 500
    step_size: float = 0.6
    num_steps: tuple[int, int] = (5, 10)

    def __post_init__(self):
        check_positive("reference.step_size", self.step_size)
        for name in ("num_chains", "num_samples"):
            check_positive(f"reference.{name}", getattr(self, name), integer=True)


@dataclasses.dataclass(frozen=True)
class Config:
    chmc: CHMCConfig = CHMCConfig()
    reference: ReferenceConfig = ReferenceConfig()
    abc: ABCConfig = ABCConfig()
    num_time_steps: int = 50


PRESETS = {
    "paper": Config(),
    "quick": Config(
        chmc=CHMCConfig(num_chains=4, num_samples=200),
        reference=ReferenceConfig(num_chains=4, num_samples=2000, num_warmup=200),
        # ABC: reduced draws; 3 chains (an odd count stays on one host device, so each
        # sampler compiles once instead of once per device: quick is compile-bound);
        # PMMH at ε = 1000 (nearly the prior) is left to the paper preset.
        abc=ABCConfig(
            methods=tuple(m for m in DEFAULT_ABC_METHODS if m != "pmmh_uniform_1000"),
            num_chains=3,
            slice_uniform_num_samples=2000,
            slice_gaussian_num_samples=3000,
            slice_num_warmup=200,
            pmmh_num_samples=20_000,
            pmmh_num_warmup=2000,
            hmc_num_samples=300,
            hmc_num_warmup=30,
            rejection_num_simulations=100_000,
        ),
    ),
    "smoke": Config(
        chmc=CHMCConfig(num_chains=2, num_samples=10, num_warmup=2, chunk_size=10),
        reference=ReferenceConfig(num_chains=2, num_samples=100, num_warmup=20),
        # Two ABC code paths (chains, rejection) keep the smoke test short; the other
        # samplers are covered by a `slow` test of every method.
        abc=ABCConfig(
            methods=("slice_uniform_100", "rejection"),
            num_chains=1,
            slice_uniform_num_samples=20,
            slice_gaussian_num_samples=20,
            slice_num_warmup=2,
            pmmh_num_samples=20,
            pmmh_num_warmup=2,
            hmc_num_samples=10,
            hmc_num_warmup=2,
            hmc_num_steps=(2, 3),
            rejection_num_simulations=10_000,
            rejection_epsilon=1e4,  # the paper's √1000 accepts nothing; smoke needs draws
        ),
    ),
}


def _per_chain_ess_per_s(log_rates: np.ndarray, wall_s: float) -> float | None:
    """The thesis's ESS/s: each chain's own bulk ESS over its share of the device time
    (``wall_s`` × devices / chains: the chains of a device share it), averaged over chains,
    worst log-rate. The pooled ``ess_per_s_min`` is about devices × this, and depends on how
    many chains share a device."""
    chains = log_rates.shape[0]
    if wall_s <= 0:
        return None
    per_chain_s = chain_seconds(wall_s, chains)
    ess = np.array([diagnostics.ess(log_rates[c : c + 1]) for c in range(chains)])
    return float(np.min(ess.mean(axis=0)) / per_chain_s)


def _method_metrics(log_rates, wall_s, compile_s, accept_rate, **extra) -> dict:
    summ = diagnostics.summarize(log_rates, wall_s)
    return {
        "ess_bulk_min": float(np.min(summ["ess_bulk"])),
        "ess_per_s_min": float(np.min(summ["ess_bulk"]) / wall_s) if wall_s > 0 else None,
        "ess_per_chain_s_min": _per_chain_ess_per_s(log_rates, wall_s),
        "ess_bulk": summ["ess_bulk"].tolist(),
        "r_hat_max": float(np.nanmax(summ["r_hat"])) if log_rates.shape[0] > 1 else None,
        "compile_s": float(compile_s),
        "wall_s": float(wall_s),
        "posterior_mean": summ["mean"].tolist(),
        "posterior_sd": summ["sd"].tolist(),
        "accept_rate": float(accept_rate),
        **extra,
    }


def run_chmc(
    cfg: CHMCConfig, model: LotkaVolterra, y_obs, key, ctx: RunContext
) -> tuple[dict, np.ndarray]:
    """Constrained HMC on the 104-d input manifold.

    Chains start as the paper's notebook did: u_z = 0.1·N(0, I) − 4 with the noise inputs
    in closed form. (Closed-form starts at prior draws of u_z are numerically unusable:
    the forward simulation amplifies rounding errors by about (1 + z₁)^50.)
    """
    posterior = condition(
        model.generate,
        y_obs,
        model.input_dim,
        derived={"log_rates": lambda u: u[:NUM_PARAMS] + model.prior_loc},
        init_fn=lambda k, y: model.input_on_manifold(
            0.1 * jax.random.normal(k, (NUM_PARAMS,), jnp.float64) - 4.0, y
        ),
        half_log_det_fn=model.half_log_det_gram if cfg.structured_log_det else None,
        gram_factor_fn=(model.gram_factor if cfg.structured_log_det else None),
    )
    idata = posterior.sample(
        key,
        num_chains=cfg.num_chains,
        num_samples=cfg.num_samples,
        num_warmup=cfg.num_warmup,
        step_size=cfg.step_size,
        num_steps=tuple(cfg.num_steps),
        trajectory="fixed",  # the paper's hand-tuned fixed-length setting
        num_geodesic_steps=cfg.num_geodesic_steps,
        tol=cfg.tol,
        max_iters=cfg.max_iters,
        chunk_size=cfg.chunk_size,
        chain_map="auto",  # vmap with the banded factor, map with the dense Cholesky
        adapt=cfg.adapt,
        progress_bar=ctx.progress,
        checkpoint=ctx.checkpoint_path("chmc_chains"),
    )
    if idata.posterior.attrs["interrupted"]:  # draws so far: its chain checkpoint is kept
        raise KeyboardInterrupt
    ctx.save_with("posterior.nc", lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))
    stats = idata.sample_stats
    attrs = idata.posterior.attrs
    metrics = _method_metrics(
        idata.posterior["log_rates"].values,
        attrs["wall_s"],
        attrs["compile_s"],
        stats["is_accepted"].values.mean(),
        max_constraint_residual=float(stats["constraint_residual"].values.max()),
        n_projection_failures=int(stats["projection_failed"].values.sum()),
        n_irreversible=int(stats["irreversible"].values.sum()),
        n_divergent=int(stats["diverging"].values.sum()),
        n_transitions=int(stats["is_accepted"].values.size),
        # each chain's device time over its steps; wall_s times warm-up too, so all the
        # steps it timed (n_steps_run, all chains'), not the kept draws'
        ms_per_step=1e3
        * chain_seconds(attrs["wall_s"], cfg.num_chains)
        * cfg.num_chains
        / float(attrs["n_steps_run"]),
    )
    return metrics, idata.posterior["log_rates"].values


def run_reference(
    cfg: ReferenceConfig, model: LotkaVolterra, y_obs, key, checkpoint=None
) -> tuple[dict, np.ndarray]:
    """HMC on the exact 4-d posterior of the log-rates, preconditioned by its Laplace fit.

    ``checkpoint``: ``.npz`` path for the chains; Ctrl-C raises ``KeyboardInterrupt``
    once the chunk in flight is saved there, and a later call resumes from it.
    """
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        logp = jax.jit(lambda v: model.log_posterior_params(v, y))
        grad = jax.jit(jax.grad(lambda v: -model.log_posterior_params(v, y)))
        start = np.log(np.asarray(TRUE_RATES)) - model.prior_loc  # only a starting guess
        fit = scipy.optimize.minimize(
            lambda v: -float(logp(v)),
            start,
            jac=lambda v: np.asarray(grad(v)),
            method="BFGS",
            options={"gtol": 1e-9},
        )
        hess = np.asarray(jax.jit(jax.hessian(lambda v: -logp(v)))(fit.x))
        cov = np.linalg.inv(hess)
        key_init, key_run = jax.random.split(key)

        @jax.jit  # one program: eager, each operation would compile one
        def starts(key):
            z = jax.random.normal(key, (cfg.num_chains, NUM_PARAMS), jnp.float64)
            u0 = jnp.asarray(fit.x)[None, :] + z @ jnp.linalg.cholesky(jnp.asarray(cov)).T
            return jax.vmap(lambda u: hmc.init(u, logp))(u0)

        states = starts(key_init)
        params = hmc.HMCParams(
            jnp.asarray(cfg.step_size, jnp.float64), jnp.asarray(cov), *cfg.num_steps
        )
        total = cfg.num_warmup + cfg.num_samples
        result = ChainRunner(hmc.build_kernel(logp), chunk_size=min(1000, total)).run(
            jax.random.split(key_run, cfg.num_chains), states, params, total, checkpoint=checkpoint
        )
    if result.interrupted:
        raise KeyboardInterrupt
    draws = result.draws[:, cfg.num_warmup :] + model.prior_loc
    accept = result.infos.is_accepted[:, cfg.num_warmup :].mean()
    return _method_metrics(draws, result.wall_s, result.compile_s, accept), draws


def run_abc(
    name: str, runners: ABCRunners, key, ctx: RunContext, epsilon=None
) -> tuple[dict, np.ndarray, dict]:
    """One ABC baseline: its metrics, the draws to store, and the group's attributes."""
    res = run_method(
        name,
        runners,
        key,
        epsilon=epsilon,
        progress=ctx.progress,
        checkpoint=ctx.checkpoint_path(f"abc_{name}_chains"),
    )
    if res.log_rates.shape[1] < 2:  # rejection ABC that accepted (almost) nothing
        metrics = _no_draws_metrics(res)
    else:
        metrics = _method_metrics(
            res.log_rates, res.wall_s, res.compile_s, res.accept_rate, **res.extra
        )
    return metrics, res.stored, res.attrs


def _no_draws_metrics(res) -> dict:
    n = res.log_rates.shape[1]
    return {
        "ess_bulk_min": float(n),
        "ess_per_s_min": n / res.wall_s if res.wall_s > 0 else None,
        "ess_per_chain_s_min": None,
        "ess_bulk": [float(n)] * NUM_PARAMS,
        "r_hat_max": None,
        "compile_s": res.compile_s,
        "wall_s": res.wall_s,
        "posterior_mean": [None] * NUM_PARAMS,
        "posterior_sd": [None] * NUM_PARAMS,
        "accept_rate": res.accept_rate,
        **res.extra,
    }


def run(config: Config, key, ctx: RunContext) -> dict:
    model = LotkaVolterra(num_steps=config.num_time_steps)
    y_obs, diff = observed_data(model, check=config.num_time_steps == 50)
    key_chmc, key_ref, key_abc = jax.random.split(key, 3)
    results: dict[str, dict] = {}
    draws: dict[str, np.ndarray] = {}
    attrs: dict[str, dict] = {"reference": {"sampler": "hmc_exact_likelihood"}}
    abc_runners = ABCRunners(model, y_obs, config.abc)
    runners = {
        "chmc": lambda: run_chmc(config.chmc, model, y_obs, key_chmc, ctx),
        "reference": lambda: run_reference(
            config.reference, model, y_obs, key_ref, ctx.checkpoint_path("reference_chains")
        ),
    }
    for i, name in enumerate(config.abc.methods):
        k = jax.random.fold_in(key_abc, i)
        eps = config.abc.rejection_epsilon if name == "rejection" else None
        runners[f"abc_{name}"] = functools.partial(run_abc, name, abc_runners, k, ctx, eps)
    for name, fn in runners.items():
        results[name], draws[name], attrs[name] = _run_or_resume(name, fn, ctx, attrs.get(name, {}))
    ref = results["reference"]
    for name, r in results.items():
        if name != "reference":
            r["mean_error_in_ref_sd"] = mean_error(r, ref)
    metrics = {
        **results,
        "true_log_rates": np.log(TRUE_RATES).tolist(),
        "observed_data_max_diff_vs_thesis": diff,
        "chmc_mean_error_in_ref_sd": results["chmc"]["mean_error_in_ref_sd"],
    }
    save_posterior(ctx, draws, attrs)
    plot_marginals(ctx, draws, ref)
    plot_ess(ctx, results)
    write_text(ctx.path("report.md"), report(metrics))
    return metrics


def _run_or_resume(name: str, fn, ctx: RunContext, attrs: dict):
    """``(metrics, draws, attrs)`` of one method: from its checkpoint when resuming a run
    that finished it, else by running ``fn`` and checkpointing the result.

    Raises:
        KeyboardInterrupt: when the method was interrupted (its chain checkpoint is kept,
            and the CLI prints its one line and exits 130).
    """
    saved = ctx.load_checkpoint(f"method_{name}")
    if saved is not None and "metrics_json" in saved:
        attrs = json.loads(str(saved["attrs_json"])) if "attrs_json" in saved else {}
        return json.loads(str(saved["metrics_json"])), saved["log_rates"], attrs
    t0 = time.perf_counter()
    out = fn()
    metrics, draws = out[:2]
    attrs = out[2] if len(out) > 2 else attrs
    metrics["total_s"] = time.perf_counter() - t0
    ctx.save_checkpoint(
        f"method_{name}",
        log_rates=draws,
        metrics_json=np.asarray(json.dumps(metrics)),
        attrs_json=np.asarray(json.dumps(attrs)),
    )
    return metrics, draws, attrs


def summary(metrics: dict) -> str:
    return report(metrics).split("```")[1].strip()
