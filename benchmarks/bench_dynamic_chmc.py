"""Dynamic constrained HMC on Lotka–Volterra: vs the paper's fixed-length setting, vs Mici.

Three samplers on the stochastic Lotka–Volterra generator (104 inputs, 100 outputs)
conditioned on the paper's data, from the same kind of start (log-rates near −4, the noise
in closed form; ``bench_chmc.lv_starts``), one JSON line each:

* ``fixed``: dgm's constrained HMC at the paper's hand-tuned setting (step 0.25, 4...8
  steps, N_g = 3), no adaptation: what the LV experiment runs.
* ``dynamic``: dgm's dynamic (no-U-turn) constrained HMC, ``condition(...).sample(...,
  trajectory="dynamic")``, after ``--warmup`` iterations of step-size adaptation (dual
  averaging to acceptance 0.8, :func:`dgm.inference.adaptation.warmup` with
  ``metric="none"``, each chain on its own; the chains then sample with the median of the
  adapted step sizes).
* ``mici``: Mici 0.4's ``DynamicMultinomialHMC`` with ``ConstrainedLeapfrogIntegrator``
  (same N_g, tolerances, max depth 10) and its ``DualAveragingStepSizeAdapter`` (target
  0.8), its defaults otherwise, the constraint and its derivatives given as ``jax.jit``
  functions (``bench_chmc.lv_mici_system``), one chain in its Python loop.

dgm spreads its chains over two host devices (as ``bench_chmc``). ``min_ess_per_s``: the
worst log-rate's bulk ESS over the sampling time (compilation excluded);
``min_ess_per_s_with_warmup`` also counts the warm-up time. dgm's ``ms_per_step`` is per
chain and per core (wall time × devices / integrator steps).

``--mode sample`` times the user's path instead: three ``condition(...).sample`` calls,
each one compiled run of warm-up and sampling, the time counting both (compilation
excluded): ``paper`` (the fixed setting above, no warm-up), ``fixed_adapt`` (fixed length
4...8 steps, ``num_warmup=--warmup, adapt=True``) and ``dynamic_adapt`` (``trajectory=
"dynamic"``, ``num_warmup=--warmup, adapt=True``), ``--repeats`` times interleaved;
``min_ess_per_s`` is over the whole call, and ratios against ``paper`` and ``fixed_adapt``.

Run:  python benchmarks/bench_dynamic_chmc.py [--chains 8] [--draws 500] [--warmup 200]
      python benchmarks/bench_dynamic_chmc.py --mode sample [--chains 8] [--draws 1000]
          [--warmup 500] [--repeats 3]
"""

import argparse
import statistics
import time

import bench_chmc  # noqa: F401  (two host devices and float64, set before JAX starts)
import jax
import jax.numpy as jnp
import numpy as np
from bench_chmc import emit, lv_mici_system, lv_posterior, lv_setup, lv_starts, min_ess

from dgm.inference import dynamic_chmc
from dgm.inference.adaptation import warmup
from dgm.inference.base import device_groups
from dgm.models.lotka_volterra import NUM_PARAMS

PAPER = dict(step_size=0.25, num_steps=(4, 8))


