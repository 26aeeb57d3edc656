"""Pose: constrained HMC against two HMC baselines on the binocular pose model.

``dgm run pose [--scene 1|2|3] [--config notebook|thesis|fast] [--preset smoke|quick|paper]``
conditions the pose generator (:mod:`dgm.models.pose`) on one of the notebook's three
scenes and runs, from the same prior starts:

* ``chmc``: constrained HMC on the 216-input manifold {u : f(u[:140]) + σ u[140:] = y};
* ``hmc``: HMC on the 140 latent inputs with the Gaussian likelihood of width σ (the same
  posterior, spec §4.2 note);
* ``hier``: HMC on the hierarchical state (log lengths, latent, r, camera) with the
  original energy, which omits the ½ Σ log var normaliser: **not the exact target**.

Settings (spec §6): ``notebook`` σ = 0.001, CHMC dt 0.1, S ~ U{10..15}, N_g 20, 10 chains
× 90; HMC dt 2e-4, L ~ U{100..150}, 2500; hierarchical dt 1e-4, L ~ U{100..150}, 2500.
``thesis`` σ = 0.01, CHMC dt 0.05, S ~ U{10..20}, N_g 8, 5 chains × 200; HMC dt 2e-4,
L ~ U{100..200}, 1200; hierarchical (not given by the thesis) as the notebook, 1200 draws.
``fast`` (ours, not the paper's): the thesis model and baselines, CHMC dt 0.1, S ~ U{10..20},
N_g 4, 5 chains × 600, from typical-set starts (:func:`dgm.inference.starts.typical_starts`:
4 prior draws per chain moved uphill on the manifold, far-below candidates dropped; their
wall time, compilation excluded, is added to every method's time axis). On scene 1, two
chains from prior draws at the thesis settings still had mean log densities of −25,000 and
−3,400 nats after 200 draws (chains from typical-set starts: +187, the truth +190), and
their running mean's RMSE was 0.041.
Starts (spec §3): the notebook set every non-noise input to 0, the thesis drew them from the
prior; CHMC completes a start with the noise inputs (y − f(z)) / σ, the baselines start at z
(the hierarchical one at the state z maps to). The presets scale the chain and draw counts.
``--set start=truth`` starts every chain at the true latent inputs instead (a check: where
such chains settle is the posterior mean's own distance from the truth).
The observation (``observation``): every setting conditions on the scene as the notebook
generated it, y = f(u[:140]) + 0.001 u[140:]; the thesis and fast settings then sample the
σ = 0.01 model given it. ``--set observation=model`` draws y from the setting's own
generator instead (0.01 u[140:]). With the notebook's observations the posterior mean lies
0.014 (scene 1) and 0.004 (scene 2) from the truth, below the thesis's final CHMC values
(0.0158, 0.0198), which its chains from prior starts approached from above; with
``observation=model`` it lies 0.023 and 0.014 from the truth, and scene 1's thesis value
would be below an exact sampler's reach. The thesis curves fit the first reading only.
``--set start=amortized`` draws each chain's start from an amortized posterior
(``dgm.amortize`` on the generator's joint density and simulator, ``amortize_steps``, then
``Amortized.refine`` on the scene, ``refine_steps``); its training and refinement seconds,
compilation excluded, are charged to every method's time axis as the typical-set search's are.

Outputs: ``metrics.json`` (per method: ``rmse_final``, ``rmse_at_s``, ``wall_s``,
``compile_s``, ``accept_rate``, ``ess_bulk_min``/``ess_bulk_median`` over the 57 joint
coordinates, ``s_per_chain``, and for CHMC the failure counts and the maximum constraint
residual), ``posterior.nc`` (CHMC's draws with ``positions``; groups ``hmc`` and ``hier``
with their ``positions``), ``rmse.png`` (the paper's figure: log RMSE of the running
posterior mean, homogeneous 1s included, against seconds per chain, with the thesis curves
in the thesis configuration), ``skeleton.png`` and ``report.md``.

The time axis: a chain's draws are spread evenly over its share of the sampling time
(``wall_s × devices / chains``), compilation excluded, after ``start_s``. With a thesis
curve, CHMC's metrics add ``s_below_thesis_final`` (first time below the thesis's final
CHMC RMSE) and ``s_below_baselines`` (the time after which it stays below both baselines).
"""

