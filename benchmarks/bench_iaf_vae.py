"""IAF ResNet VAE training throughput at the ``mnist`` preset, with a profile of the step.

    PYTHONPATH=src python benchmarks/bench_iaf_vae.py --posteriors down_iaf2_nl,down_diag \
        --repeats 10

For each posterior variant (the ``mnist`` preset: n_h 64, n_z 32, depths [2, 2], batch 16,
32×32 padded binary images) one JSON line per piece, timed after compiling, median and
minimum wall seconds and process CPU seconds (all threads) over ``--repeats``, in turn so
that every piece sees the same load:

- ``train_step``: the experiment's jitted update (free-bits loss, gradient, Adamax, Polyak
  average, NaN check), with ``images_per_s``;
- ``forward``: the loss alone (bottom-up, top-down, likelihood);
- ``forward_in_map``: the same inside ``lax.map`` (a loop body, as the importance-sampled
  score runs it; XLA:CPU once ran the channel-first AR convolutions 5× slower there);
- ``up_pass``: the encoder conv and the bottom-up pass alone;
- ``ar_nets``: the IAF networks alone, on every block's z and context shapes;
- ``value_and_grad``: forward and backward, no update; ``backward`` is its time less
  ``forward``'s.

- ``pytorch_train_step``: the same model and update written in PyTorch
  (``pytorch_iaf_vae.py``, ``down_*`` posteriors; ``--torch-threads`` threads, 2 by default,
  like XLA's two), timed in the same rounds; its parameter count must equal dgm's. Then one
  ``iaf_vae_vs_pytorch`` line: both images/s round by round and the ratio of the medians
  (dgm over PyTorch, > 1: dgm is faster).

No maintained IAF-VAE exists in JAX or PyTorch; the PyTorch peer is written here.
"""

import os

from dgm._runtime import configure_cpu

# Idle OpenMP threads sleep instead of spinning: with the 2 cores shared (load 7), PyTorch's 2
# spinning threads took 4-16 s per update (5-9 CPU s) against 0.5-0.9 s (0.47 CPU s) passive.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
configure_cpu()

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_draw import timed  # noqa: E402

from dgm.experiments import iaf_vae as experiment  # noqa: E402
from dgm.models import _iaf_ar, _iaf_blocks, iaf_vae  # noqa: E402


def _ar_fn(model):
    """Every block's AR network on its z shape (zero context), in one jitted call."""

    def blocks(levels):
        for head, tail in levels:
            yield head
            if tail is not None:
                params, static = eqx.partition(tail, eqx.is_array)
                for i in range(jax.tree.leaves(params)[0].shape[0]):
                    yield eqx.combine(jax.tree.map(lambda a, i=i: a[i], params), static)

    @eqx.filter_jit
    def run(levels, noise):
        zs = [z for head, tail in noise for z in ([head] + ([] if tail is None else list(tail)))]
        out = jnp.zeros(())
        for block, z in zip(blocks(levels), zs, strict=True):
            if block.ar is None:
                continue
            ctx = jnp.zeros((*z.shape[:-1], block.n_h))
            _, (m, s) = _iaf_ar.apply(block.ar, z, ctx, None)
            out = out + jnp.sum(m) + jnp.sum(s)
        return out

    return lambda noise: run(model.levels, noise)


def num_parameters(model) -> int:
    """Trainable scalars: the inexact arrays (masks are boolean and do not count)."""
    return sum(a.size for a in jax.tree.leaves(eqx.filter(model, eqx.is_inexact_array)))


def torch_piece(posterior: str, x, dgm_count: int):
    """The PyTorch update as a zero-argument callable, or ``None`` when torch is missing or
    the posterior is not a ``down_*`` one."""
    try:
        import torch
        from pytorch_iaf_vae import TorchIAFVAE, train_step_fn
        from pytorch_iaf_vae import num_parameters as torch_count
    except ImportError as err:
        _line(bench="iaf_vae", posterior=posterior, impl="pytorch", skipped=f"no torch ({err})")
        return None
    if not posterior.startswith("down_"):
        _line(bench="iaf_vae", posterior=posterior, impl="pytorch", skipped="down_* only")
        return None
    config = experiment.PRESETS["mnist"]
    torch.manual_seed(0)
    model = TorchIAFVAE(config.n_h, config.n_z, config.depths, posterior, config.margs.depth_ar)
    count = torch_count(model)
    _line(bench="iaf_vae", posterior=posterior, parameters_dgm=dgm_count, parameters_pytorch=count)
    if count != dgm_count:
        raise AssertionError(f"parameter counts differ: dgm {dgm_count}, PyTorch {count}")
    step = train_step_fn(model, config.alpha, 1 - config.beta1, 1 - config.beta2, config.polyak,
                         config.margs.kl_min)  # fmt: skip
    xt = torch.as_tensor(np.asarray(x).transpose(0, 3, 1, 2).copy())
    return lambda: step(xt)


