"""svgd-bnn: which factors move the Boston test log-likelihood (an accuracy study, not timing).

Trains the paper preset split by split and scores the same particles three ways:
``loglik`` (the original: dev-set gamma, mixture over particles), ``loglik_per_particle``
(dev-set gamma, mean of per-particle log-liks) and ``loglik_train_gamma`` (mixture with
each particle's training gamma converted to original units, ``log gamma - 2 log s_y``,
in place of the dev-set heuristic). Training factors are flags. Prints one JSON line per
split, then mean ± s.e. over the splits. Results and conclusions: ``docs/svgd_bnn.md``.

    python benchmarks/svgd_bnn_factors.py --splits reference            # the paper's splits
    python benchmarks/svgd_bnn_factors.py --splits random --seed 3
    python benchmarks/svgd_bnn_factors.py --alpha 0 --iterations 6000   # step rule, length
"""

import argparse
import dataclasses
import json

from dgm._runtime import configure_cpu

configure_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from scipy.special import logsumexp  # noqa: E402

from dgm.data import svgd as svgd_data  # noqa: E402
from dgm.experiments import svgd_bnn as bnn  # noqa: E402
from dgm.inference import svgd  # noqa: E402
from dgm.inference.svgd_driver import SVGDRunner  # noqa: E402


def one_split(config, key, index, x, y, runner, predict):
    net = bnn.Net(x.shape[1], config.num_hidden)
    key_split, key_init = jax.random.split(key)
    perm = bnn.split_permutation(config, key_split, index, len(y))
    xtr, ytr, xdev, ydev, xte, yte = bnn.split_data(x, y, perm, config.test_fraction)
    mx, sx = xtr.mean(0), np.where(xtr.std(0) == 0, 1.0, xtr.std(0))
    my, sy = ytr.mean(), ytr.std()
    data = (jnp.asarray((xtr - mx) / sx), jnp.asarray((ytr - my) / sy))
    theta0 = bnn.init_particles(key_init, net, config, *data)
    result = runner.run(svgd.init(theta0), config.num_iterations, config.step_size, data)
    params = jnp.asarray(result.particles)

    def pred(xs):
        return np.asarray(predict(params, jnp.asarray((xs - mx) / sx)), np.float64) * sy + my

    pdev, pte = pred(xdev), pred(xte)
    log_gamma = np.asarray(result.particles[:, -2], np.float64)
    row = bnn.evaluate(pdev, ydev, pte, yte, log_gamma)
    dev_gamma = -np.log(np.mean((pdev - ydev) ** 2, axis=1))  # what the heuristic keeps
    lik = bnn.gaussian_loglik(pte, yte[None, :], dev_gamma[:, None])
    row["loglik_per_particle"] = float(lik.mean())
    lik = bnn.gaussian_loglik(pte, yte[None, :], (log_gamma - 2 * np.log(sy))[:, None])
    row["loglik_train_gamma"] = float(np.mean(logsumexp(lik, axis=0) - np.log(len(lik))))
    return row | {"split": index, "status": result.status}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", choices=bnn.SPLITS, default="reference")
    parser.add_argument("--num-splits", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--iterations", type=int, default=2000)
    args = parser.parse_args()
    config = dataclasses.replace(
        bnn.PRESETS["paper"],
        splits=args.splits,
        num_splits=args.num_splits,
        alpha=args.alpha,
        num_iterations=args.iterations,
    )
    x, y = svgd_data.load_boston()
    net = bnn.Net(x.shape[1], config.num_hidden)
    log_prior, log_lik = bnn.make_model(net, config)
    score = svgd.make_score_fn(
        log_prior_fn=log_prior, log_likelihood_fn=log_lik, batch_size=config.batch_size
    )
    step = svgd.build_step(score, alpha=config.alpha, track_ksd=False)
    runner = SVGDRunner(step, chunk_size=min(config.num_iterations, 500))
    predict = jax.jit(jax.vmap(net.predict, in_axes=(0, None)))
    key, rows = jax.random.key(args.seed), []
    for i in range(config.num_splits):
        rows.append(one_split(config, jax.random.fold_in(key, i), i, x, y, runner, predict))
        print(json.dumps(rows[-1]), flush=True)
    for name in ("rmse", "loglik", "loglik_per_particle", "loglik_train_gamma"):
        v = np.array([r[name] for r in rows])
        se = v.std(ddof=1) / np.sqrt(len(v)) if len(v) > 1 else float("nan")
        print(json.dumps({"summary": name, "mean": float(v.mean()), "se": float(se)}))


if __name__ == "__main__":
    main()