import dataclasses
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from dgm import diagnostics
from dgm.config import check_choice, check_positive
from dgm.data.pose import pose_generator, thesis_rmse_curve
from dgm.experiments import _pose_methods as methods
from dgm.experiments._pose_report import plot_rmse, plot_skeleton, report, save_posterior
from dgm.inference.base import chain_seconds
from dgm.models.pose import LATENT_DIM, SIGMA, scene_inputs
from dgm.runs import RunContext, write_text

NAME = "pose"
DESCRIPTION = "Constrained HMC vs HMC on the binocular human-pose model (Graham & Storkey)"
EXTRA_ARGS = {"scene": "scene", "config": "setting"}
METHODS = ("chmc", "hmc", "hier")
START_KINDS = ("zero", "prior", "typical", "amortized", "truth")


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
    step_size: float
    num_steps: tuple[int, int]
    num_samples: int
    num_geodesic_steps: int = 1  # constrained HMC only

    def __post_init__(self):
        check_positive("step_size", self.step_size)
        check_positive("num_samples", self.num_samples, integer=True)


SETTINGS = {
    "notebook": {
        "num_chains": 10,
        "chmc": SamplerConfig(0.1, (10, 15), 90, 20),
        "hmc": SamplerConfig(2e-4, (100, 150), 2500),
        "hier": SamplerConfig(1e-4, (100, 150), 2500),
    },
    "thesis": {
        "num_chains": 5,
        "chmc": SamplerConfig(0.05, (10, 20), 200, 8),
        "hmc": SamplerConfig(2e-4, (100, 200), 1200),
        "hier": SamplerConfig(1e-4, (100, 150), 1200),
    },
    # The thesis model (σ = 0.01) and baselines; constrained HMC with twice the step and
    # half the geodesic sub-steps (sub-step h = 0.025 instead of 0.00625: 3 quasi-Newton
    # iterations instead of 2, so a trajectory twice as long for about 60 % of the cost),
    # 600 draws, and typical-set starts shared by every method (module docstring).
    "fast": {
        "num_chains": 5,
        "chmc": SamplerConfig(0.1, (10, 20), 600, 4),
        "hmc": SamplerConfig(2e-4, (100, 200), 1200),
        "hier": SamplerConfig(1e-4, (100, 150), 1200),
    },
}
SIGMA_OF_SETTING = {"notebook": "notebook", "thesis": "thesis", "fast": "thesis"}
# what a run saved before a field existed did (dotted field -> value as --set takes it): runs
# started before `observation` drew the observation from the setting's generator (`--resume`
# of such a run needs `--set observation=model`)
FORMER_DEFAULTS = {"observation": "model"}


@dataclasses.dataclass(frozen=True)
class Config:
    scene: int = 1
    setting: str = "notebook"
    methods: tuple[str, ...] = METHODS
    num_chains: int = 0  # 0: the setting's
    draw_fraction: float = 1.0  # fraction of the setting's draws per chain, for presets
    start: str = ""  # one of START_KINDS; "": the setting's (see start_kind)
    # the scene's observation y: "notebook", the notebook's (its generator, σ = 0.001),
    # whatever σ the setting samples with; "model", drawn from the setting's own generator
    observation: str = "notebook"
    # start=amortized: dgm.amortize's training steps, then refinement steps on y_obs
    amortize_steps: int = 5000
    refine_steps: int = 1000
    chunk_size: int = 10
    rmse_times: tuple[float, ...] = (5.0, 15.0, 45.0, 150.0, 450.0)

    def __post_init__(self):
        if self.scene not in (1, 2, 3):
            raise ValueError(f"`scene` must be 1, 2 or 3; got {self.scene!r}")
        check_choice("setting", self.setting, tuple(SETTINGS))
        if not self.methods:
            raise ValueError(f"`methods` must name at least one of {list(METHODS)}; got ()")
        for m in self.methods:
            check_choice("methods", m, METHODS)
        check_positive("draw_fraction", self.draw_fraction)
        check_choice("start", self.start, ("", *START_KINDS))
        check_choice("observation", self.observation, ("notebook", "model"))
        check_positive("chunk_size", self.chunk_size, integer=True)
        check_positive("amortize_steps", self.amortize_steps, integer=True)
        check_positive("refine_steps", self.refine_steps, integer=True)

    def sampler(self, method: str) -> SamplerConfig:
        base = SETTINGS[self.setting][method]
        n = max(2, round(base.num_samples * self.draw_fraction))
        return dataclasses.replace(base, num_samples=n)

    @property
    def start_kind(self) -> str:
        """notebook: zero; thesis: prior draws; fast: typical-set starts; ``amortized``
        (any setting): draws of an amortized posterior refined on the scene. ``truth``
        (any setting, a check, not a method) starts every chain at the scene's true latent
        inputs: where the chains settle then is the posterior mean's own distance from the
        truth, whatever the starts."""
        default = {"notebook": "zero", "thesis": "prior", "fast": "typical"}[self.setting]
        return self.start or default

    @property
    def chains(self) -> int:
        return self.num_chains or SETTINGS[self.setting]["num_chains"]


