"""Constrained HMC: dgm vs Mici on Lotka–Volterra and on the unit sphere; chain scaling.

Three comparisons, one JSON line per result on stdout:

* ``lv``: the stochastic Lotka–Volterra generator (104 inputs, 100 outputs) conditioned
  on the paper's data. dgm runs its chains spread over both cores (two host devices);
  Mici (``DenseConstrainedEuclideanMetricSystem`` with ``dens_wrt_hausdorff=False``,
  ``ConstrainedLeapfrogIntegrator``, ``RandomMetropolisHMC``) runs one chain in its Python
  loop, in three variants (``--mici-backend``, default all, one row each): ``jax``, with
  the constraint, Jacobian and matrix–Hessian product supplied as ``jax.jit`` functions
  converted to NumPy; ``jax-auto``, only the constraint and density given as JAX
  functions and Mici building the derivatives with its own ``jax`` backend (compiled
  before timing); ``autograd``, as Mici's own LV example runs it: only the constraint
  and the density given, the generator written in ``autograd.numpy`` (checked against
  dgm's to 1e-10), and Mici building every derivative with its ``autograd`` backend
  (no JIT; seconds per step, so few draws). Same step size (0.25), step-count range
  (4...8 inclusive; Mici's upper bound is exclusive, so it gets ``(4, 9)``), ``N_g``
  (Mici's ``n_inner_step``), quasi-Newton projection with the same tolerance, and the same
  kind of start (log-rates near −4 with the noise in closed form).
* ``sphere``: generator ``‖u‖`` in R³ conditioned on 1; µs per constrained step, one
  chain each, Mici given NumPy closed forms.
* ``scaling``: wall time of dgm CHMC on Lotka–Volterra with 8 chains against 1 chain.

dgm and Mici are measured in the same run, interleaved, ``--repeats`` times; medians are
reported. dgm's compile time is excluded (``ChainRunner`` times it apart, and an untimed
first run warms every shape up); Mici's JAX derivative functions are compiled before the
timed runs. ``ms_per_step`` is wall time over integrator steps, per chain and per core
(dgm's wall time is multiplied by the devices used); ``cpu_ms_per_step`` is process CPU
time over steps (it includes host overhead, and is steadier than wall time on a shared
machine).

Run:  python benchmarks/bench_chmc.py [--only lv,sphere,scaling] [--repeats 3]
"""

import argparse
import json
import statistics
import time

from dgm._runtime import configure_cpu

configure_cpu(2)  # two host devices: dgm spreads its chains over both cores

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dgm import diagnostics  # noqa: E402
from dgm.conditioning import condition  # noqa: E402
from dgm.inference.base import device_groups  # noqa: E402
from dgm.models.lotka_volterra import NUM_PARAMS, LotkaVolterra  # noqa: E402

CHUNK = 50  # dgm iterations per compiled call; a first CHUNK-draw run warms each shape up


def emit(**row):
    print(json.dumps(row), flush=True)


def min_ess(draws: np.ndarray) -> float:
    """Worst bulk ESS over coordinates of ``(chains, draws, dim)`` draws."""
    return float(np.min(diagnostics.ess(draws, "bulk")))


# ----------------------------------------------------------------------------- dgm


def lv_setup():
    from dgm.data.lotka_volterra import observed_data

    model = LotkaVolterra()
    y_obs, _ = observed_data(model, check=True)
    return model, np.asarray(y_obs, np.float64)


def lv_starts(model, y_obs, num_chains, seed):
    u_z = 0.1 * np.random.default_rng(seed).normal(size=(num_chains, NUM_PARAMS)) - 4.0
    fn = jax.jit(jax.vmap(lambda z: model.input_on_manifold(z, jnp.asarray(y_obs))))
    return np.asarray(fn(jnp.asarray(u_z)))


