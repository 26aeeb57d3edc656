"""Chains on two host devices against one: constrained HMC throughput on Lotka–Volterra.

One process with two host devices; the same ``ChainRunner`` of the fixed-length
constrained HMC kernel (the paper's settings: step 0.25, 4...8 steps, N_g 3) runs the same
chains on a one-device mesh and on the two-device mesh, interleaved, ``--repeats`` times.
Compilation is excluded (an untimed first run per mesh). One JSON line per chain map
(``vmap``: the banded Gram factor, as the experiment runs it; ``map``: one chain after
another per device) with the median chain-transitions per second on each mesh and their
ratio ``speedup`` (target: at least 1.8), and CPU seconds per wall second of each (on a
shared machine, ``cpu_over_wall_2_devices`` near 1 means only one core was free, so no
speedup could show). The draws of the two meshes are checked equal.

``--sampler dynamic`` runs dynamic (no-U-turn) constrained HMC instead
(:mod:`dgm.inference.dynamic_chmc`, step ``--step-size``, default 0.9: what warm-up adapts
on this problem, max depth 10); its chains' trajectories differ in length, so a device
waits for its slowest chain under ``vmap``.

Run:  python benchmarks/bench_devices.py [--chains 8] [--draws 100] [--repeats 3]
      python benchmarks/bench_devices.py --sampler dynamic [--chains 8] [--draws 100]
"""

import argparse
import json
import statistics
import time

from dgm import set_host_device_count

set_host_device_count(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

jax.config.update("jax_enable_x64", True)

from dgm.conditioning import condition  # noqa: E402
from dgm.inference import constrained_hmc, dynamic_chmc  # noqa: E402
from dgm.inference.base import ChainRunner  # noqa: E402
from dgm.models.lotka_volterra import NUM_PARAMS, LotkaVolterra  # noqa: E402


def lv_problem(num_chains: int, sampler: str = "fixed", step_size: float = 0.9):
    from dgm.data.lotka_volterra import observed_data

    model = LotkaVolterra()
    y_obs, _ = observed_data(model, check=True)
    y = jnp.asarray(np.asarray(y_obs, np.float64))
    posterior = condition(
        model.generate,
        y,
        model.input_dim,
        half_log_det_fn=lambda u: model.half_log_det_gram(u, y),
        gram_factor_fn=model.gram_factor,
    )
    z = 0.1 * np.random.default_rng(0).normal(size=(num_chains, NUM_PARAMS)) - 4.0
    u0 = jax.vmap(lambda z: model.input_on_manifold(z, y))(jnp.asarray(z))
    states = jax.vmap(lambda u: constrained_hmc.init(posterior.system, u))(u0)
    if sampler == "dynamic":
        step = dynamic_chmc.build_kernel(posterior.system, y, 3, 1e-8, 100, True)
        return step, states, dynamic_chmc.DCHMCParams(jnp.asarray(step_size), 10)
    step = constrained_hmc.build_kernel(posterior.system, y, 3, 1e-8, 100, True)
    params = constrained_hmc.CHMCParams(jnp.asarray(0.25), jnp.asarray(4), jnp.asarray(8))
    return step, states, params


def partitions_overlap() -> bool:
    """Whether the two devices' parts of one sharded call run at the same time: each part
    stamps its start and end through a host callback; on a loaded machine this shows
    concurrency where a throughput ratio cannot."""
    import threading

    from jax.sharding import PartitionSpec

    from dgm.inference import mesh

    stamps = []

    def stamp(tag, index, _):
        stamps.append((tag, int(index), time.perf_counter(), threading.get_ident()))

    def part(x):
        index = jax.lax.axis_index(mesh.AXIS)
        jax.debug.callback(stamp, "start", index, x[0, 0])
        _, y = jax.lax.while_loop(
            lambda c: c[0] < 200_000, lambda c: (c[0] + 1, jnp.sin(c[1]) + 0.1 * c[1]), (0, x)
        )
        jax.debug.callback(stamp, "end", index, y[0, 0])
        return y

    two = mesh.make_mesh(2)
    fn = mesh.shard_chains(part, two, (PartitionSpec(mesh.AXIS),))
    x = mesh.put(jnp.zeros((2, 50)), two)
    jax.block_until_ready(fn(x))
    stamps.clear()
    jax.block_until_ready(fn(x))
    t = {(tag, i): when for tag, i, when, _ in stamps}
    return max(t["start", 0], t["start", 1]) < min(t["end", 0], t["end", 1])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--chains", type=int, default=8)
    parser.add_argument("--draws", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chain-maps", default="vmap,map")
    parser.add_argument("--sampler", choices=("fixed", "dynamic"), default="fixed")
    parser.add_argument("--step-size", type=float, default=0.9, help="dynamic sampler's step")
    args = parser.parse_args()
    step, states, params = lv_problem(args.chains, args.sampler, args.step_size)
    keys = jax.random.split(jax.random.key(0), args.chains)
    devices = jax.devices()
    overlap = partitions_overlap()
    for chain_map in args.chain_maps.split(","):
        runners = {
            n: ChainRunner(step, chunk_size=args.draws, chain_map=chain_map, devices=devices[:n])
            for n in (1, 2)
        }
        first = {n: r.run(keys, states, params, args.draws) for n, r in runners.items()}
        same = bool(np.array_equal(first[1].draws, first[2].draws))
        walls, cpus = {1: [], 2: []}, {1: [], 2: []}
        for _ in range(args.repeats):
            for n, runner in runners.items():
                t0, c0 = time.perf_counter(), time.process_time()
                runner.run(keys, states, params, args.draws)
                walls[n].append(time.perf_counter() - t0)
                cpus[n].append(time.process_time() - c0)
        rate = {n: args.chains * args.draws / statistics.median(w) for n, w in walls.items()}
        # CPU seconds per wall second: up to 2 when both cores were free for the 2-device
        # run; about 1 means the machine gave this process one core's worth (no speedup
        # can show then).
        busy = {n: statistics.median(c) / statistics.median(walls[n]) for n, c in cpus.items()}
        row = {
            "benchmark": "chains_over_devices",
            "model": "lotka_volterra",
            "sampler": {"fixed": "constrained_hmc_fixed_length", "dynamic": "dynamic_chmc"}[
                args.sampler
            ],
            "chain_map": chain_map,
            "chains": args.chains,
            "draws": args.draws,
            "transitions_per_s_1_device": rate[1],
            "transitions_per_s_2_devices": rate[2],
            "speedup": rate[2] / rate[1],
            "cpu_over_wall_1_device": busy[1],
            "cpu_over_wall_2_devices": busy[2],
            "compile_s": {n: first[n].compile_s for n in first},
            "draws_equal": same,
            "partitions_overlap": overlap,
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