def adapt(posterior, key, init, num_warmup, num_geodesic_steps, chain_map):
    """Step-size warm-up per chain, chains split over the devices: (positions, step sizes,
    seconds, compile seconds, mean acceptance statistic over the second half). Dual
    averaging starts from the paper's step size (no initial search: it would compile a
    second copy of the kernel)."""
    kernel = dynamic_chmc.dynamic_constrained_hmc(
        posterior.system, posterior.y_obs, PAPER["step_size"], num_geodesic_steps=num_geodesic_steps
    )

    def one(key, u):
        state = kernel.init(u)
        out = warmup(key, kernel, state, num_warmup, metric="none", find_initial_step_size=False)
        return out.state.position, out.params.step_size, out.infos.accept_prob

    mapped = (
        jax.vmap(one)
        if chain_map == "vmap"
        else (lambda k, u: jax.lax.map(lambda a: one(*a), (k, u)))
    )
    fn = jax.jit(mapped)
    keys = jax.random.split(key, init.shape[0])
    groups = device_groups(init.shape[0])
    args = [jax.device_put((keys[idx], jnp.asarray(init[idx])), d) for d, idx in groups]
    t0 = time.perf_counter()
    exes = [fn.lower(*a).compile() for a in args]
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    outs = jax.block_until_ready([exe(*a) for exe, a in zip(exes, args, strict=True)])
    seconds = time.perf_counter() - t0
    u = np.concatenate([np.asarray(o[0]) for o in outs])
    eps = np.concatenate([np.asarray(o[1]) for o in outs])
    accept = np.concatenate([np.asarray(o[2]) for o in outs])
    return u, eps, seconds, compile_s, float(accept[:, -num_warmup // 2 :].mean())


def run_dgm(posterior, key, init, args, trajectory, step_size, chain_map):
    extra = dict(num_steps=PAPER["num_steps"]) if trajectory == "fixed" else {}
    idata = posterior.sample(
        key, num_chains=init.shape[0], num_samples=args.draws, step_size=step_size,
        num_geodesic_steps=args.num_geodesic_steps, init=init, chunk_size=args.draws,
        chain_map=chain_map, progress_bar=False, trajectory=trajectory, **extra,
    )  # fmt: skip
    stats = idata.sample_stats
    return {
        "wall_s": float(idata.posterior.attrs["wall_s"]),
        "compile_s": float(idata.posterior.attrs["compile_s"]),
        "num_steps": int(stats["n_steps"].values.sum()),
        "min_ess": min_ess(np.asarray(idata.posterior["u"].values[..., :NUM_PARAMS])),
        "accept": float(stats["acceptance_rate"].values.mean()),
        "failures": int(stats["projection_failed"].sum() + stats["irreversible"].sum()),
        "tree_depth": float(stats["tree_depth"].mean()) if "tree_depth" in stats else None,
    }


SAMPLE_MODES = {
    "paper": dict(num_warmup=0, adapt=False, trajectory="fixed", **PAPER),
    "fixed_adapt": dict(adapt=True, trajectory="fixed", **PAPER),
    "dynamic_adapt": dict(adapt=True, trajectory="dynamic", step_size=PAPER["step_size"]),
}


def sample_mode(posterior, init, args) -> None:
    """The user's path: ``sample(num_warmup=N, adapt=True)`` per trajectory, one JSON line
    each (median over ``--repeats`` interleaved calls, after an untimed compiling call)."""
    devices = len(device_groups(args.chains))

    def call(name, seed):
        kw = dict(SAMPLE_MODES[name])
        kw.setdefault("num_warmup", args.warmup)
        idata = posterior.sample(
            jax.random.key(seed), num_chains=args.chains, num_samples=args.draws, init=init,
            num_geodesic_steps=args.num_geodesic_steps, chunk_size=args.draws + kw["num_warmup"],
            chain_map=args.chain_map, progress_bar=False, **kw,
        )  # fmt: skip
        stats, attrs = idata.sample_stats, idata.posterior.attrs
        wall = float(attrs["wall_s"])
        ess = min_ess(np.asarray(idata.posterior["u"].values[..., :NUM_PARAMS]))
        return {
            "wall_s": wall, "min_ess": ess, "ess_per_s": ess / wall,
            "step_size": float(attrs["step_size"]),
            "accept": float(stats["acceptance_rate"].values.mean()),
            "steps_per_draw": float(stats["n_steps"].values.mean()),
            "tree_depth": float(stats["tree_depth"].mean()) if "tree_depth" in stats else None,
        }  # fmt: skip

    for name in SAMPLE_MODES:
        call(name, 99)
    runs = {name: [] for name in SAMPLE_MODES}
    for r in range(args.repeats):
        for name in SAMPLE_MODES:
            runs[name].append(call(name, r))
    med = statistics.median
    rows = {
        name: {key: med(r[key] for r in rs) if rs[0][key] is not None else None
               for key in rs[0]} for name, rs in runs.items()
    }  # fmt: skip
    for name, row in rows.items():
        emit(
            case="lv_sample_mode", sampler=name, chains=args.chains, draws=args.draws,
            warmup=SAMPLE_MODES[name].get("num_warmup", args.warmup), devices=devices,
            chain_map=args.chain_map, min_ess_per_s=row.pop("ess_per_s"), **row,
            over_paper=med(a["ess_per_s"] / b["ess_per_s"]
                           for a, b in zip(runs[name], runs["paper"], strict=True)),
            over_fixed_adapt=med(a["ess_per_s"] / b["ess_per_s"]
                                 for a, b in zip(runs[name], runs["fixed_adapt"], strict=True)),
        )  # fmt: skip


def run_mici(system, init, args, seed):
    import mici

    integrator = mici.integrators.ConstrainedLeapfrogIntegrator(
        system,
        n_inner_step=args.num_geodesic_steps,
        reverse_check_tol=2e-8,
        projection_solver=mici.solvers.solve_projection_onto_manifold_quasi_newton,
        projection_solver_kwargs={"constraint_tol": 1e-8, "position_tol": 1e-8, "max_iters": 100},
    )
    rng = np.random.default_rng(seed)
    sampler = mici.samplers.DynamicMultinomialHMC(system, integrator, rng, max_tree_depth=10)
    adapter = mici.adapters.DualAveragingStepSizeAdapter(adapt_stat_target=0.8)
    states = [mici.states.ChainState(pos=np.asarray(u), mom=None, dir=1) for u in init]
    trace = [lambda s: {"x": s.pos[:NUM_PARAMS]}]
    # warm-up (the adapter sets the integrator's step size when it ends), then the timed
    # main run from the warmed-up states
    t0 = time.perf_counter()
    warm = sampler.sample_chains(
        n_warm_up_iter=args.mici_warmup, n_main_iter=1, init_states=states,
        adapters=[adapter], trace_funcs=trace, display_progress=False,
    )  # fmt: skip
    warm_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = sampler.sample_chains(
        n_warm_up_iter=0, n_main_iter=args.mici_draws, init_states=warm.final_states,
        trace_funcs=trace, display_progress=False,
    )  # fmt: skip
    total = time.perf_counter() - t0
    stats = out.statistics
    steps = int(np.sum(stats["n_step"]))
    draws = np.stack([np.asarray(t) for t in out.traces["x"]])
    return {
        "wall_s": total,
        "warmup_s": warm_s,
        "step_size": float(integrator.step_size),
        "num_steps": steps,
        "min_ess": min_ess(draws),
        "accept": float(np.mean(stats["accept_stat"])),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--draws", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--num-geodesic-steps", type=int, default=3)
    parser.add_argument("--chain-map", default="map", help="dgm's chain map for the dynamic runs")
    parser.add_argument("--mici-warmup", type=int, default=30)
    parser.add_argument("--mici-draws", type=int, default=60)
    parser.add_argument("--no-mici", action="store_true")
    parser.add_argument("--mode", choices=("warmup", "sample"), default="warmup")
    args = parser.parse_args()

    model, y_obs = lv_setup()
    posterior = lv_posterior(model, y_obs)
    init = lv_starts(model, y_obs, args.chains, seed=0)
    if args.mode == "sample":
        sample_mode(posterior, init, args)
        return
    devices = len(device_groups(args.chains))
    u, eps, warm_s, warm_compile, warm_accept = adapt(
        posterior, jax.random.key(5), init, args.warmup, args.num_geodesic_steps, args.chain_map
    )
    step = float(np.median(eps))
    runs = {"fixed": [], "dynamic": []}
    # untimed first calls compile each sampler
    run_dgm(posterior, jax.random.key(99), init, args, "fixed", PAPER["step_size"], "auto")
    run_dgm(posterior, jax.random.key(99), u, args, "dynamic", step, args.chain_map)
    for r in range(args.repeats):
        runs["fixed"].append(
            run_dgm(posterior, jax.random.key(r), init, args, "fixed", PAPER["step_size"], "auto")
        )
        runs["dynamic"].append(
            run_dgm(posterior, jax.random.key(r), u, args, "dynamic", step, args.chain_map)
        )
    med = statistics.median
    rows = {}
    for name, rs in runs.items():
        rows[name] = {
            "case": "lv_dynamic",
            "sampler": name,
            "chains": args.chains,
            "draws": args.draws,
            "devices": devices,
            "step_size": step if name == "dynamic" else PAPER["step_size"],
            "wall_s": med(r["wall_s"] for r in rs),
            "min_ess_bulk": med(r["min_ess"] for r in rs),
            "min_ess_per_s": med(r["min_ess"] / r["wall_s"] for r in rs),
            "ms_per_step": med(1e3 * r["wall_s"] * devices / r["num_steps"] for r in rs),
            "steps_per_draw": med(r["num_steps"] / (args.chains * args.draws) for r in rs),
            "accept_stat": med(r["accept"] for r in rs),
            "failures": med(r["failures"] for r in rs),
            "compile_s": rs[0]["compile_s"],
        }
    dyn = rows["dynamic"]
    dyn.update(
        chain_map=args.chain_map,
        tree_depth=med(r["tree_depth"] for r in runs["dynamic"]),
        warmup=args.warmup,
        warmup_s=warm_s,
        warmup_compile_s=warm_compile,
        warmup_accept_stat=warm_accept,
        adapted_step_sizes=eps.tolist(),
        min_ess_per_s_with_warmup=dyn["min_ess_bulk"] / (dyn["wall_s"] + warm_s),
        dynamic_over_fixed_ess_per_s=dyn["min_ess_per_s"] / rows["fixed"]["min_ess_per_s"],
        dynamic_over_fixed_ess_per_s_with_warmup=(
            dyn["min_ess_bulk"] / (dyn["wall_s"] + warm_s) / rows["fixed"]["min_ess_per_s"]
        ),
    )
    emit(**rows["fixed"])
    emit(**dyn)
    if args.no_mici:
        return
    mici_init = lv_starts(model, y_obs, 1, seed=1)
    system = lv_mici_system(model, y_obs, mici_init[0])
    m = run_mici(system, mici_init, args, seed=0)
    emit(
        case="lv_dynamic",
        sampler="mici",
        chains=1,
        warmup=args.mici_warmup,
        draws=args.mici_draws,
        wall_s=m["wall_s"],
        warmup_s=m["warmup_s"],
        step_size=m["step_size"],
        min_ess_bulk=m["min_ess"],
        min_ess_per_s=m["min_ess"] / m["wall_s"],
        ms_per_step=1e3 * m["wall_s"] / m["num_steps"],
        steps_per_draw=m["num_steps"] / args.mici_draws,
        accept_stat=m["accept"],
        dgm_dynamic_over_mici_ess_per_s=dyn["min_ess_per_s"] / (m["min_ess"] / m["wall_s"]),
        dgm_dynamic_over_mici_ess_per_core_s=(
            dyn["min_ess_per_s"] / devices / (m["min_ess"] / m["wall_s"])
        ),
        dgm_dynamic_over_mici_ms_per_step=dyn["ms_per_step"] / (1e3 * m["wall_s"] / m["num_steps"]),
    )


if __name__ == "__main__":
    main()