def run_dgm(
    posterior,
    key,
    init,
    num_draws,
    step_size,
    num_steps,
    num_geodesic_steps,
    tol,
    chunk=CHUNK,
    chain_map="map",
):
    """One dgm run: wall and CPU time, compile time, integrator steps, draws, acceptance."""
    cpu0 = time.process_time()
    idata = posterior.sample(
        key,
        num_chains=init.shape[0],
        num_samples=num_draws,
        step_size=step_size,
        num_steps=num_steps,
        num_geodesic_steps=num_geodesic_steps,
        tol=tol,
        init=init,
        chunk_size=min(chunk, num_draws),
        chain_map=chain_map,
        progress_bar=False,
    )
    cpu = time.process_time() - cpu0  # includes compilation, if any, and host overhead
    stats = idata.sample_stats
    return {
        "cpu_s": cpu,
        "wall_s": float(idata.posterior.attrs["wall_s"]),
        "compile_s": float(idata.posterior.attrs["compile_s"]),
        "num_steps": int(stats["n_steps"].values.sum()),
        "draws": np.asarray(idata.posterior["u"].values[..., :NUM_PARAMS]),
        "accept": float(stats["is_accepted"].values.mean()),
        "failures": int(
            stats["projection_failed"].values.sum() + stats["irreversible"].values.sum()
        ),
    }


# ---------------------------------------------------------------------------- Mici


def mici_system(
    constr, neg_log_dens, jacob_constr=None, mhp_constr=None, grad_neg_log_dens=None, backend=None
):
    from mici.systems import DenseConstrainedEuclideanMetricSystem

    return DenseConstrainedEuclideanMetricSystem(
        neg_log_dens=neg_log_dens,
        grad_neg_log_dens=grad_neg_log_dens,
        constr=constr,
        jacob_constr=jacob_constr,
        mhp_constr=mhp_constr,
        dens_wrt_hausdorff=False,
        backend=backend,
    )


def run_mici(system, init, num_draws, step_size, num_steps, n_inner_step, tol, seed, trace):
    """One Mici run (chains in one process, sequentially): wall time, steps, traced draws."""
    import mici

    integrator = mici.integrators.ConstrainedLeapfrogIntegrator(
        system,
        step_size=step_size,
        n_inner_step=n_inner_step,
        reverse_check_tol=2 * tol,
        projection_solver=mici.solvers.solve_projection_onto_manifold_quasi_newton,
        projection_solver_kwargs={"constraint_tol": tol, "position_tol": tol, "max_iters": 100},
    )
    rng = np.random.default_rng(seed)
    lo, hi = num_steps
    sampler = mici.samplers.RandomMetropolisHMC(system, integrator, rng, n_step_range=(lo, hi + 1))
    states = [mici.states.ChainState(pos=np.asarray(u), mom=None, dir=1) for u in init]
    t0, cpu0 = time.perf_counter(), time.process_time()
    out = sampler.sample_chains(
        n_warm_up_iter=0,
        n_main_iter=num_draws,
        init_states=states,
        trace_funcs=[lambda s: {"x": trace(s.pos)}],
        display_progress=False,
    )
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    stats = out.statistics
    return {
        "cpu_s": cpu,
        "wall_s": wall,
        "num_steps": int(np.sum(stats["n_step"])),
        "draws": np.stack([np.asarray(t) for t in out.traces["x"]]),
        "accept": float(np.mean(stats["accept_stat"])),
    }


def jax_mici_system(generate, y_obs, u_example, jacobian=jax.jacfwd):
    """Mici's constrained system for ``generate(u) = y_obs`` given jitted JAX derivatives:
    the constraint, its Jacobian (``jacobian``: ``jax.jacfwd`` or ``jax.jacrev``) and the
    matrix–Hessian product, all compiled here on ``u_example``; standard-normal density."""
    y = jnp.asarray(y_obs)
    jac_fn = jacobian(generate)
    constr = jax.jit(lambda u: generate(u) - y)
    jac_and_constr = jax.jit(lambda u: (jac_fn(u), generate(u) - y))
    mhp = jax.jit(lambda u, m: jax.vjp(jac_fn, u)[1](m)[0])

    def jacob_constr(q):
        j, c = jac_and_constr(q)
        return np.asarray(j), np.asarray(c)

    def mhp_constr(q):
        j, c = jac_and_constr(q)
        return (lambda m: np.asarray(mhp(q, m))), np.asarray(j), np.asarray(c)

    jax.block_until_ready((constr(u_example), jac_and_constr(u_example)))
    jax.block_until_ready(mhp(u_example, np.zeros((y.shape[0], u_example.shape[0]))))
    return mici_system(
        constr=lambda q: np.asarray(constr(q)),
        jacob_constr=jacob_constr,
        mhp_constr=mhp_constr,
        neg_log_dens=lambda q: 0.5 * q @ q,
        grad_neg_log_dens=lambda q: q,
    )


