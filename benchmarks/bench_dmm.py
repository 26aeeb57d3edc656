"""Seconds per JSB training epoch of the DMM at Pyro's example sizes.

z 100, transition 200, emission 100, RNN 600, batch 20 (Pyro ``examples/dmm.py``). Each
configuration runs one untimed epoch (compiling every bucket shape), then ``--repeats``
timed epochs; prints one JSON line per configuration (median and minimum seconds per epoch,
compile time on its own field).

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", default="rnn,gru,lstm")
    parser.add_argument("--iafs", default="0,2")
    parser.add_argument("--bucket-width", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-shard", action="store_true", help="one device, no data parallelism")
    args = parser.parse_args()
    for cell in args.cells.split(","):
        for num_iafs in (int(v) for v in args.iafs.split(",")):
            print(
                json.dumps(
                    bench(cell, num_iafs, args.bucket_width, args.repeats, not args.no_shard)
                ),
                flush=True,
            )
    try:
        import pyro  # noqa: F401
    except ImportError:
        print(json.dumps({"benchmark": "dmm_jsb_epoch", "impl": "pyro", "skipped": "no pyro"}))
    else:
        print(json.dumps({"benchmark": "dmm_jsb_epoch", "impl": "pyro", "skipped": "not wired"}))


if __name__ == "__main__":
    main()
