"""NUTS with windowed adaptation on a 100-d Gaussian (sds 0.01...1): dgm vs BlackJAX.

Both samplers run the same job: 4 chains (``vmap`` on one device), from the same starting
points, 1000 iterations of Stan-style windowed warm-up (dual-averaging step size towards
acceptance 0.8 and a diagonal inverse mass matrix), then 1000 draws with the adapted
values, max tree depth 10, float64. dgm runs through its front door
``dgm.sample(log_density, init, ...)``; BlackJAX runs ``blackjax.window_adaptation(
blackjax.nuts, ...)`` per chain (``vmap``), then ``blackjax.nuts`` in a ``lax.scan``, both
jitted. Each sampler is called once to compile, then ``--repeats`` times, interleaved;
medians are reported. ``min_ess_per_s``: the worst coordinate's multi-chain bulk ESS over
the whole steady-state run (warm-up and sampling); ``min_ess_per_s_sampling`` over the
sampling phase alone; ``min_ess_per_cpu_s`` over the process CPU seconds of the whole run
(on a loaded machine a steadier ratio than wall time).

The second dgm call with the same shapes must compile nothing: the benchmark counts the
compilations dgm reports (``compile_s`` attribute, the runner's compile counter) and jax's
compile log events, and fails if a steady-state call compiled anything.

Run:  python benchmarks/bench_nuts.py [--repeats 3] [--chains 4] [--warmup 1000] [--draws 1000]
"""

import argparse
import json
import logging
import statistics
import time

from dgm._runtime import configure_cpu

configure_cpu(1)  # one device: both samplers vmap their chains on one core group

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

import dgm  # noqa: E402
from dgm import diagnostics  # noqa: E402

DIM = 100
SD = np.linspace(0.01, 1.0, DIM)


def log_density(x):
    return -0.5 * jnp.sum((x / jnp.asarray(SD)) ** 2)


def min_ess(draws) -> float:
    return float(np.min(diagnostics.ess(np.asarray(draws), "bulk")))


