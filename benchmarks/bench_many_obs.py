"""Many observations, one compiled program: a batch of 100 observations against one.

A small generic generator (a random 2-layer tanh MLP of 3 latents plus additive noise,
``y = f(z) + 0.1 n``, 6 inputs, 3 outputs, through ``dgm.condition``'s generic path) is
conditioned on one observation (compile and sampling time), then sampled for 100 simulated
observations in one call (``y_obs`` of shape ``(100, 3)``: 400 chains in one compiled,
sharded job). Target: the batched call costs at most 3× one compile plus its sampling time.

Run: ``python benchmarks/bench_many_obs.py`` (JSON lines).
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))
from dgm._runtime import configure_cpu  # noqa: E402

configure_cpu(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dgm  # noqa: E402

K, N, SIGMA = 3, 3, 0.1


def make_generator(seed=0):
    k1, k2 = jax.random.split(jax.random.key(seed))
    w1 = jax.random.normal(k1, (K, 16)) / np.sqrt(K)
    w2 = jax.random.normal(k2, (16, N)) / 4.0

    def generator(u):
        z, n = u[:K], u[K:]
        return jnp.tanh(z @ w1) @ w2 + 0.5 * z + SIGMA * n

    return generator


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-obs", type=int, default=100)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=100)
    args = parser.parse_args()
    generator = make_generator()
    with jax.enable_x64(True):
        u = jax.random.normal(jax.random.key(1), (args.num_obs, K + N), jnp.float64)
        ys = np.asarray(jax.vmap(generator)(u))
    kw = dict(num_chains=args.chains, num_samples=args.samples, num_warmup=args.warmup)
    kw |= dict(step_size=0.3, num_steps=(2, 4), progress_bar=False)
    posterior = dgm.condition(generator, ys[0], K + N)
    one, total_1 = timed(lambda: posterior.sample(jax.random.key(0), **kw))
    compile_1 = float(one.posterior.attrs["compile_s"])
    sampling_1 = float(one.posterior.attrs["wall_s"])
    again, total_again = timed(lambda: posterior.sample(jax.random.key(0), y_obs=ys[1], **kw))
    batch, total_b = timed(lambda: posterior.sample(jax.random.key(0), y_obs=ys, **kw))
    compile_b = float(batch.posterior.attrs["compile_s"])
    sampling_b = float(batch.posterior.attrs["wall_s"])
    row = {
        "case": "many_obs",
        "num_obs": args.num_obs,
        "one_total_s": round(total_1, 2),
        "one_compile_s": round(compile_1, 2),
        "one_sampling_s": round(sampling_1, 2),
        "new_obs_total_s": round(total_again, 2),
        "new_obs_compile_s": float(again.posterior.attrs["compile_s"]),
        "batch_total_s": round(total_b, 2),
        "batch_compile_s": round(compile_b, 2),
        "batch_sampling_s": round(sampling_b, 2),
        "batch_overhead_in_compiles": round((total_b - sampling_b) / compile_1, 2),
        "separate_calls_estimate_s": round(args.num_obs * (total_again), 1),
        "load1": os.getloadavg()[0],
    }
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
