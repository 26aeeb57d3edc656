"""DRAW training step (forward, backward, Adam update) at batch 100, and sampling time per
image: dgm (JAX) against the same model written straightforwardly in PyTorch
(``pytorch_draw.py``), alternating round by round so both see the same load.

    PYTHONPATH=src python benchmarks/bench_draw.py --configs paper,small --repeats 10

One JSON line per (config, implementation): median and minimum wall seconds per training
step, process CPU seconds per step (all threads; steadier on a shared machine), compile
time; PyTorch once per ``--torch-threads`` count (``pytorch-1t``, ``pytorch-2t``), the same
model and optimizer state stepped by each in turn; then a ``draw_step_ratio`` line (the
faster PyTorch's median over dgm's, and the same for the minima and CPU: > 1, dgm is
faster), and
sampling lines (ms per image, 100 images drawn together). Without torch the peer lines say
``skipped``. ``--bf16`` adds the mixed-precision steps (dgm's ``matmul_dtype="bfloat16"``,
PyTorch's ``torch.autocast``) to the same rounds, with a ``draw_step_ratio_bf16`` line.
``--split-batch`` adds dgm's steps with each batch split over the two host devices
(``split_batch=True``: ``dgm-split``, ``dgm-bf16-split``), each with its own ratio line.
"""

import os

from dgm._runtime import configure_cpu

configure_cpu()
# PyTorch's OpenMP threads spin-wait by default; on a shared 2-core machine that cost its
# 2-thread peer 25 s per step (bench_iaf_vae.py does the same)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dgm.experiments import _draw_eval, draw_mnist  # noqa: E402

CONFIGS = {"paper": "paper", "small": "small", "paper-noattn": "paper-noattn", "quick": "quick"}


def timed(fn, repeats):
    """Wall and process-CPU seconds of ``repeats`` calls of ``fn``."""
    wall, cpu = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - w)
        cpu.append(time.process_time() - c)
    return wall, cpu


def dgm_step(config, x):
    model = draw_mnist.build_model(config, jax.random.key(0))
    cfg = config.train
    trainer = draw_mnist._trainer(
        cfg.learning_rate,
        cfg.b1,
        cfg.b2,
        cfg.clip_norm,
        config.clip,
        1,
        config.matmul_dtype,
        config.split_batch,
    )
    state = {"s": trainer.init(model), "i": 0}
    hyper = {"update_index": jnp.float32(0)}
    xj = jnp.asarray(x)

    def run():
        state["s"], metrics = trainer.step(state["s"], (xj, hyper), jax.random.key(state["i"]))
        state["i"] += 1
        jax.block_until_ready(metrics["loss"])

    t0 = time.perf_counter()
    run()
    return run, time.perf_counter() - t0, model


def torch_step(config, x, bf16=False):
    import torch
    from pytorch_draw import TorchDRAW, train_step_fn

    torch.manual_seed(0)
    model = TorchDRAW(config.num_steps, config.z_size, config.enc_size, config.dec_size,
                      config.read_n if config.read_attn else None,
                      config.write_n if config.write_attn else None)  # fmt: skip
    step, xt = train_step_fn(model, bf16=bf16), torch.as_tensor(x)
    step(xt)
    return (lambda: step(xt)), model


