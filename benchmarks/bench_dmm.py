"""Seconds per JSB training epoch of the DMM at Pyro's example sizes.

z 100, transition 200, emission 100, RNN 600, batch 20 (Pyro ``examples/dmm.py``). Each
configuration runs one untimed epoch (compiling every bucket shape), then ``--repeats``
timed epochs; prints one JSON line per configuration (median and minimum seconds per epoch,
compile time on its own field). When ``torch`` and ``pyro-ppl`` are installed (the ``bench``
extra), Pyro's DMM (``pyro_dmm.py``) is timed in the same run on the same batches, and a
``dmm_jsb_epoch_ratio`` line gives Pyro's seconds over dgm's for each IAF setting. Pyro with
IAF steps is slow (minutes per epoch), so by default only one of its batches is timed and the
epoch is extrapolated by padded time steps (``"extrapolated": true``).

    PYTHONPATH=src DGM_DATA_DIR=../shared/data python benchmarks/bench_dmm.py
"""

from dgm._runtime import configure_cpu

configure_cpu()

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


def bench(cell: str, num_iafs: int, bucket_width: int, repeats: int, shard: bool) -> dict:
    train = load_polyphonic("jsb")["train"]
    config = _dmm.ModelConfig(
        z_dim=100, transition_dim=200, emission_dim=100, rnn_dim=600, cell=cell, num_iafs=num_iafs
    )
    model = _dmm.build_model(config, NUM_PITCHES, "bernoulli", jax.random.key(0))
    tcfg = training.TrainConfig(batch_size=20, bucket_width=bucket_width)
    optimizer = training.make_optimizer(tcfg)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    step = training.make_train_step(_dmm.dmm_loss, optimizer)
    loader = training.SequenceLoader(train.x, train.mask, 20, bucket_width=bucket_width)
    hyper = {"kl_weight": jnp.asarray(1.0, jnp.float32), "l2": jnp.asarray(0.05, jnp.float32)}
    key = jax.random.key(1)
    t0 = time.perf_counter()
    model, opt_state = _epoch(
        step, model, opt_state, loader, np.random.default_rng(0), key, hyper, shard
    )
    first = time.perf_counter() - t0
    times = []
    for r in range(repeats):
        t0 = time.perf_counter()
        rng = np.random.default_rng(r + 1)
        model, opt_state = _epoch(step, model, opt_state, loader, rng, key, hyper, shard)
        times.append(time.perf_counter() - t0)
    return {
        "benchmark": "dmm_jsb_epoch",
        "impl": "dgm",
        "cell": cell,
        "num_iafs": num_iafs,
        "bucket_width": bucket_width,
        "data_parallel_devices": len(jax.local_devices()) if shard else 1,
        "batches": loader.num_batches,
        "s_per_epoch_median": float(np.median(times)),
        "s_per_epoch_min": float(np.min(times)),
        "first_epoch_incl_compile_s": first,
        "devices": str(jax.devices()[0]),
    }


def _pyro_batches(bucket_width: int) -> list:
    """The dgm loader's batches of one epoch as NumPy arrays, for Pyro (same work)."""
    train = load_polyphonic("jsb")["train"]
    loader = training.SequenceLoader(train.x, train.mask, 20, bucket_width=bucket_width)
    rows = loader.order(np.random.default_rng(1))
    return [tuple(np.array(a) for a in loader.batch(row)) for row in rows]


def bench_pyro(num_iafs: int, bucket_width: int, max_batches: int, threads: int) -> dict:
    """Pyro's DMM (``pyro_dmm.py``) on the same JSB batches; see its ``time_epoch``."""
    import pyro
    import torch

    torch.set_num_threads(threads)
    import pyro_dmm

    timing = pyro_dmm.time_epoch(_pyro_batches(bucket_width), num_iafs, max_batches or None)
    return {
        "benchmark": "dmm_jsb_epoch",
        "impl": "pyro",
        "cell": "relu-rnn",
        "num_iafs": num_iafs,
        "bucket_width": bucket_width,
        "s_per_epoch_median": timing["s_per_epoch"],
        **timing,
        "torch_threads": threads,
        "versions": f"torch {torch.__version__}, pyro {pyro.__version__}",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--iafs", default="0,2")
    parser.add_argument("--bucket-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-shard", action="store_true", help="one device, no data parallelism")
    parser.add_argument("--no-pyro", action="store_true", help="skip the Pyro comparison")
    parser.add_argument(
        "--pyro-batches",
        default="0,1",
        help="Pyro batches timed per IAF setting (0 = the whole epoch); fewer are "
        "extrapolated to the epoch by padded time steps",
    )
    parser.add_argument("--torch-threads", type=int, default=1)
    args = parser.parse_args()
    iafs = [int(v) for v in args.iafs.split(",")]
    pyro_batches = [int(v) for v in args.pyro_batches.split(",")]
    pyro_batches += [pyro_batches[-1]] * (len(iafs) - len(pyro_batches))
    dgm_rnn = {}
    for cell in args.cells.split(","):
        for num_iafs in iafs:
            row = bench(cell, num_iafs, args.bucket_width, args.repeats, not args.no_shard)
            dgm_rnn[(cell, num_iafs)] = row["s_per_epoch_median"]
            print(json.dumps(row), flush=True)
    if args.no_pyro:
        return
    try:
        import pyro  # noqa: F401
        import torch  # noqa: F401
    except ImportError as err:
        print(json.dumps({"benchmark": "dmm_jsb_epoch", "impl": "pyro", "skipped": str(err)}))
        return
    for num_iafs, batches in zip(iafs, pyro_batches, strict=True):
        row = bench_pyro(num_iafs, args.bucket_width, batches, args.torch_threads)
        print(json.dumps(row), flush=True)
        for (cell, k), seconds in dgm_rnn.items():
            if k == num_iafs:
                ratio = {
                    "benchmark": "dmm_jsb_epoch_ratio",
                    "num_iafs": num_iafs,
                    "dgm_cell": cell,
                    "pyro_s_per_epoch": row["s_per_epoch"],
                    "dgm_s_per_epoch": seconds,
                    "pyro_over_dgm": row["s_per_epoch"] / seconds,
                    "pyro_extrapolated": row["extrapolated"],
                }
                print(json.dumps(ratio), flush=True)


if __name__ == "__main__":
    main()
