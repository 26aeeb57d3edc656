"""SVGD for Bayesian logistic regression (``python/bayesian_logistic_regression.py``).

Model: ``p(y=1 | x, w) = sigmoid(w^T x)``, ``w_k ~ N(0, 1/alpha)``, ``alpha ~ Gamma(a0=1,
rate b0=0.01)``; a particle is ``[w, log alpha]``. Minibatches of 100 walk a fixed
random permutation of the training set cyclically, with the likelihood rescaled by
N/|B|. Initialisation as the reference code: ``alpha0 ~ Gamma(shape a0, scale b0)``,
``w ~ N(0, 1/alpha0)``. On the offline breast-cancer set the result is compared with a
long HMC run (``dgm.inference.hmc`` through ``ChainRunner``). The SVGD particles are
checkpointed when their run ends, the HMC chains after every chunk: ``--resume`` continues
from there (the HMC warm-up runs again, to the same states).
"""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs
from dgm.config import check_choice, check_positive
from dgm.data import downloads_allowed
from dgm.data import svgd as svgd_data
from dgm.inference import svgd
from dgm.inference.adaptation import warmup
from dgm.inference.base import ChainRunner, Kernel
from dgm.inference.hmc import HMCParams
from dgm.inference.hmc import build_kernel as build_hmc_kernel
from dgm.inference.hmc import init as hmc_init
from dgm.inference.svgd.driver import SVGDRunner