def _line(**kw):
    print(json.dumps(kw), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--configs", default="paper,small")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--torch-threads",
        default="1,2",
        help="PyTorch intra-op thread counts, each timed in the same rounds (default 1,2: dgm "
        "uses both cores; with 2, PyTorch's OpenMP threads spin-wait when the other core is "
        "busy, and a 100×520×1024 matmul fell from 64 to 6 GFLOP/s under load); the ratio "
        "is taken against the faster",
    )
    parser.add_argument(
        "--split-batch",
        action="store_true",
        help="also time dgm's steps with split_batch=True (each batch's rows split over the "
        "host devices, one loss and gradient per device, averaged): `dgm-split`, and "
        "`dgm-bf16-split` with --bf16",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="also time the mixed-precision steps in the same rounds: dgm with "
        "matmul_dtype=bfloat16 (`dgm-bf16`) and PyTorch under torch.autocast(bfloat16) "
        "(`pytorch-Nt-bf16`), with their own ratio line (`draw_step_ratio_bf16`)",
    )
    args = parser.parse_args()
    thread_counts = [int(v) for v in args.torch_threads.split(",")]
    x = (np.random.default_rng(0).uniform(size=(100, 784)) > 0.87).astype(np.float32)
    try:
        import torch
    except ImportError:
        torch = None
    for name in args.configs.split(","):
        config = draw_mnist.PRESETS[CONFIGS[name]]
        run_dgm, compile_s, model = dgm_step(config, x)
        runs = {"dgm": run_dgm}
        for dtype in ("float32", "bfloat16") if args.bf16 else ("float32",):
            for split in (False, True) if args.split_batch else (False,):
                impl = "dgm" + ("-bf16" if dtype == "bfloat16" else "")
                impl += "-split" if split else ""
                if impl != "dgm":
                    variant = dataclasses.replace(config, matmul_dtype=dtype, split_batch=split)
                    runs[impl] = dgm_step(variant, x)[0]
        if torch is not None:
            for suffix in ("", "-bf16") if args.bf16 else ("",):
                step, tmodel = torch_step(config, x, bf16=bool(suffix))
                for n in thread_counts:
                    timed_step = lambda s=step, n=n: (torch.set_num_threads(n), s())  # noqa: E731
                    runs[f"pytorch-{n}t{suffix}"] = timed_step
        times = {k: ([], []) for k in runs}
        for _ in range(args.repeats):  # alternate, one step each, so all see the same load
            for k, fn in runs.items():
                w, c = timed(fn, 1)
                times[k][0].extend(w)
                times[k][1].extend(c)
        for k, (w, c) in times.items():
            _line(bench="draw_train_step", config=name, impl=k, batch=100,
                  median_s=statistics.median(w), min_s=min(w), cpu_s=statistics.median(c),
                  **({"compile_s": compile_s} if k == "dgm" else {}))  # fmt: skip
        if torch is None:
            _line(bench="draw_train_step", config=name, impl="pytorch", skipped="no torch")
        else:
            med = {k: statistics.median(w) for k, (w, _) in times.items()}
            for ours in (k for k in runs if k.startswith("dgm")):
                suffix = "-bf16" if "-bf16" in ours else ""
                peers = [k for k in runs if k.startswith("pytorch") and k.endswith(suffix)]
                peer = min((k for k in peers if suffix or not k.endswith("-bf16")), key=med.get)
                bench = "draw_step_ratio" + ours[3:].replace("-", "_")
                _line(bench=bench, config=name, impl=ours, peer=peer,
                      pytorch_over_dgm=med[peer] / med[ours],
                      pytorch_over_dgm_min=min(times[peer][0]) / min(times[ours][0]),
                      pytorch_over_dgm_cpu=statistics.median(times[peer][1])
                      / statistics.median(times[ours][1]))  # fmt: skip
            torch.set_num_threads(min(thread_counts))
        gen = eqx.filter_jit(_draw_eval._prior_canvases)
        u = jax.random.normal(jax.random.key(1), (100, config.num_steps, config.z_size))
        jax.block_until_ready(gen(model, u))
        w, _ = timed(lambda g=gen, m=model, v=u: jax.block_until_ready(g(m, v)), 5)
        _line(bench="draw_sample", config=name, impl="dgm",
              ms_per_image=1000 * statistics.median(w) / 100)  # fmt: skip
        if torch is not None:
            from pytorch_draw import sample

            w, _ = timed(lambda m=tmodel: sample(m, 100), 5)
            _line(bench="draw_sample", config=name, impl="pytorch",
                  ms_per_image=1000 * statistics.median(w) / 100)  # fmt: skip


if __name__ == "__main__":
    main()