class CompileCounter(logging.Handler):
    """Counts jax's "Finished XLA compilation" log records (jax_log_compiles)."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record):
        if record.getMessage().startswith("Finished XLA compilation"):
            self.count += 1


def run_dgm(key, positions, args):
    t0, c0 = time.perf_counter(), time.process_time()
    idata = dgm.sample(
        log_density, positions, key=key, num_warmup=args.warmup, num_samples=args.draws,
        num_chains=args.chains, chunk_size=args.draws,
    )  # fmt: skip
    total, cpu = time.perf_counter() - t0, time.process_time() - c0
    attrs = idata.posterior.attrs
    stats = idata.sample_stats
    return {
        "total_s": total - attrs["compile_s"],
        "cpu_s": cpu - attrs["compile_s"],  # compile_s is ~ CPU too (one thread)
        "sampling_s": attrs["wall_s"],
        "compile_s": attrs["compile_s"],
        "draws": idata.posterior["x"].values,
        "accept": float(stats["acceptance_rate"].mean()),
        "grads": int(stats["n_steps"].sum()),
        "step_size": float(np.median(attrs["step_size"])),
    }


def build_blackjax(args):
    import blackjax

    adapt = blackjax.window_adaptation(blackjax.nuts, log_density, target_acceptance_rate=0.8)

    @jax.jit
    def warm(keys, positions):
        def one(key, x):
            (state, params), _ = adapt.run(key, x, num_steps=args.warmup)
            return state, params

        return jax.vmap(one)(keys, positions)

    @jax.jit
    def draw(keys, states, params):
        def one(key, state, params):
            kernel = blackjax.nuts(log_density, **params)

            def body(s, k):
                s, info = kernel.step(k, s)
                return s, (s.position, info.acceptance_rate, info.num_integration_steps)

            return jax.lax.scan(body, state, jax.random.split(key, args.draws))[1]

        return jax.vmap(one)(keys, states, params)

    def run(key, positions):
        key_w, key_s = jax.random.split(key)
        t0, c0 = time.perf_counter(), time.process_time()
        states, params = jax.block_until_ready(
            warm(jax.random.split(key_w, args.chains), positions)
        )
        t1 = time.perf_counter()
        out = jax.block_until_ready(draw(jax.random.split(key_s, args.chains), states, params))
        t2, c2 = time.perf_counter(), time.process_time()
        positions_out, accept, steps = out
        return {
            "total_s": t2 - t0,
            "cpu_s": c2 - c0,
            "sampling_s": t2 - t1,
            "draws": np.asarray(positions_out),
            "accept": float(np.mean(accept)),
            "grads": int(np.sum(steps)),
            "step_size": float(np.median(params["step_size"])),
        }

    return run


def summarize(rows, name, args, first_s):
    ess = [min_ess(r["draws"]) for r in rows]
    med = statistics.median
    return {
        "benchmark": "nuts_gaussian_100d",
        "sampler": name,
        "chains": args.chains,
        "warmup": args.warmup,
        "draws": args.draws,
        "total_s": med(r["total_s"] for r in rows),
        "total_s_all": [r["total_s"] for r in rows],
        "sampling_s": med(r["sampling_s"] for r in rows),
        "first_call_s": first_s,
        "min_ess_bulk": med(ess),
        "min_ess_per_s": med(e / r["total_s"] for e, r in zip(ess, rows, strict=True)),
        "min_ess_per_s_sampling": med(e / r["sampling_s"] for e, r in zip(ess, rows, strict=True)),
        "min_ess_per_cpu_s": med(e / r["cpu_s"] for e, r in zip(ess, rows, strict=True)),
        "min_ess_per_grad": med(e / r["grads"] for e, r in zip(ess, rows, strict=True)),
        "accept_rate": med(r["accept"] for r in rows),
        "step_size": med(r["step_size"] for r in rows),
        "grads_per_draw": med(r["grads"] / (args.chains * (args.draws)) for r in rows),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1000)
    parser.add_argument("--draws", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-blackjax", action="store_true")
    args = parser.parse_args()

    key_init, key = jax.random.split(jax.random.key(0))
    positions = jax.random.normal(key_init, (args.chains, DIM), jnp.float64)
    counter = CompileCounter()
    logging.getLogger("jax").addHandler(counter)
    jax.config.update("jax_log_compiles", True)
    t0 = time.perf_counter()
    run_dgm(jax.random.fold_in(key, 99), positions, args)
    dgm_first = time.perf_counter() - t0
    compiles_first = counter.count
    peers = {} if args.no_blackjax else {"blackjax": build_blackjax(args)}
    peer_first = {}
    for name, run in peers.items():
        t0 = time.perf_counter()
        run(jax.random.fold_in(key, 99), positions)
        peer_first[name] = time.perf_counter() - t0
    rows = {"dgm": [], **{name: [] for name in peers}}
    dgm_compiles = []
    for r in range(args.repeats):
        before = counter.count
        rows["dgm"].append(run_dgm(jax.random.fold_in(key, r), positions, args))
        dgm_compiles.append(counter.count - before + int(rows["dgm"][-1]["compile_s"] > 0))
        for name, run in peers.items():
            rows[name].append(run(jax.random.fold_in(key, r), positions))
    jax.config.update("jax_log_compiles", False)
    ours = summarize(rows["dgm"], "dgm", args, dgm_first)
    ours["compiles_first_call"] = compiles_first
    ours["compiles_later_calls"] = dgm_compiles
    print(json.dumps(ours), flush=True)
    for name in peers:
        peer = summarize(rows[name], name, args, peer_first[name])
        peer["dgm_over_peer_ess_per_s"] = ours["min_ess_per_s"] / peer["min_ess_per_s"]
        peer["dgm_over_peer_ess_per_s_sampling"] = (
            ours["min_ess_per_s_sampling"] / peer["min_ess_per_s_sampling"]
        )
        peer["dgm_over_peer_total_s"] = ours["total_s"] / peer["total_s"]
        # process CPU seconds: less sensitive than wall time to other load on the machine
        peer["dgm_over_peer_ess_per_cpu_s"] = ours["min_ess_per_cpu_s"] / peer["min_ess_per_cpu_s"]
        print(json.dumps(peer), flush=True)
    if any(dgm_compiles):
        raise SystemExit(f"a second dgm call with the same shapes compiled: {dgm_compiles}")


if __name__ == "__main__":
    main()
