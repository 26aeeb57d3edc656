"""Amortized VI training speed: ``dgm.amortize`` against the same q in PyTorch.

The model is linear-Gaussian (``z ~ N(0, I_k)``, ``y = A z + σ n``, ``N`` outputs, σ 0.3),
q is two affine IAF steps after an encoder (``pytorch_amortized.py`` is the peer, written
straightforwardly: no maintained library trains a context-conditioned IAF posterior by
simulation). Both run the same number of Adam steps of the same batch; dgm's time excludes
compilation (reported apart). JSON lines: one per (size, implementation, threads), then a
ratio line ``torch_over_dgm`` (> 1: dgm is faster) against the faster PyTorch setting.

    python benchmarks/bench_amortized.py --sizes 2x5,20x100 --steps 2000 --repeats 3
"""

import argparse
import json
import statistics
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

import dgm
from dgm.inference.additive_noise import AdditiveNoise

SIGMA = 0.3


def _dgm(a, args, hidden, context):
    k = a.shape[1]
    noise = AdditiveNoise(lambda z: jnp.asarray(a, z.dtype) @ z, k, a.shape[0], SIGMA)
    times, result = [], None
    for r in range(args.repeats):
        result = dgm.amortize(
            noise.log_joint, noise.simulate, k, key=jax.random.key(r), num_steps=args.steps,
            batch_size=args.batch, hidden_size=hidden, context_size=context,
        )  # fmt: skip
        times.append(result.wall_s)
    count = sum(x.size for x in jax.tree.leaves(eqx.filter(result.q, eqx.is_inexact_array)))
    count -= 2 * a.shape[0]  # y_shift, y_scale: fixed, not trained
    const = 0.5 * (k + a.shape[0]) * np.log(2 * np.pi) + a.shape[0] * np.log(SIGMA)
    final = float(result.losses[-200:].mean() - const)  # in the peer's units (no constants)
    return statistics.median(times), result.compile_s, count, final


def _torch(a, args, hidden, context, threads):
    import pytorch_amortized as peer
    import torch

    torch.set_num_threads(threads)
    times = []
    for r in range(args.repeats):
        torch.manual_seed(r)
        q = peer.AmortizedQ(a.shape[1], a.shape[0], hidden, context, 2)
        t0 = time.perf_counter()
        losses = peer.train(q, a, SIGMA, args.steps, args.batch)
        times.append(time.perf_counter() - t0)
    count = sum(p.numel() for p in q.parameters())
    return statistics.median(times), count, float(losses[-200:].mean())


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", default="2x5,20x100", help="latent x outputs, comma-separated")
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--torch-threads", default="1,2", help="PyTorch peer threads; 0: none")
    args = parser.parse_args()
    for size in args.sizes.split(","):
        k, n = map(int, size.split("x"))
        hidden, context = (64, 16) if k * n <= 100 else (128, 32)
        a = np.random.default_rng(0).normal(size=(n, k)) / np.sqrt(k)
        base = {"bench": "amortized", "latent": k, "obs": n, "hidden": hidden, "steps": args.steps}
        dgm_s, compile_s, dgm_count, dgm_loss = _dgm(a, args, hidden, context)
        row = base | {"impl": "dgm", "s_median": dgm_s, "ms_per_step": 1e3 * dgm_s / args.steps}
        print(json.dumps(row | {"compile_s": compile_s, "final_loss": dgm_loss}), flush=True)
        best = None
        for threads in (t for t in map(int, args.torch_threads.split(",")) if t > 0):
            try:
                t_s, t_count, t_loss = _torch(a, args, hidden, context, threads)
            except ImportError as err:
                print(json.dumps(base | {"impl": "pytorch", "skipped": f"no torch ({err})"}))
                break
            assert t_count == dgm_count, (t_count, dgm_count)
            row = base | {"impl": "pytorch", "threads": threads, "s_median": t_s}
            row |= {"ms_per_step": 1e3 * t_s / args.steps, "final_loss": t_loss}
            print(json.dumps(row), flush=True)
            best = t_s if best is None else min(best, t_s)
        if best is not None:
            ratio = {"bench": "amortized_ratio", "latent": k, "obs": n, "params": dgm_count}
            print(json.dumps(ratio | {"torch_over_dgm": best / dgm_s}), flush=True)


if __name__ == "__main__":
    main()
