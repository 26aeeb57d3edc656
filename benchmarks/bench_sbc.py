"""Simulation-based calibration at the defaults: wall time and p-values, one JSON line each.

For each model (``mlp``: issue 16's random-MLP generator; ``lotka-volterra``: the
stochastic LV generator with log-rates centred on the true ones), runs ``dgm.sbc`` with
its defaults (200 replications, L = 99, thin 4, one chain, 200 warm-up iterations) through
the ``sbc`` experiment's model definitions, and prints the total wall time (compilation
included: every replication reuses one compiled program), the process CPU time, the
smallest chi-square p-value per quantity and the replication counts. The issue's target:
every p > 0.01 within 10 minutes on 2 cores.

Run:  python benchmarks/bench_sbc.py [--models mlp,lotka-volterra] [--replications 200]
"""

import argparse
import json
import os
import time

from dgm._runtime import configure_cpu

configure_cpu(2)

import jax  # noqa: E402

from dgm.calibration import sbc  # noqa: E402
from dgm.experiments.sbc import Config, generator_of  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="mlp,lotka-volterra")
    parser.add_argument("--replications", type=int, default=200)
    args = parser.parse_args()
    for model in args.models.split(","):
        config = Config(model=model, num_replications=args.replications)
        generator, input_dim, derived, condition_kwargs, _ = generator_of(config)
        t0, c0 = time.perf_counter(), time.process_time()
        with jax.enable_x64(True):
            res = sbc(generator, input_dim, jax.random.key(0), num_replications=args.replications,
                      derived=derived, condition_kwargs=condition_kwargs)  # fmt: skip
        row = {
            "bench": "sbc",
            "model": model,
            "wall_s": time.perf_counter() - t0,
            "cpu_s": time.process_time() - c0,
            "p_min": res.metrics()["p_min"],
            "replications_run": int(res.indices.size),
            "skipped": len(res.skipped),
            "failed": len(res.failed),
            "load_1min": os.getloadavg()[0],
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
