"""Test-evaluate the best-by-validation model held in a `dmm-polyphonic` run's checkpoint.

A long run evaluates on the test set only when it finishes; this reads its checkpoint
(written atomically, so a running run's is safe to read) and reports the paper's three
numbers with the experiment's own test split and evaluation. Not a timing script.

Run:  python benchmarks/eval_dmm_checkpoint.py RUN_DIR [--is-samples 2000]
(runs of a preset with `--dataset` only; other `--set` overrides are refused)
"""

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from dgm._runtime import configure_cpu

configure_cpu()

import jax  # noqa: E402

from dgm import training  # noqa: E402
from dgm.data.polyphonic import NUM_PITCHES  # noqa: E402
from dgm.experiments import _dmm, _training  # noqa: E402
from dgm.experiments import dmm_polyphonic as dp  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--is-samples", type=int, default=2000)
    args = parser.parse_args()
    saved = json.loads((args.run_dir / "config.json").read_text())
    if saved["preset"] not in dp.PRESETS:
        sys.exit(f"error: unknown preset {saved['preset']!r} in {args.run_dir / 'config.json'}")
    # a run with other --set overrides fails the checkpoint's fingerprint check, with a message
    config = dataclasses.replace(dp.PRESETS[saved["preset"]], dataset=saved["config"]["dataset"])
    model = _dmm.build_model(config.model, NUM_PITCHES, "bernoulli", jax.random.key(0))
    state = training.Trainer.from_config(_dmm.dmm_loss, config.train).init(model)
    (_, _, best, _), header = training.load_training(  # v1 and v2 checkpoints
        args.run_dir / "checkpoints" / "train.eqx",
        (state.model, state.opt_state, model, state.averaged),
        _training.fingerprint(config, dp._ADDED_FIELDS),
    )
    t0 = time.perf_counter()
    test = dp.splits(config)[1]["test"]
    scores = dp.evaluate_test(config, best, test, jax.random.key(1), is_samples=args.is_samples)
    keys = ("epoch", "best_epoch", "best_valid")
    row = {k: header.get(k) for k in keys} | {"is_samples": args.is_samples, **scores}
    print(json.dumps(row | {"eval_s": time.perf_counter() - t0}))


if __name__ == "__main__":
    main()