NAME = "svgd-blr"
DESCRIPTION = "SVGD Bayesian logistic regression (Covertype / breast cancer) vs HMC"


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults: the reference code's settings on Covertype."""

    dataset: str = "covertype"
    data_sha256: str = ""
    num_particles: int = 100
    num_iterations: int = 6000
    step_size: float = 0.05
    batch_size: int = 100
    alpha: float = 0.9
    a0: float = 1.0
    b0: float = 0.01
    test_fraction: float = 0.2
    # features to mean 0, sd 1 with the training split's statistics (the bias column and
    # constant columns left as they are); the original's covertype.mat scaling is not
    # recorded, and LIBSVM's covtype.binary is raw (elevation ~3000, distances ~7000)
    standardize: bool = True
    hmc_chains: int = 4
    hmc_warmup: int = 500
    hmc_draws: int = 2000
    hmc_step_size: float = 0.1
    hmc_num_steps: int = 20

    def __post_init__(self):
        check_choice("dataset", self.dataset, ["covertype", "breast-cancer"])
        for name in ("num_particles", "num_iterations", "batch_size"):
            check_positive(name, getattr(self, name), integer=True)
        for name in ("step_size", "a0", "b0", "hmc_step_size"):
            check_positive(name, getattr(self, name))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"`test_fraction` must lie in (0, 1); got {self.test_fraction!r}")
        for name in ("hmc_chains", "hmc_warmup", "hmc_draws", "hmc_num_steps"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 0:
                raise ValueError(f"`{name}` must be an int >= 0; got {getattr(self, name)!r}")


PRESETS = {
    "smoke": Config(
        dataset="breast-cancer",
        num_particles=20,
        num_iterations=200,
        hmc_chains=2,
        hmc_warmup=50,
        hmc_draws=50,
        hmc_num_steps=4,
    ),
    "quick": Config(dataset="breast-cancer", num_iterations=3000),
    "paper": Config(),
}
EXTRA_ARGS = {"dataset": "dataset", "sha256": "data_sha256"}


def load(config: Config, key):
    """Shuffled train/test split; features standardised with training statistics unless
    ``config.standardize`` is false."""
    if config.dataset == "covertype":
        x, y = svgd_data.load_covertype(config.data_sha256 or None, download_ok=downloads_allowed())
    else:
        x, y = svgd_data.load_breast_cancer()
    perm = np.asarray(jax.random.permutation(key, len(y)))
    x, y = x[perm], y[perm]
    n_test = int(round(config.test_fraction * len(y)))
    xtr, ytr, xte, yte = x[n_test:], y[n_test:], x[:n_test], y[:n_test]
    if config.standardize:
        mu, sd = xtr[:, :-1].mean(0), xtr[:, :-1].std(0)
        mu, sd = np.where(sd > 0, mu, 0.0), np.where(sd > 0, sd, 1.0)
        xtr[:, :-1] = (xtr[:, :-1] - mu) / sd
        xte[:, :-1] = (xte[:, :-1] - mu) / sd
    return xtr, ytr, xte, yte


def make_model(config: Config, dim: int):
    def log_prior(theta):
        w, log_alpha = theta[:-1], theta[-1]
        alpha = jnp.exp(log_alpha)
        return (
            dim / 2 * log_alpha
            - alpha / 2 * jnp.sum(w**2)
            + (config.a0 - 1) * log_alpha
            - config.b0 * alpha
            + log_alpha
        )

    def log_lik(theta, batch):
        x, y = batch
        return -jnp.sum(jax.nn.softplus(-y * (x @ theta[:-1])))

    return log_prior, log_lik


def evaluate(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Accuracy and mean log predictive probability, averaged over particles/draws."""
    from scipy.special import logsumexp

    z = y[:, None] * (x @ w.T)
    log_prob = logsumexp(-np.logaddexp(0.0, -z), axis=1) - np.log(z.shape[1])
    return float(np.mean(log_prob > np.log(0.5))), float(np.mean(log_prob))


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    key_split, key_perm, key_alpha, key_w, key_hmc = jax.random.split(key, 5)
    xtr, ytr, xte, yte = load(config, key_split)
    dim = xtr.shape[1]
    perm = np.asarray(jax.random.permutation(key_perm, len(ytr)))
    data = (jnp.asarray(xtr[perm]), jnp.asarray(ytr[perm]))
    alpha0 = jax.random.gamma(key_alpha, config.a0, (config.num_particles,)) * config.b0
    w0 = jax.random.normal(key_w, (config.num_particles, dim)) / jnp.sqrt(alpha0)[:, None]
    theta0 = jnp.concatenate([w0, jnp.log(alpha0)[:, None]], axis=1)
    log_prior, log_lik = make_model(config, dim)
    score = svgd.make_score_fn(
        log_prior_fn=log_prior, log_likelihood_fn=log_lik, batch_size=config.batch_size
    )
    step = svgd.build_step(score, alpha=config.alpha)
    saved = ctx.load_checkpoint("svgd")  # --resume after the SVGD run: not run again
    if saved is None:
        runner = SVGDRunner(step, chunk_size=min(config.num_iterations, 500))
        result = runs.stop_if_interrupted(
            runner.run(
                svgd.init(theta0),
                config.num_iterations,
                config.step_size,
                data,
                progress=ctx.progress,
            )
        )
        done = {
            "ms_per_iter": 1e3 * result.wall_s / max(result.num_iterations, 1),
            "status": result.status,
        }
        saved = {"particles": np.asarray(result.particles), **result.trace}
        ctx.save_checkpoint("svgd", run_json=np.asarray(json.dumps(done)), **saved)
    else:
        done = json.loads(str(saved.pop("run_json")))
    particles = saved["particles"]
    acc, ll = evaluate(particles[:, :-1], xte, yte)
    # the KSD with full-data scores: the steps' own (in the trace) carry their minibatch's
    # noise, shared by every particle (breast cancer: 4.3 against 0.09 at the end)
    full = svgd.make_score_fn(log_prior_fn=log_prior, log_likelihood_fn=log_lik)
    ksd = jax.jit(lambda x: svgd.ksd(x, full(x, 0, data)))
    metrics = {
        "dataset": config.dataset,
        "num_train": len(ytr),
        "num_test": len(yte),
        "dim": int(theta0.shape[1]),
        "test_accuracy": acc,
        "test_loglik": ll,
        "ksd_initial": float(ksd(theta0)),
        "ksd_final": float(ksd(jnp.asarray(particles))),
        **done,
    }
    runs.save_npz(ctx.path("particles.npz"), **saved)
    if config.hmc_chains > 0 and config.hmc_draws > 0:
        metrics.update(
            compare_hmc(config, key_hmc, particles, data, log_prior, log_lik, xte, yte, ctx, theta0)
        )
    runs.write_text(ctx.path("report.md"), report(config, metrics))
    return metrics


def gaussian_reference(config: Config, key, theta0, draws: np.ndarray) -> dict:
    """What SVGD's spread should be at this particle count, dimension and run length.

    The same SVGD run (particles, iterations, step) on a Gaussian with the HMC draws'
    mean and covariance, where the exact sds are known, twice: from the reference
    start ``theta0`` (measures how far the spread has contracted from the wide initial
    draw), and from exact draws of that Gaussian (measures the variance collapse of few
    particles in many dimensions: Ba et al., ICLR 2022; Zhuo et al., ICML 2018).
    """
    mean = jnp.asarray(draws.mean(0), theta0.dtype)
    cov = np.cov(draws.T) + 1e-9 * np.eye(draws.shape[1])
    prec = jnp.asarray(np.linalg.inv(cov), theta0.dtype)
    score = svgd.make_score_fn(grad_log_density_fn=lambda x: -(x - mean[None, :]) @ prec)
    runner = SVGDRunner(svgd.build_step(score, alpha=config.alpha, track_ksd=False), 500)
    exact_sd = np.sqrt(np.diag(cov))
    start = mean[None, :] + jax.random.normal(key, theta0.shape, theta0.dtype) @ jnp.asarray(
        np.linalg.cholesky(cov).T, theta0.dtype
    )
    out = {}
    for name, x0 in (("gaussian", theta0), ("gaussian_exact_start", start)):
        res = runs.stop_if_interrupted(
            runner.run(svgd.init(x0), config.num_iterations, config.step_size)
        )
        ratio = res.particles.std(0) / exact_sd
        out |= {
            f"{name}_sd_ratio_median": float(np.median(ratio)),
            f"{name}_sd_ratio_min": float(np.min(ratio)),
            f"{name}_sd_ratio_max": float(np.max(ratio)),
        }
    return out


def compare_hmc(config, key, particles, data, log_prior, log_lik, xte, yte, ctx, theta0) -> dict:
    """Long HMC run on the full-data posterior, started at SVGD particles.

    The diagonal inverse mass matrix is the SVGD particles' variance. (The posterior in
    ``(w, log alpha)`` is funnel-shaped when the data are nearly separable, so a Laplace
    approximation is no help: its Newton iteration diverges.) Warm-up is
    :func:`~dgm.inference.adaptation.warmup` with ``metric="none"``: dual averaging of
    the step size only, keeping that mass matrix (an estimate from all the particles;
    the short warm-ups' windowed estimates from a few correlated draws are noisier). It
    runs vmapped over chains under one ``jit``; each chain adapts its own step size, and
    the sampling run shares their median (``ChainRunner`` params are shared by all chains).
    """

    def log_post(theta):
        return log_prior(theta) + log_lik(theta, data)

    inv_mass = jnp.asarray(np.var(particles, axis=0) + 1e-6, particles.dtype)
    lo, hi = config.hmc_num_steps // 2 + 1, config.hmc_num_steps
    step_size = jnp.asarray(config.hmc_step_size, particles.dtype)
    kernel = Kernel(
        lambda q: hmc_init(q, log_post),
        build_hmc_kernel(log_post),
        HMCParams(step_size, inv_mass, lo, hi),
    )
    key_init, key_warm, key_run = jax.random.split(key, 3)
    idx = jax.random.choice(key_init, particles.shape[0], (config.hmc_chains,), replace=False)
    states = jax.jit(jax.vmap(kernel.init))(jnp.asarray(particles)[idx])  # one program

    def warm(k, state):
        out = warmup(k, kernel, state, config.hmc_warmup, log_density_fn=log_post, metric="none")
        return out.state, out.params.step_size

    keys_warm = jax.random.split(key_warm, config.hmc_chains)
    states, step_sizes = jax.jit(jax.vmap(warm))(keys_warm, states)
    step_size = jnp.median(step_sizes).astype(particles.dtype)
    runner = ChainRunner(kernel.step, chunk_size=50)
    res = runs.stop_if_interrupted(
        runner.run(
            jax.random.split(key_run, config.hmc_chains),
            states,
            kernel.params._replace(step_size=step_size),
            config.hmc_draws,
            progress=ctx.progress,
            desc="hmc",
            # after every chunk; --resume continues the chains (a fresh run has none)
            checkpoint=ctx.checkpoint_path("hmc_chains"),
        )
    )
    draws = np.asarray(res.draws)
    accept = float(np.mean(np.asarray(res.infos.accept_prob)))
    flat = draws.reshape(-1, draws.shape[-1])
    acc, ll = evaluate(flat[:, :-1], xte, yte)
    sd = flat.std(0)
    z = np.abs(particles.mean(0) - flat.mean(0)) / sd
    extra = gaussian_reference(config, jax.random.fold_in(key, 1), theta0, flat)
    return extra | {
        "hmc_test_accuracy": acc,
        "hmc_test_loglik": ll,
        "hmc_accept": accept,
        "hmc_step_size": float(step_size),
        "hmc_divergent": int(np.sum(np.asarray(res.infos.is_divergent))),
        "mean_diff_in_hmc_sd_max": float(np.max(z)),
        "mean_diff_in_hmc_sd_median": float(np.median(z)),
        "sd_ratio_median": float(np.median(particles.std(0) / sd)),
    }


def report(config: Config, m: dict) -> str:
    text = (
        f"# {NAME}\n\nDataset {m['dataset']} ({m['num_train']} train / {m['num_test']} test); "
        f"{config.num_particles} particles, {config.num_iterations} iterations, step "
        f"{config.step_size}, minibatch {config.batch_size}.\n\n"
        "| method | test accuracy | test log-lik |\n|---|---|---|\n"
        f"| SVGD | {m['test_accuracy']:.4f} | {m['test_loglik']:.4f} |\n"
    )
    if "hmc_test_accuracy" in m:
        text += (
            f"| HMC ({config.hmc_chains} x {config.hmc_draws} draws) | "
            f"{m['hmc_test_accuracy']:.4f} | {m['hmc_test_loglik']:.4f} |\n\n"
            f"HMC acceptance {m['hmc_accept']:.3f} (step {m['hmc_step_size']:.3g}), "
            f"{m['hmc_divergent']} divergent. "
            "|SVGD mean - HMC mean| / HMC sd: median "
            f"{m['mean_diff_in_hmc_sd_median']:.3f}, max {m['mean_diff_in_hmc_sd_max']:.3f}; "
            f"median SVGD sd / HMC sd {m['sd_ratio_median']:.3f}.\n"
        )
    if "gaussian_sd_ratio_median" in m:
        text += (
            "\nExpected spread, from the same SVGD run (particles, iterations, step) on a "
            "Gaussian with the HMC draws' mean and covariance (SVGD sd / exact sd, median "
            "and range over coordinates):\n"
            f"- from the reference start: {m['gaussian_sd_ratio_median']:.3f} "
            f"({m['gaussian_sd_ratio_min']:.3f}-{m['gaussian_sd_ratio_max']:.3f}): the "
            "wide initial draw (w sd about 10) has not contracted in this many "
            "iterations;\n"
            f"- from exact draws: {m['gaussian_exact_start_sd_ratio_median']:.3f} "
            f"({m['gaussian_exact_start_sd_ratio_min']:.3f}-"
            f"{m['gaussian_exact_start_sd_ratio_max']:.3f}): the variance collapse of "
            f"{config.num_particles} particles in {m['dim']} dimensions (Ba et al., ICLR "
            "2022; Zhuo et al., ICML 2018).\n"
            "So a BLR sd ratio above 1 against HMC reflects the unfinished contraction "
            "from the reference start (made worse by minibatch gradient noise), and at "
            "convergence SVGD would under-estimate the sds by about the second factor.\n"
        )
    text += (
        "\nThe parameter-level comparison is not a convergence proof: an sd ratio far from 1 "
        "means at least one method has not converged in parameter space. The reference "
        "initialisation draws w with sd near 10; with a bandwidth that large the kernel is "
        "nearly flat, so the SVGD spread contracts slowly; and the posterior in "
        "(w, log alpha) is funnel-shaped, which fixed-metric HMC explores slowly. The "
        "predictive numbers are the reliable comparison.\n"
        "\nPaper (Covertype, Fig. 2): test accuracy about 0.75 with 100 particles.\n"
    )
    return text


def summary(m: dict) -> str:
    s = f"SVGD test accuracy {m['test_accuracy']:.4f}, log-lik {m['test_loglik']:.4f}"
    if "hmc_test_accuracy" in m:
        s += f"; HMC {m['hmc_test_accuracy']:.4f}, {m['hmc_test_loglik']:.4f}"
    return s
