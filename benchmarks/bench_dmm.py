"""Seconds per JSB training epoch of the DMM at Pyro's example sizes.

z 100, transition 200, emission 100, RNN 600, batch 20 (Pyro ``examples/dmm.py``). Each
configuration runs one untimed epoch (compiling every bucket shape), then ``--repeats``
timed epochs; prints one JSON line per configuration (median and minimum seconds per epoch,
compile time on its own field). When ``torch`` and ``pyro-ppl`` are installed (the ``bench``
extra), Pyro's DMM (``pyro_dmm.py``) is timed in the same run on the same batches, and a
``dmm_jsb_epoch_ratio`` line gives Pyro's median seconds over dgm's for each IAF setting. Pyro with
IAF steps is slow (minutes per epoch), so by default only one of its batches is timed and the
epoch is extrapolated by padded time steps (``"extrapolated": true``).

    PYTHONPATH=src DGM_DATA_DIR=../shared/data python benchmarks/bench_dmm.py

dgm's guide reads x directly, as Pyro's does, unless ``--embedding`` adds the paper's
relu(W x) layer (600 × 600 more input projection per frame). Pyro runs alternately with dgm,
round by round, so both see the same load on a shared machine; the ``cpu_s`` fields (process
CPU time, all threads) are steadier than wall time when other jobs share the cores.
"""

from dgm._runtime import configure_cpu

configure_cpu(reuse_freed_memory=True)  # as `dgm run dmm-*`

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import equinox as eqx  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dgm import training  # noqa: E402
from dgm.data.polyphonic import NUM_PITCHES, load_polyphonic  # noqa: E402
from dgm.experiments import _dmm  # noqa: E402


def _epoch(step, model, opt_state, loader, rng, key, hyper, shard):
    for i, row in enumerate(loader.order(rng)):
        data = training.shard_batch(loader.batch(row)) if shard else loader.batch(row)
        model, opt_state, metrics = step(
            model, opt_state, (data, hyper), jax.random.fold_in(key, i)
        )
    jax.block_until_ready(metrics["loss"])
    return model, opt_state


def dgm_timer(cell: str, num_iafs: int, bucket_width: int, shard: bool, embedding: bool):
    """``(timed(round) -> seconds, info)``; the first, compiling epoch is run here."""
    train = load_polyphonic("jsb")["train"]
    config = _dmm.ModelConfig(
        z_dim=100,
        transition_dim=200,
        emission_dim=100,
        rnn_dim=600,
        cell=cell,
        num_iafs=num_iafs,
        input_embedding=embedding,
    )
    model = _dmm.build_model(config, NUM_PITCHES, "bernoulli", jax.random.key(0))
    tcfg = training.TrainConfig(batch_size=20, bucket_width=bucket_width)
    optimizer = training.make_optimizer(tcfg)
    state = [model, optimizer.init(eqx.filter(model, eqx.is_inexact_array))]
    step = training.make_train_step(_dmm.dmm_loss, optimizer)
    loader = training.SequenceLoader(train.x, train.mask, 20, bucket_width=bucket_width)
    hyper = {"kl_weight": jnp.asarray(1.0, jnp.float32), "l2": jnp.asarray(0.05, jnp.float32)}
    key = jax.random.key(1)

    def timed(round_: int) -> tuple[float, float]:
        t0, c0 = time.perf_counter(), time.process_time()
        rng = np.random.default_rng(round_)
        state[:] = _epoch(step, *state, loader, rng, key, hyper, shard)
        return time.perf_counter() - t0, time.process_time() - c0

    first = timed(0)[0]
    info = {
        "benchmark": "dmm_jsb_epoch",
        "impl": "dgm",
        "cell": cell,
        "input_embedding": embedding,
        "num_iafs": num_iafs,
        "bucket_width": bucket_width,
        "data_parallel_devices": len(jax.local_devices()) if shard else 1,
        "batches": loader.num_batches,
        "first_epoch_incl_compile_s": first,
        "devices": str(jax.devices()[0]),
    }
    return timed, info


def _pyro_batches(bucket_width: int) -> list:
    """The dgm loader's batches of one epoch as NumPy arrays, for Pyro (same work)."""
    train = load_polyphonic("jsb")["train"]
    loader = training.SequenceLoader(train.x, train.mask, 20, bucket_width=bucket_width)
    rows = loader.order(np.random.default_rng(1))
    return [tuple(np.array(a) for a in loader.batch(row)) for row in rows]