def jax_auto_mici_system(generate, y_obs):
    """Mici building every derivative itself with its ``jax`` backend (``jax.jit`` of
    Mici's Jacobian and matrix–Hessian-product constructions): only the constraint and the
    density are given, as JAX functions."""
    y = jnp.asarray(y_obs)
    return mici_system(
        constr=lambda q: generate(q) - y,
        neg_log_dens=lambda q: 0.5 * jnp.sum(q**2),
        backend="jax",
    )


def lv_mici_system(model, y_obs, u_example):
    return jax_mici_system(model.generate, y_obs, u_example)


def lv_mici_system_jax_auto(model, y_obs):
    return jax_auto_mici_system(model.generate, y_obs)


def lv_generate_autograd(model, u):
    """``model.generate`` written in ``autograd.numpy``, as Mici's own LV example writes its
    generator (a Python loop over time steps)."""
    import autograd.numpy as anp

    z = anp.exp(u[:NUM_PARAMS] + model.prior_loc)
    scale = model.noise_scale
    y1, y2 = model.y0
    ys = []
    for t in range(model.num_steps):
        n1, n2 = u[NUM_PARAMS + 2 * t], u[NUM_PARAMS + 2 * t + 1]
        y1 = y1 + model.dt * (z[0] * y1 - z[1] * y1 * y2) + scale * n1
        y2 = y2 + model.dt * (-z[2] * y2 + z[3] * y1 * y2) + scale * n2
        ys += [y1, y2]
    return anp.stack(ys)


def lv_mici_system_autograd(model, y_obs):
    """Mici as its LV example runs it: only ``constr`` and ``neg_log_dens`` given, in
    ``autograd.numpy``; Mici builds the gradient, Jacobian and matrix–Hessian product with
    its ``autograd`` backend (no JIT)."""
    u = np.random.default_rng(7).normal(size=model.input_dim)
    u[:NUM_PARAMS] -= 2.0
    err = np.max(np.abs(lv_generate_autograd(model, u) - np.asarray(model.generate(u))))
    if err > 1e-10:
        raise AssertionError(f"autograd LV generator differs from dgm's by {err:.2e}")
    return mici_system(
        constr=lambda q: lv_generate_autograd(model, q) - y_obs,
        neg_log_dens=lambda q: 0.5 * q @ q,
        backend="autograd",
    )


# --------------------------------------------------------------------------- cases


def lv_posterior(model, y_obs, structured=True):
    """dgm's LV posterior as the experiment builds it (by default: closed-form ½ log det(J Jᵀ)
    and the banded-inverse triangular-block Gram factor)."""
    y = jnp.asarray(y_obs)
    hook = (lambda u: model.half_log_det_gram(u, y)) if structured else None
    gram = model.gram_factor if structured else None
    return condition(
        model.generate, y_obs, model.input_dim, half_log_det_fn=hook, gram_factor_fn=gram
    )


