"""SVGD for Bayesian neural network regression on Boston housing (``python/bayesian_nn.py``).

One hidden ReLU layer of 50 units; ``y ~ N(f(x), 1/gamma)``; every weight ~ N(0, 1/lambda);
``gamma, lambda ~ Gamma(1, rate 0.1)``; a particle is ``[W1, b1, w2, b2, log gamma,
log lambda]``. Per split: 90/10 train/test, the last 10% of the training part (at most
500) held out as a dev set, standardisation with the remaining training part, contiguous
cyclic minibatches of 100, and the dev-set heuristic for ``gamma`` after training, all as
the reference code. Splits are seeded random permutations (``split_source="random"``), or the
20 splits behind the paper's table (``split_source="reference"``): split ``i`` is Python 2.7's
``random.seed(i); random.shuffle(...)``, as in the original's ``python/examples/
bayesian_nn.py`` (commit 11aacf4, marked "to reproduce our results"). Each finished
split's scores are checkpointed: ``--resume`` after an interruption runs only the splits left.
"""

import dataclasses
import json
import random
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from dgm import runs
from dgm.config import check_choice, check_positive
from dgm.data import svgd as svgd_data
from dgm.inference import svgd
from dgm.inference.svgd.driver import SVGDRunner

NAME = "svgd-bnn"
DESCRIPTION = "SVGD Bayesian neural network on Boston housing (RMSE, log-lik vs the paper)"
PAPER = {"rmse": (2.957, 0.099), "loglik": (-2.504, 0.029)}
PBP = {"rmse": (2.977, 0.093), "loglik": (-2.579, 0.052)}
SPLIT_SOURCES = ("random", "reference")


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults: the reference script's ``__main__`` (2000 iterations) and 20 splits.

    ``split_source``: ``"random"`` (seeded from the run's key) or ``"reference"`` (the paper's
    20 splits; split ``i`` is Python 2.7's shuffle after ``random.seed(i)``).
    """

    num_splits: int = 20
    num_particles: int = 20
    num_hidden: int = 50
    num_iterations: int = 2000
    step_size: float = 1e-3
    batch_size: int = 100
    alpha: float = 0.9
    a0: float = 1.0
    b0: float = 0.1
    test_fraction: float = 0.1
    split_source: str = "random"
    data_path: str = ""

    def __post_init__(self):
        for name in ("num_splits", "num_particles", "num_hidden", "num_iterations", "batch_size"):
            check_positive(name, getattr(self, name), integer=True)
        for name in ("step_size", "a0", "b0"):
            check_positive(name, getattr(self, name))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must lie in (0, 1); got {self.test_fraction!r}")
        check_choice("split_source", self.split_source, SPLIT_SOURCES)


PRESETS = {
    "smoke": Config(num_splits=1, num_iterations=50),
    "quick": Config(num_splits=5),
    "paper": Config(),
}
EXTRA_ARGS = {
    "splits": "num_splits",
    "split-source": "split_source",
    "iterations": "num_iterations",
}


class Net:
    """Packing of ``[W1, b1, w2, b2, log gamma, log lambda]`` and the forward pass."""

    def __init__(self, dim: int, hidden: int):
        self.dim, self.hidden = dim, hidden
        self.num_weights = dim * hidden + 2 * hidden + 1
        self.num_vars = self.num_weights + 2

    def unpack(self, theta):
        d, h = self.dim, self.hidden
        w1 = theta[: d * h].reshape(d, h)
        b1 = theta[d * h : d * h + h]
        w2 = theta[d * h + h : d * h + 2 * h]
        b2 = theta[d * h + 2 * h]
        return w1, b1, w2, b2, theta[-2], theta[-1]

    def predict(self, theta, x):
        w1, b1, w2, b2, _, _ = self.unpack(theta)
        return jax.nn.relu(x @ w1 + b1[None, :]) @ w2 + b2


def make_model(net: Net, config: Config):
    a0, b0 = config.a0, config.b0

    def log_prior(theta):
        log_gamma, log_lambda = theta[-2], theta[-1]
        weights = theta[: net.num_weights]
        lam = jnp.exp(log_lambda)
        return (
            net.num_weights / 2 * log_lambda
            - lam / 2 * jnp.sum(weights**2)
            + (a0 - 1) * log_gamma
            - b0 * jnp.exp(log_gamma)
            + log_gamma
            + (a0 - 1) * log_lambda
            - b0 * lam
            + log_lambda
        )

    def log_lik(theta, batch):
        x, y = batch
        log_gamma = theta[-2]
        err = net.predict(theta, x) - y
        return jnp.sum(0.5 * log_gamma - 0.5 * jnp.exp(log_gamma) * err**2)

    return log_prior, log_lik


def reference_permutation(n: int, seed: int) -> np.ndarray:
    """``random.seed(seed); random.shuffle(np.arange(n))`` as Python 2.7 computes it.

    Python 3 seeds the same Mersenne Twister from an int, but its ``shuffle`` draws the
    swap indices differently; this is Python 2.7's loop (checked against Python 2.7.18).
    """
    rng = random.Random(seed)
    perm = np.arange(n)
    for i in range(n - 1, 0, -1):
        j = int(rng.random() * (i + 1))
        perm[i], perm[j] = perm[j], perm[i]
    return perm


def split_permutation(config: Config, key, index: int, n: int) -> np.ndarray:
    """The row order of split ``index``: train rows first, test rows last."""
    if config.split_source == "reference":
        return reference_permutation(n, index)
    return np.asarray(jax.random.permutation(key, n))


def split_data(x, y, perm, test_fraction):
    n_train = int(round((1 - test_fraction) * len(y)))
    tr, te = perm[:n_train], perm[n_train:]
    x_train, y_train = x[tr], y[tr]
    n_dev = min(int(np.round(0.1 * len(tr))), 500)  # as the original: np.round, cap 500
    return (x_train[:-n_dev], y_train[:-n_dev], x_train[-n_dev:], y_train[-n_dev:], x[te], y[te])


def init_particles(key, net, config, x, y):
    """The reference initialisation, one particle per key."""
    d, h = net.dim, net.hidden

    def one(k):
        k1, k2, k3, k4 = jax.random.split(k, 4)
        w1 = jax.random.normal(k1, (d * h,)) / jnp.sqrt(d + 1.0)
        w2 = jax.random.normal(k2, (h,)) / jnp.sqrt(h + 1.0)
        log_lambda = jnp.log(jax.random.gamma(k3, config.a0) * config.b0)  # scale form
        idx = jax.random.choice(k4, len(y), (min(1000, len(y)),), replace=False)
        theta = jnp.concatenate([w1, jnp.zeros(h), w2, jnp.zeros(1), jnp.zeros(2)])
        mse = jnp.mean((net.predict(theta, x[idx]) - y[idx]) ** 2)
        return theta.at[-2].set(-jnp.log(mse)).at[-1].set(log_lambda)

    return jax.vmap(one)(jax.random.split(key, config.num_particles))


def gaussian_loglik(pred, y, log_gamma):
    """``log N(y | pred, 1/gamma)`` elementwise."""
    return 0.5 * log_gamma - 0.5 * np.log(2 * np.pi) - 0.5 * np.exp(log_gamma) * (pred - y) ** 2


def dev_set_gamma(pred_dev, y_dev, log_gamma):
    """The original's dev-set heuristic: a particle's ``log_gamma`` becomes
    ``-log mean((pred_dev - y_dev)^2)`` where that raises its dev log-lik. Returns the kept
    ``log_gamma`` and which particles were replaced."""
    alt = -np.log(np.mean((pred_dev - y_dev[None, :]) ** 2, axis=1))
    dev_alt = gaussian_loglik(pred_dev, y_dev[None, :], alt[:, None]).sum(1)
    better = dev_alt > gaussian_loglik(pred_dev, y_dev[None, :], log_gamma[:, None]).sum(1)
    return np.where(better, alt, log_gamma), better


def mixture_loglik(pred, y, log_gamma) -> float:
    """``mean_i log mean_m N(y_i | pred_mi, 1/gamma_m)``: the mixture over particles."""
    lik = gaussian_loglik(pred, y[None, :], log_gamma[:, None])
    return float(np.mean(logsumexp(lik, axis=0) - np.log(len(log_gamma))))


def evaluate(pred_dev, y_dev, pred_test, y_test, log_gamma) -> dict:
    """The original's dev-set heuristic, then its test RMSE and log-likelihood.

    Predictions are ``(particles, points)`` in original units. The log-lik is
    :func:`mixture_loglik` with the gammas of :func:`dev_set_gamma`, not the mean of
    per-particle log-liks; the RMSE is that of the particle-mean prediction.
    """
    log_gamma, better = dev_set_gamma(pred_dev, y_dev, log_gamma)
    return {
        "rmse": float(np.sqrt(np.mean((pred_test.mean(0) - y_test) ** 2))),
        "loglik": mixture_loglik(pred_test, y_test, log_gamma),
        "dev_gamma_replaced": int(better.sum()),
    }


class SplitFit(NamedTuple):
    """One trained split: predictions in original units, training gammas, y's scale."""

    pred_dev: np.ndarray
    y_dev: np.ndarray
    pred_test: np.ndarray
    y_test: np.ndarray
    log_gamma: np.ndarray
    y_scale: float
    result: Any


def train_split(config, key, index, x, y, runner_cache, progress=False) -> SplitFit:
    """Standardise split ``index``, run SVGD on it and predict its dev and test rows."""
    key_split, key_init = jax.random.split(key)
    perm = split_permutation(config, key_split, index, len(y))
    xtr, ytr, xdev, ydev, xte, yte = split_data(x, y, perm, config.test_fraction)
    mx, sx = xtr.mean(0), xtr.std(0)
    sx = np.where(sx == 0, 1.0, sx)
    my, sy = ytr.mean(), ytr.std()
    xn, yn = (xtr - mx) / sx, (ytr - my) / sy
    net = Net(x.shape[1], config.num_hidden)
    data = (jnp.asarray(xn), jnp.asarray(yn))
    theta0 = init_particles(key_init, net, config, data[0], data[1])
    if "runner" not in runner_cache:
        log_prior, log_lik = make_model(net, config)
        score = svgd.make_score_fn(
            log_prior_fn=log_prior, log_likelihood_fn=log_lik, batch_size=config.batch_size
        )
        step = svgd.build_step(score, alpha=config.alpha, track_ksd=False)  # never read
        runner_cache["runner"] = SVGDRunner(step, chunk_size=min(config.num_iterations, 500))
        runner_cache["predict"] = jax.jit(jax.vmap(net.predict, in_axes=(0, None)))
    result = runs.stop_if_interrupted(
        runner_cache["runner"].run(
            svgd.init(theta0), config.num_iterations, config.step_size, data, progress=progress
        )
    )
    predict, params = runner_cache["predict"], jnp.asarray(result.particles)

    def pred_orig(xs):
        out = np.asarray(predict(params, jnp.asarray((xs - mx) / sx)), dtype=np.float64)
        return out * sy + my

    log_gamma = np.asarray(result.particles[:, -2], dtype=np.float64)
    return SplitFit(pred_orig(xdev), ydev, pred_orig(xte), yte, log_gamma, float(sy), result)


def run_split(config, key, index, x, y, runner_cache, progress=False) -> dict:
    fit = train_split(config, key, index, x, y, runner_cache, progress)
    metrics = evaluate(fit.pred_dev, fit.y_dev, fit.pred_test, fit.y_test, fit.log_gamma)
    return metrics | {
        "ms_per_iter": 1e3 * fit.result.wall_s / max(fit.result.num_iterations, 1),
        "status": fit.result.status,
    }


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    x, y = svgd_data.load_boston(config.data_path or None)
    cache: dict = {}
    per_split = []
    for i in range(config.num_splits):
        saved = ctx.load_checkpoint(f"split_{i}")
        if saved is not None:  # --resume: a split finished before is not run again
            per_split.append(json.loads(str(saved["metrics_json"])))
            continue
        split = run_split(config, jax.random.fold_in(key, i), i, x, y, cache, ctx.progress)
        ctx.save_checkpoint(f"split_{i}", metrics_json=np.asarray(json.dumps(split)))
        per_split.append(split)
    rmse = np.array([s["rmse"] for s in per_split])
    ll = np.array([s["loglik"] for s in per_split])

    def se(a):
        return float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan")

    metrics = {
        "num_splits": config.num_splits,
        "split_source": config.split_source,
        "rmse_mean": float(rmse.mean()),
        "rmse_se": se(rmse),
        "loglik_mean": float(ll.mean()),
        "loglik_se": se(ll),
        "paper_rmse": PAPER["rmse"][0],
        "paper_rmse_se": PAPER["rmse"][1],
        "paper_loglik": PAPER["loglik"][0],
        "paper_loglik_se": PAPER["loglik"][1],
        "ms_per_iter": float(np.mean([s["ms_per_iter"] for s in per_split])),
        "rmse_per_split": rmse.tolist(),
        "loglik_per_split": ll.tolist(),
    }
    runs.write_text(ctx.path("report.md"), report(config, metrics))
    return metrics


def report(config: Config, m: dict) -> str:
    def within(key):
        diff = abs(m[f"{key}_mean"] - m[f"paper_{key}"])
        se = np.hypot(m[f"{key}_se"], m[f"paper_{key}_se"])
        return f"differs by {diff:.3f} ({diff / se:.1f} combined s.e.)" if np.isfinite(se) else ""

    splits = (
        f"the paper's splits i = 0..{m['num_splits'] - 1} (Python 2.7 `random.seed(i)` "
        "shuffles, as the original's examples script; the paper used 20)"
        if config.split_source == "reference"
        else f"{m['num_splits']} random 90/10 splits (seeded)"
    )
    return (
        f"# {NAME}\n\nBoston housing, {splits}, "
        f"{config.num_particles} particles, {config.num_hidden} hidden units, "
        f"{config.num_iterations} iterations, step {config.step_size}.\n\n"
        "| | test RMSE | test log-lik |\n|---|---|---|\n"
        f"| dgm SVGD | {_pm(m, 'rmse')} | {_pm(m, 'loglik')} |\n"
        f"| paper SVGD | {PAPER['rmse'][0]} ± {PAPER['rmse'][1]} | "
        f"{PAPER['loglik'][0]} ± {PAPER['loglik'][1]} |\n"
        f"| paper PBP | {PBP['rmse'][0]} ± {PBP['rmse'][1]} | "
        f"{PBP['loglik'][0]} ± {PBP['loglik'][1]} |\n\n"
        f"RMSE {within('rmse')}; log-lik {within('loglik')}. Paper numbers are from Table 2 "
        "as quoted in the spec (not checked against the PDF).\n\n"
        "Measured with this code (paper preset): on the paper's own splits "
        "(`--split-source reference`) seeds 0-2 gave RMSE 2.940, 2.953, 2.937 and log-lik "
        "-2.502, -2.501, -2.501 (seed 0 -2.503 on the machine of session 27: the last digit "
        "moves with the CPU), the paper's numbers. Over 5 seeds x 20 random splits: "
        "3.080 ± 0.077 and -2.592 ± 0.023 (seed means -2.52 to -2.68). The paper's splits "
        "are easier than average: 20 random splits reach -2.504 in about 4 % of draws. Most "
        "of the 0.088 gap (0.066) comes through the dev-set gamma (fitted on 46 points), "
        "which beats the training gamma by 0.069 ± 0.020 on the paper's splits and by "
        "0.003 ± 0.015 on random ones. See docs/svgd_bnn.md.\n"
    )


def summary(m: dict) -> str:
    return (
        f"RMSE {_pm(m, 'rmse')} (paper 2.957 ± 0.099); "
        f"log-lik {_pm(m, 'loglik')} (paper -2.504 ± 0.029)"
    )


def _pm(m: dict, name: str) -> str:
    """``mean ± se`` over the splits; the mean alone for one split (no standard error)."""
    mean, se = m[f"{name}_mean"], m[f"{name}_se"]  # se: NaN, or None read back from JSON
    return f"{mean:.3f} ± {se:.3f}" if se is not None and np.isfinite(se) else f"{mean:.3f}"