def _line(**kw):
    print(json.dumps(kw), flush=True)


def pieces(posterior: str, batch: int, torch_peer: bool = True):
    """The jitted pieces of one variant, each a zero-argument callable (blocking)."""
    config = experiment.PRESETS["mnist"]
    config = experiment.Config(**{**config.__dict__,
                                  "margs": experiment.ModelArgs(posterior=posterior)})  # fmt: skip
    x = (jax.random.uniform(jax.random.key(1), (batch, 32, 32, 1)) < 0.2).astype(jnp.float32)
    model = experiment.build_model(config, jax.random.key(0))
    model = iaf_vae.data_dependent_init(model, x, jax.random.key(2))
    trainer = experiment._trainer(config.alpha, config.beta1, config.beta2, config.polyak, 10**9)
    state = {"s": trainer.init(model), "i": 0}
    hyper = {"kl_min": jnp.float32(config.margs.kl_min), "update_index": jnp.float32(0)}
    noise = iaf_vae.draw_noise(model, jax.random.key(3), batch)

    def step():
        state["s"], metrics = trainer.step(state["s"], (x, hyper), jax.random.key(state["i"]))
        state["i"] += 1

    def cost(m, k):
        return experiment.loss(m, (x, hyper), k)[0]

    loss = eqx.filter_jit(cost)
    in_map = eqx.filter_jit(lambda m, k: jax.lax.map(lambda kk: cost(m, kk), k[None]))
    grad = eqx.filter_jit(eqx.filter_value_and_grad(cost))

    @eqx.filter_jit
    def up(m):
        h = m.x_enc(x - 0.5)
        return _iaf_blocks.up_pass(m.levels, h, noise, None)[1]

    ar = _ar_fn(model)
    key = jax.random.key(4)
    peer = torch_piece(posterior, x, num_parameters(model)) if torch_peer else None
    return {
        "train_step": step,
        "forward": lambda: jax.block_until_ready(loss(model, key)),
        "forward_in_map": lambda: jax.block_until_ready(in_map(model, key)),
        "up_pass": lambda: jax.block_until_ready(up(model)),
        "ar_nets": lambda: jax.block_until_ready(ar(noise)),
        "value_and_grad": lambda: jax.block_until_ready(grad(model, key)),
    } | ({} if peer is None else {"pytorch_train_step": peer})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--posteriors", default="down_iaf2_nl,down_diag")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--torch-threads", type=int, default=2, help="0: no PyTorch peer")
    args = parser.parse_args()
    if args.torch_threads:
        try:
            import torch

            torch.set_num_threads(args.torch_threads)
        except ImportError:
            pass
    for posterior in args.posteriors.split(","):
        fns = pieces(posterior, args.batch, torch_peer=args.torch_threads > 0)
        compile_s = {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            jax.block_until_ready(jax.live_arrays())
            compile_s[name] = time.perf_counter() - t0
        times = {name: ([], []) for name in fns}
        for _ in range(args.repeats):  # round-robin: every piece sees the same load
            for name, fn in fns.items():
                w, c = timed(lambda fn=fn: (fn(), jax.block_until_ready(jax.live_arrays())), 1)
                times[name][0].extend(w)
                times[name][1].extend(c)
        med = {name: statistics.median(w) for name, (w, _) in times.items()}
        for name, (wall, cpu) in times.items():
            row = {"bench": "iaf_vae", "posterior": posterior, "piece": name,
                   "median_s": med[name], "min_s": min(wall), "cpu_s": statistics.median(cpu),
                   "first_call_s": compile_s[name], "batch": args.batch,
                   "repeats": args.repeats}  # fmt: skip
            if name in ("train_step", "pytorch_train_step"):
                row["images_per_s"] = args.batch / med[name]
            print(json.dumps(row), flush=True)
        print(json.dumps({"bench": "iaf_vae", "posterior": posterior, "piece": "backward",
                          "median_s": med["value_and_grad"] - med["forward"],
                          "share_of_step": (med["value_and_grad"] - med["forward"])
                          / med["train_step"]}), flush=True)  # fmt: skip
        if "pytorch_train_step" in times:
            cpu = {name: statistics.median(c) for name, (_, c) in times.items()}
            dgm_w, torch_w = times["train_step"][0], times["pytorch_train_step"][0]
            _line(bench="iaf_vae_vs_pytorch", posterior=posterior, batch=args.batch,
                  torch_threads=args.torch_threads,
                  dgm_images_per_s=[round(args.batch / w, 2) for w in dgm_w],
                  pytorch_images_per_s=[round(args.batch / w, 2) for w in torch_w],
                  dgm_over_pytorch=round(med["pytorch_train_step"] / med["train_step"], 3),
                  dgm_over_pytorch_cpu=round(cpu["pytorch_train_step"] / cpu["train_step"],
                                             3))  # fmt: skip


if __name__ == "__main__":
    main()
