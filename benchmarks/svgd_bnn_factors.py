"""svgd-bnn: which factors move the Boston test log-likelihood (an accuracy study, not timing).

Trains the paper preset split by split and scores the same particles three ways:
``loglik`` (the original: dev-set gamma, mixture over particles), ``loglik_per_particle``
(dev-set gamma, mean of per-particle log-liks) and ``loglik_train_gamma`` (mixture with
each particle's training gamma converted to original units, ``log gamma - 2 log s_y``,
in place of the dev-set heuristic). Training factors are flags. Prints one JSON line per
split, then mean ± s.e. over the splits. Results and conclusions: ``docs/svgd_bnn.md``.

    python benchmarks/svgd_bnn_factors.py --split-source reference      # the paper's splits
    python benchmarks/svgd_bnn_factors.py --split-source random --seed 3
    python benchmarks/svgd_bnn_factors.py --alpha 0 --iterations 6000   # step rule, length
"""

import argparse
import dataclasses
import json

from dgm._runtime import configure_cpu

configure_cpu()

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dgm.data import svgd as svgd_data  # noqa: E402
from dgm.experiments import svgd_bnn as bnn  # noqa: E402


def one_split(config, key, index, x, y, runner_cache):
    fit = bnn.train_split(config, key, index, x, y, runner_cache)
    row = bnn.evaluate(fit.pred_dev, fit.y_dev, fit.pred_test, fit.y_test, fit.log_gamma)
    dev_gamma, _ = bnn.dev_set_gamma(fit.pred_dev, fit.y_dev, fit.log_gamma)
    lik = bnn.gaussian_loglik(fit.pred_test, fit.y_test[None, :], dev_gamma[:, None])
    row["loglik_per_particle"] = float(lik.mean())
    train_gamma = fit.log_gamma - 2 * np.log(fit.y_scale)  # in original units
    row["loglik_train_gamma"] = bnn.mixture_loglik(fit.pred_test, fit.y_test, train_gamma)
    return row | {"split": index, "status": fit.result.status}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split-source", choices=bnn.SPLIT_SOURCES, default="reference")
    parser.add_argument("--num-splits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    config = dataclasses.replace(
        bnn.PRESETS["paper"],
        split_source=args.split_source,
        num_splits=args.num_splits,
        alpha=args.alpha,
        num_iterations=args.iterations,
    )
    x, y = svgd_data.load_boston()
    key, rows, cache = jax.random.key(args.seed), [], {}
    for i in range(config.num_splits):
        rows.append(one_split(config, jax.random.fold_in(key, i), i, x, y, cache))
        print(json.dumps(rows[-1]), flush=True)
    for name in ("rmse", "loglik", "loglik_per_particle", "loglik_train_gamma"):
        v = np.array([r[name] for r in rows])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        print(json.dumps({"summary": name, "mean": float(v.mean()), "se": float(se)}))


if __name__ == "__main__":
    main()