def pyro_timer(num_iafs: int, bucket_width: int, max_batches: int, threads: int):
    """Pyro's DMM (``pyro_dmm.py``) on the same JSB batches; ``(timed, info)``."""
    import pyro
    import torch

    torch.set_num_threads(threads)
    import pyro_dmm

    timed = pyro_dmm.epoch_timer(_pyro_batches(bucket_width), num_iafs, max_batches)
    info = {
        "benchmark": "dmm_jsb_epoch",
        "impl": "pyro",
        "cell": "relu-rnn",
        "num_iafs": num_iafs,
        "bucket_width": bucket_width,
        "torch_threads": threads,
        "versions": f"torch {torch.__version__}, pyro {pyro.__version__}",
    }
    return timed, info


def _have_pyro() -> str:
    try:
        import pyro  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        return str(err)
    return ""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--iafs", default="0,2")
    parser.add_argument("--bucket-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shard", action="store_true", help="split batches over host devices")
    parser.add_argument("--no-shard", action="store_true", help=argparse.SUPPRESS)  # the default
    parser.add_argument(
        "--embedding",
        action="store_true",
        help="the paper's relu(W x) input embedding before the RNN (Pyro's guide has none)",
    )
    parser.add_argument("--no-pyro", action="store_true", help="skip the Pyro comparison")
    parser.add_argument(
        "--pyro-batches",
        default="0,1",
        help="Pyro batches timed per round for each IAF setting (0 = the whole epoch); "
        "fewer are extrapolated to the epoch by padded time steps",
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    iafs = [int(v) for v in args.iafs.split(",")]
    pyro_batches = [int(v) for v in args.pyro_batches.split(",")]
    pyro_batches = (pyro_batches + [pyro_batches[-1]] * len(iafs))[: len(iafs)]
    missing = "skipped by --no-pyro" if args.no_pyro else _have_pyro()
    if missing:
        print(json.dumps({"benchmark": "dmm_jsb_epoch", "impl": "pyro", "skipped": missing}))
    for cell_index, cell in enumerate(args.cells.split(",")):
        for num_iafs, batches in zip(iafs, pyro_batches, strict=True):
            dgm, row = dgm_timer(cell, num_iafs, args.bucket_width, args.shard, args.embedding)
            with_pyro = cell_index == 0 and not missing
            if with_pyro:  # Pyro in the same rounds, alternating with dgm
                threads = args.torch_threads
                pyro, pyro_row = pyro_timer(num_iafs, args.bucket_width, batches, threads)
            times, cpu, pyro_times = [], [], []
            for r in range(1, args.repeats + 1):
                wall, cpu_s = dgm(r)
                times.append(wall)
                cpu.append(cpu_s)
                if with_pyro:
                    pyro_times.append(pyro(r))
            row |= {
                "s_per_epoch_median": float(np.median(times)),
                "s_per_epoch_min": min(times),
                "cpu_s_per_epoch_median": float(np.median(cpu)),
            }
            print(json.dumps(row), flush=True)
            if not with_pyro:
                continue
            pyro_s = [p["s_per_epoch"] for p in pyro_times]
            pyro_row |= {
                "s_per_epoch_median": float(np.median(pyro_s)),
                "s_per_epoch_min": min(pyro_s),
                "cpu_s_per_epoch_median": float(
                    np.median([p["cpu_s_per_epoch"] for p in pyro_times])
                ),
                "timed_batches_per_round": pyro_times[0]["timed_batches"],
                "extrapolated": pyro_times[0]["extrapolated"],
                "finite_loss": all(p["finite_loss"] for p in pyro_times),
            }
            print(json.dumps(pyro_row), flush=True)
            ratio = {
                "benchmark": "dmm_jsb_epoch_ratio",
                "num_iafs": num_iafs,
                "dgm_cell": cell,
                "dgm_input_embedding": args.embedding,
                "pyro_s_per_epoch_median": pyro_row["s_per_epoch_median"],
                "dgm_s_per_epoch_median": row["s_per_epoch_median"],
                "pyro_over_dgm": pyro_row["s_per_epoch_median"] / row["s_per_epoch_median"],
                "pyro_over_dgm_cpu_time": pyro_row["cpu_s_per_epoch_median"]
                / row["cpu_s_per_epoch_median"],
                "pyro_extrapolated": pyro_row["extrapolated"],
                "rounds": args.repeats,
            }
            print(json.dumps(ratio), flush=True)


if __name__ == "__main__":
    main()