def bench_lv(args):
    model, y_obs = lv_setup()
    posterior = lv_posterior(model, y_obs, structured=not args.dense_log_det)
    settings = dict(
        step_size=0.25, num_steps=(4, 8), num_geodesic_steps=args.num_geodesic_steps, tol=1e-8
    )
    dgm_settings = settings | {"chain_map": "auto"}  # as the experiment
    dgm_init = lv_starts(model, y_obs, args.chains, seed=0)
    mici_init = lv_starts(model, y_obs, args.mici_chains, seed=1)
    backends = MICI_BACKENDS if args.mici_backend == "all" else args.mici_backend.split(",")
    mici_settings = [settings[k] for k in ("step_size", "num_steps", "num_geodesic_steps", "tol")]
    systems, draws = {}, {}
    for b in backends:
        if b == "jax":
            systems[b], draws[b] = lv_mici_system(model, y_obs, mici_init[0]), args.mici_draws
        elif b == "jax-auto":
            systems[b], draws[b] = lv_mici_system_jax_auto(model, y_obs), args.mici_draws
            run_mici(systems[b], mici_init, 1, *mici_settings, 0, lambda u: u)  # compile
        else:
            systems[b] = lv_mici_system_autograd(model, y_obs)
            draws[b] = args.mici_autograd_draws
    devices = len(device_groups(args.chains))
    dgm_rows, mici_rows = [], {b: [] for b in backends}
    run_dgm(posterior, jax.random.key(99), dgm_init, CHUNK, **dgm_settings)  # warm-up
    for r in range(args.repeats):
        key = jax.random.key(r)
        dgm_rows.append(run_dgm(posterior, key, dgm_init, args.draws, **dgm_settings))
        for b in backends:
            mici_rows[b].append(
                run_mici(
                    systems[b],
                    mici_init,
                    draws[b],
                    *mici_settings,
                    seed=r,
                    trace=lambda u: u[:NUM_PARAMS],
                )
            )
    dgm = summarize(dgm_rows, devices, args.chains)
    emit(
        case="lv",
        sampler="dgm",
        structured_log_det=not args.dense_log_det,
        chains=args.chains,
        draws=args.draws,
        devices=devices,
        **dgm,
    )
    for b in backends:
        mici = summarize(mici_rows[b], 1, args.mici_chains)
        emit(
            case="lv",
            sampler="mici",
            mici_backend=b,
            chains=args.mici_chains,
            draws=draws[b],
            devices=1,
            **mici,
            dgm_over_peer_ms_per_step=dgm["ms_per_step"] / mici["ms_per_step"],
            dgm_over_peer_cpu_ms_per_step=dgm["cpu_ms_per_step"] / mici["cpu_ms_per_step"],
            dgm_over_peer_ess_per_s=dgm["min_ess_per_s"] / mici["min_ess_per_s"],
        )


def summarize(rows, devices, chains):
    """Medians over repeats of ms per step (per chain per core) and min bulk ESS per second."""
    ms = [1e3 * r["wall_s"] * devices / r["num_steps"] for r in rows]
    ess = [min_ess(r["draws"]) for r in rows]
    ess_s = [e / r["wall_s"] for e, r in zip(ess, rows, strict=True)]
    cpu_ms = [1e3 * r["cpu_s"] / r["num_steps"] for r in rows]
    return {
        "ms_per_step": statistics.median(ms),
        "cpu_ms_per_step": statistics.median(cpu_ms),
        "ms_per_step_all": ms,
        "wall_s": statistics.median(r["wall_s"] for r in rows),
        "min_ess_bulk": statistics.median(ess),
        "min_ess_per_s": statistics.median(ess_s),
        "accept_rate": statistics.median(r["accept"] for r in rows),
        "steps_per_chain": statistics.median(r["num_steps"] / chains for r in rows),
    }


def bench_sphere(args):
    posterior = condition(lambda u: jnp.sqrt(u @ u)[None], np.ones(1), 3)
    settings = dict(step_size=0.5, num_steps=(4, 8), num_geodesic_steps=1, tol=1e-8)
    u0 = np.asarray([[1.0, 0.0, 0.0]])

    def hess(q):
        r = np.sqrt(q @ q)
        return (np.eye(3) - np.outer(q, q) / r**2) / r

    system = mici_system(
        constr=lambda q: np.sqrt(q @ q)[None] - 1.0,
        jacob_constr=lambda q: (q / np.sqrt(q @ q))[None, :],
        mhp_constr=lambda q: lambda m: m[0] @ hess(q),
        neg_log_dens=lambda q: 0.5 * q @ q,
        grad_neg_log_dens=lambda q: q,
    )
    dgm_us, mici_us, dgm_cpu, mici_cpu = [], [], [], []
    # one compiled call for the whole run: per-chunk host overhead would swamp µs steps
    settings["chunk"] = args.sphere_draws
    run_dgm(posterior, jax.random.key(99), u0, args.sphere_draws, **settings)  # warm-up
    for r in range(args.repeats):
        key = jax.random.key(r)
        d = run_dgm(posterior, key, u0, args.sphere_draws, **settings)
        dgm_us.append(1e6 * d["wall_s"] / d["num_steps"])
        dgm_cpu.append(1e6 * d["cpu_s"] / d["num_steps"])
        m = run_mici(
            system,
            u0,
            args.sphere_mici_draws,
            settings["step_size"],
            settings["num_steps"],
            settings["num_geodesic_steps"],
            settings["tol"],
            seed=r,
            trace=lambda u: u,
        )
        mici_us.append(1e6 * m["wall_s"] / m["num_steps"])
        mici_cpu.append(1e6 * m["cpu_s"] / m["num_steps"])
    dgm, mici = statistics.median(dgm_us), statistics.median(mici_us)
    emit(
        case="sphere",
        sampler="dgm",
        us_per_step=dgm,
        us_per_step_all=dgm_us,
        cpu_us_per_step=statistics.median(dgm_cpu),
        n_inner_step=1,
    )
    emit(
        case="sphere",
        sampler="mici",
        us_per_step=mici,
        us_per_step_all=mici_us,
        cpu_us_per_step=statistics.median(mici_cpu),
        n_inner_step=1,
        dgm_over_peer_us_per_step=dgm / mici,
    )