PRESETS = {
    "paper": Config(),
    "quick": Config(num_chains=2, draw_fraction=0.1, chunk_size=5),
    "smoke": Config(num_chains=1, draw_fraction=0.002, chunk_size=2),
}


def running_rmse(positions: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per chain and draw: RMSE over the 76 homogeneous entries of the running mean."""
    counts = np.arange(1, positions.shape[1] + 1)[None, :, None, None]
    running = np.cumsum(positions, axis=1) / counts
    return np.sqrt(np.mean((running - truth) ** 2, axis=(2, 3)))


def score(
    res: methods.MethodResult, truth: np.ndarray, cfg: Config, start_s: float = 0.0
) -> tuple[dict, np.ndarray]:
    """Metrics of one method and its mean RMSE curve ``(draws, 2)``: (seconds, RMSE).

    The time of draw k is ``start_s`` (the wall time of finding the starts, charged whole
    to every chain) plus k/draws of the chain's share of the sampling time. The running
    means are over the draws after each transition: unlike the original's chains (and the
    thesis's curves, with a point at t = 0), the start is not a draw."""
    chains, draws = res.positions.shape[:2]
    per_chain_s = chain_seconds(res.wall_s, chains)
    rmse = running_rmse(res.positions, truth).mean(axis=0)  # averaged over chains
    times = start_s + per_chain_s * np.arange(1, draws + 1) / draws
    at = {}
    for t in cfg.rmse_times:
        k = np.searchsorted(times, t, side="right") - 1
        at[f"{t:g}"] = float(rmse[k]) if 0 <= k and t <= times[-1] else None
    spatial = res.positions[:, :, :3, :].reshape(chains, draws, -1)
    ess = diagnostics.summarize(spatial)["ess_bulk"] if draws >= 4 else np.full(57, np.nan)
    ess_ok = ess[np.isfinite(ess)]
    pooled = res.positions.reshape(-1, *res.positions.shape[2:]).mean(axis=0)
    metrics = {
        "rmse_final": float(rmse[-1]),
        # the RMSE of the mean of all chains' draws together (the chain average above
        # averages each chain's own RMSE)
        "rmse_pooled_mean": float(np.sqrt(np.mean((pooled - truth) ** 2))),
        "rmse_at_s": at,
        "wall_s": float(res.wall_s),
        "compile_s": float(res.compile_s),
        "s_per_chain": float(per_chain_s),
        "accept_rate": float(res.accept_rate),
        "ess_bulk_min": float(ess_ok.min()) if ess_ok.size else None,
        "ess_bulk_median": float(np.median(ess_ok)) if ess_ok.size else None,
        "num_chains": int(chains),
        "num_draws": int(draws),
        **res.extra,
    }
    return metrics, np.stack([times, rmse], axis=1)


def _run_method(name, gen, y_obs, starts, key, cfg: Config, ctx: RunContext):
    sampler = cfg.sampler(name)
    ckpt = ctx.checkpoint_path(f"{name}_chains")
    if name == "chmc":
        return methods.run_chmc(
            gen, y_obs, starts, key, sampler, cfg.chunk_size, ckpt, ctx.progress
        )
    y = np.asarray(y_obs, np.float64)
    if name == "hmc":
        energy = lambda u: methods.latent_energy(gen, u, y)  # noqa: E731
        x0, to_positions = starts, lambda u: gen.joint_positions(u)
    else:
        energy = lambda s: methods.hierarchical_energy(gen, s, y)  # noqa: E731
        with jax.enable_x64(True):
            to_state = jax.jit(jax.vmap(lambda u: methods.hierarchical_state(gen, u)))
            x0 = np.asarray(to_state(jnp.asarray(starts)))
        to_positions = lambda s: methods.hierarchical_positions(gen, s)  # noqa: E731
    draws, wall_s, compile_s, accept, extra = methods.run_hmc(
        energy,
        x0,
        key,
        sampler.step_size,
        tuple(sampler.num_steps),
        sampler.num_samples,
        cfg.chunk_size * 10,
        ckpt,
        ctx.progress,
    )
    positions = methods.batched_positions(to_positions, draws)
    return methods.MethodResult(positions, wall_s, compile_s, accept, extra, None)


def _run_or_resume(name, fn, ctx: RunContext):
    saved = ctx.load_checkpoint(f"method_{name}")
    if saved is not None and "result_json" in saved:
        r = json.loads(str(saved["result_json"]))
        return methods.MethodResult(
            saved["positions"], r["wall_s"], r["compile_s"], r["accept"], r["extra"], None
        )
    res = fn()
    if res.idata is not None:
        ctx.save_with("posterior.nc", lambda p: res.idata.to_netcdf(str(p), engine="h5netcdf"))
    info = {
        "wall_s": res.wall_s,
        "compile_s": res.compile_s,
        "accept": res.accept_rate,
        "extra": res.extra,
    }
    ctx.save_checkpoint(
        f"method_{name}", positions=res.positions, result_json=np.asarray(json.dumps(info))
    )
    return res


def typical_latent_starts(gen, y_obs, key, num_chains: int) -> tuple[np.ndarray, dict]:
    """Typical-set starts (:func:`dgm.inference.starts.typical_starts`: 4 prior draws per
    chain, each moved 30 steps uphill on the manifold, candidates far below the best
    dropped) on the constrained-HMC manifold; returns their 140 latent inputs (every
    method starts there) and ``{"start_s", "start_compile_s"}`` (wall seconds)."""
    from dgm.inference.starts import typical_starts

    system = methods.chmc_posterior(gen, y_obs).system
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        fn = jax.jit(lambda y, k: typical_starts(system, y, k, num_chains)[0])
        t0 = time.perf_counter()
        compiled = fn.lower(y, key).compile()
        t1 = time.perf_counter()
        u = np.asarray(compiled(y, key))
        t2 = time.perf_counter()
    return u[:, :LATENT_DIM], {"start_s": t2 - t1, "start_compile_s": t1 - t0}


def amortized_latent_starts(config: Config, gen, y_obs, key) -> tuple[np.ndarray, dict]:
    """Starts drawn from an amortized posterior: ``dgm.amortize`` on the generator's joint
    density and simulator (``config.amortize_steps``), refined on ``y_obs``
    (``config.refine_steps``), one draw per chain. ``{"start_s", "start_compile_s"}``:
    training and refinement seconds, compilation excluded, and their compilation."""
    import dgm
    from dgm.inference.additive_noise import AdditiveNoise

    noise = AdditiveNoise(gen.noise_free, LATENT_DIM, len(y_obs), float(gen.sigma))
    key_train, key_refine, key_draw = jax.random.split(key, 3)
    q = dgm.amortize(noise.log_joint, noise.simulate, LATENT_DIM, key=key_train,
                     num_steps=config.amortize_steps)  # fmt: skip
    if q.status == "interrupted":  # Ctrl-C: stop the run (dgm.amortize keeps the q so far)
        raise KeyboardInterrupt
    refined = q.refine(key_refine, y_obs, num_steps=config.refine_steps)
    if refined.status == "interrupted":
        raise KeyboardInterrupt
    draws = refined.sample(key_draw, y_obs, num_samples=config.chains).posterior["z"]
    info = {"start_s": q.wall_s + refined.wall_s,
            "start_compile_s": q.compile_s + refined.compile_s}  # fmt: skip
    return np.asarray(draws.values[0], np.float64), info


def latent_starts(config: Config, gen, y_obs, u_true, key, ctx: RunContext | None = None):
    """The chains' latent starts ``(chains, 140)`` of ``config.start_kind`` and
    ``{"start_s", "start_compile_s"}`` (the typical-set search's or the amortized
    posterior's wall seconds; else 0). ``gen``, ``y_obs`` and ``ctx`` (the starts'
    checkpoint) serve those two kinds only."""
    info = {"start_s": 0.0, "start_compile_s": 0.0}
    shape = (config.chains, LATENT_DIM)
    kind = config.start_kind
    if kind == "zero":  # the notebook: every non-noise input 0 (spec §3)
        return np.zeros(shape), info
    if kind == "truth":
        return np.broadcast_to(np.asarray(u_true[:LATENT_DIM]), shape).copy(), info
    if kind in ("typical", "amortized"):
        saved = None if ctx is None else ctx.load_checkpoint("starts")
        if saved is not None:
            return saved["starts"], json.loads(str(saved["info"]))
        if kind == "typical":
            starts, info = typical_latent_starts(gen, y_obs, key, config.chains)
        else:
            starts, info = amortized_latent_starts(config, gen, y_obs, key)
        if ctx is not None:
            ctx.save_checkpoint("starts", starts=starts, info=np.asarray(json.dumps(info)))
        return starts, info
    with jax.enable_x64(True):  # prior draws
        return np.asarray(jax.random.normal(key, shape, jnp.float64)), info


def scene_observation(config: Config, gen) -> np.ndarray:
    """The scene's 76 image coordinates f(u[:140]) + σ u[140:] at its inputs, from ``gen``
    (the setting's generator): σ = 0.001, the notebook generator's, or with
    ``observation="model"`` the setting's own."""
    sigma = SIGMA["notebook"] if config.observation == "notebook" else gen.sigma

    def observe(u):
        return gen.noise_free(u[:LATENT_DIM]) + sigma * u[LATENT_DIM:]

    with jax.enable_x64(True):
        return np.asarray(jax.jit(observe)(scene_inputs()[config.scene - 1]))


def run(config: Config, key, ctx: RunContext) -> dict:
    gen = pose_generator(SIGMA_OF_SETTING[config.setting])
    u_data = scene_inputs()
    y_obs = scene_observation(config, gen)
    with jax.enable_x64(True):
        u_true = jnp.asarray(u_data[config.scene - 1])
        truth = np.asarray(jax.jit(lambda u: gen.joint_positions(u))(u_true[:LATENT_DIM]))
        key_init, key_run = jax.random.split(key)
    starts, start_info = latent_starts(config, gen, y_obs, u_true, key_init, ctx)
    results, curves, positions = {}, {}, {}
    for i, name in enumerate(config.methods):
        k = jax.random.fold_in(key_run, i)
        t0 = time.perf_counter()
        res = _run_or_resume(
            name, lambda name=name, k=k: _run_method(name, gen, y_obs, starts, k, config, ctx), ctx
        )
        results[name], curves[name] = score(res, truth, config, start_info["start_s"])
        results[name]["total_s"] = time.perf_counter() - t0
        positions[name] = res.positions
    thesis = {}
    if config.setting in ("thesis", "fast") and config.scene in (1, 2):
        thesis = {m: thesis_rmse_curve(m, config.scene) for m in ("chmc", "hmc")}
    thesis_final = {m: float(c[-1, 1]) for m, c in thesis.items()}
    if "chmc" in curves:
        results["chmc"].update(_chmc_milestones(curves, thesis_final.get("chmc")))
    metrics = {
        **results,
        "scene": config.scene,
        "setting": config.setting,
        "sigma": gen.sigma,
        "observation": config.observation,
        "start": config.start_kind,
        **start_info,
        "thesis_rmse_final": thesis_final,
    }
    save_posterior(ctx, positions)
    plot_rmse(ctx, curves, thesis, config)
    plot_skeleton(ctx, gen, truth, y_obs, positions)
    write_text(ctx.path("report.md"), report(metrics))
    return metrics


def _chmc_milestones(curves: dict, thesis_final: float | None) -> dict:
    """``s_below_thesis_final``: the first time CHMC's chain-average RMSE is below the
    thesis's final CHMC RMSE (None: never, or no thesis curve). ``s_below_baselines``: the
    time after which CHMC's curve stays below every baseline's, over the times where all
    curves are defined (``s_compared_until``: the end of that range; the baselines are
    interpolated at CHMC's times); None if CHMC is not below them at its end."""
    times, rmse = curves["chmc"][:, 0], curves["chmc"][:, 1]
    out = {"s_below_thesis_final": None, "s_below_baselines": None, "s_compared_until": None}
    if thesis_final is not None and np.any(rmse < thesis_final):
        out["s_below_thesis_final"] = float(times[np.argmax(rmse < thesis_final)])
    others = [c for name, c in curves.items() if name != "chmc"]
    if not others:
        return out
    end = min(c[-1, 0] for c in others + [curves["chmc"]])
    inside = (times >= max(c[0, 0] for c in others)) & (times <= end)
    if not inside.any():
        return out
    above = np.zeros(len(times), bool)
    for curve in others:
        above |= inside & (rmse >= np.interp(times, curve[:, 0], curve[:, 1]))
    out["s_compared_until"] = float(times[inside][-1])
    if not above[np.flatnonzero(inside)[-1]]:
        out["s_below_baselines"] = float(times[np.flatnonzero(above)[-1]]) if above.any() else 0.0
    return out


def summary(metrics: dict) -> str:
    return report(metrics).split("```")[1].strip()