def bench_scaling(args):
    model, y_obs = lv_setup()
    posterior = lv_posterior(model, y_obs, structured=not args.dense_log_det)
    settings = dict(step_size=0.25, num_steps=(4, 8), num_geodesic_steps=3, tol=1e-8)
    settings["chain_map"] = "auto"  # as the experiment
    inits = {c: lv_starts(model, y_obs, c, seed=0) for c in (1, 8)}
    walls: dict[int, list[float]] = {1: [], 8: []}
    cpus: dict[int, list[float]] = {1: [], 8: []}
    for c in (1, 8):
        run_dgm(posterior, jax.random.key(99), inits[c], CHUNK, **settings)  # warm-up
    for r in range(args.repeats):
        for c in (1, 8):
            res = run_dgm(posterior, jax.random.key(r), inits[c], args.scaling_draws, **settings)
            walls[c].append(res["wall_s"])
            cpus[c].append(res["cpu_s"])
    one, eight = statistics.median(walls[1]), statistics.median(walls[8])
    emit(
        case="scaling",
        sampler="dgm",
        draws=args.scaling_draws,
        wall_s_1_chain=one,
        wall_s_8_chains=eight,
        ratio_8_over_1=eight / one,
        cpu_ratio_8_over_1=statistics.median(cpus[8]) / statistics.median(cpus[1]),
        devices_8_chains=len(device_groups(8)),
    )


MICI_BACKENDS = ["jax", "jax-auto", "autograd"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="lv,sphere,scaling")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chains", type=int, default=8, help="dgm chains on LV")
    parser.add_argument("--draws", type=int, default=500, help="dgm draws per chain on LV")
    parser.add_argument("--mici-chains", type=int, default=1)
    parser.add_argument("--mici-draws", type=int, default=50, help="Mici (jax) draws on LV")
    parser.add_argument(
        "--mici-backend",
        default="all",
        help="Mici rows on LV, comma-separated: jax (jax.jit derivative functions given to"
        " Mici), jax-auto (Mici builds the derivatives with its jax backend), autograd (Mici"
        " builds them from an autograd.numpy generator, as Mici's own LV example); all: the"
        " three",
    )
    parser.add_argument(
        "--mici-autograd-draws", type=int, default=5, help="Mici (autograd) draws on LV"
    )
    parser.add_argument("--num-geodesic-steps", type=int, default=3)
    parser.add_argument(
        "--dense-log-det",
        action="store_true",
        help="dgm without the LV structured hooks (closed-form Gram log-det, triangular-block"
        " Gram solves): dense Cholesky, its solves and its gradient",
    )
    parser.add_argument("--sphere-draws", type=int, default=20000)
    parser.add_argument("--sphere-mici-draws", type=int, default=200)
    parser.add_argument("--scaling-draws", type=int, default=100)
    args = parser.parse_args()
    unknown = set(args.mici_backend.split(",")) - {*MICI_BACKENDS, "all"}
    if unknown:
        parser.error(f"--mici-backend: expected some of {MICI_BACKENDS} or 'all'; got {unknown}")
    cases = {"lv": bench_lv, "sphere": bench_sphere, "scaling": bench_scaling}
    for name in args.only.split(","):
        cases[name](args)


if __name__ == "__main__":
    main()
