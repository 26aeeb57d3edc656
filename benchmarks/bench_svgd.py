"""SVGD speed: dgm vs a NumPy re-statement of the original code vs BlackJAX (if installed).

Also Bayesian logistic regression on breast cancer (minibatch 100), dgm vs NumPy.

2-d correlated Gaussian of the original demo, 100 and 1000 particles, median-heuristic
RBF kernel, one gradient evaluation per particle per iteration for every method. dgm runs
at JAX's default dtype (float32: ``dgm``, ``dgm+ksd``) and in float64 (``dgm-float64``,
``dgm-float64+ksd``); NumPy and BlackJAX run in float64. Prints
one JSON line per (method, particles) with ms/iter (median and min over repeats), the
ratio to dgm, and the accuracy after the timed run: max abs error of the particle mean
and relative Frobenius error of the covariance against the exact values. The row
``exact-draws`` gives the same errors for as many independent exact draws (no timing).

Run: ``PYTHONPATH=src python benchmarks/bench_svgd.py [--repeats 5] [--only gaussian2d|blr]
[--particles 100,1000]``.
"""

from dgm._runtime import configure_cpu

configure_cpu()

import argparse  # noqa: E402
import json  # noqa: E402
import time  # noqa: E402

import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dgm.inference import svgd  # noqa: E402
from dgm.inference.svgd.driver import SVGDRunner  # noqa: E402

A = np.array([[0.2260, 0.1652], [0.1652, 0.6779]])
MU = np.array([-0.6871, 0.8010])
COV = np.linalg.inv(A)
STEP = 0.01


def _ms(value, digits=4):
    """Rounded float, or None (valid JSON) for the untimed rows."""
    return round(float(value), digits) if np.isfinite(value) else None


def accuracy(x):
    x = np.asarray(x)
    return (
        float(np.max(np.abs(x.mean(0) - MU))),
        float(np.linalg.norm(np.cov(x.T) - COV) / np.linalg.norm(COV)),
    )


def numpy_original(x0, n_iter, stepsize=STEP, alpha=0.9):
    from scipy.spatial.distance import pdist, squareform

    theta, hist = np.copy(x0), 0.0
    for it in range(n_iter):
        lnpgrad = -np.matmul(theta - MU, A)
        d = squareform(pdist(theta)) ** 2
        h = np.sqrt(0.5 * np.median(d) / np.log(theta.shape[0] + 1))
        kxy = np.exp(-d / h**2 / 2)
        dxkxy = (-np.matmul(kxy, theta) + theta * np.sum(kxy, axis=1)[:, None]) / h**2
        g = (np.matmul(kxy, lnpgrad) + dxkxy) / x0.shape[0]
        hist = g**2 if it == 0 else alpha * hist + (1 - alpha) * g**2
        theta = theta + stepsize * g / (1e-6 + np.sqrt(hist))
    return theta


def gaussian_score(x):
    return -(x - jnp.asarray(MU, x.dtype)[None, :]) @ jnp.asarray(A, x.dtype)


def time_dgm(x0, n_iter, repeats, track_ksd, dtype=jnp.float32):
    step = svgd.build_step(
        svgd.make_score_fn(grad_log_density_fn=gaussian_score), track_ksd=track_ksd
    )
    runner = SVGDRunner(step, chunk_size=n_iter)
    first = runner.run(svgd.init(jnp.asarray(x0, dtype)), n_iter, STEP)
    times = []
    for _ in range(repeats):
        res = runner.run(svgd.init(jnp.asarray(x0, dtype)), n_iter, STEP)
        times.append(res.wall_s / n_iter * 1e3)
    return times, first.compile_s, res.particles


def time_numpy(x0, n_iter, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = numpy_original(x0, n_iter)
        times.append((time.perf_counter() - t0) / n_iter * 1e3)
    return times, 0.0, out


def time_blackjax(x0, n_iter, repeats):
    import blackjax
    import optax
    from blackjax.vi.svgd import rbf_kernel, update_median_heuristic

    # the original step rule has no optax twin; rmsprop-like adagrad keeps the work equal
    opt = optax.rmsprop(STEP, decay=0.9, eps=1e-6)
    algo = blackjax.svgd(
        lambda x: -(x - jnp.asarray(MU)) @ A, opt, rbf_kernel, update_median_heuristic
    )

    @jax.jit
    def run(x):
        state = algo.init(x, {"length_scale": jnp.asarray(1.0)})

        def body(s, _):
            return algo.step(update_median_heuristic(s)), None

        return jax.lax.scan(body, state, None, length=n_iter)[0].particles

    t0 = time.perf_counter()
    out = jax.block_until_ready(run(jnp.asarray(x0)))
    compile_s = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = jax.block_until_ready(run(jnp.asarray(x0)))
        times.append((time.perf_counter() - t0) / n_iter * 1e3)
    return times, compile_s, out


def bench_blr(repeats):
    """BLR on breast cancer (minibatch 100): dgm vs the NumPy original, 100/1000 particles."""
    from dgm.experiments import svgd_blr

    config = svgd_blr.PRESETS["quick"]
    xtr, ytr, xte, yte = svgd_blr.load(config, jax.random.key(0))
    dim = xtr.shape[1]
    log_prior, log_lik = svgd_blr.make_model(config, dim)
    score = svgd.make_score_fn(log_prior_fn=log_prior, log_likelihood_fn=log_lik, batch_size=100)
    data = (jnp.asarray(xtr), jnp.asarray(ytr))
    n_data = len(ytr)

    def np_grad(theta, it):
        idx = (it * 100 + np.arange(100)) % n_data
        x, y = xtr[idx], ytr[idx]
        w, alpha = theta[:, :-1], np.exp(theta[:, -1])
        with np.errstate(over="ignore"):  # as in the original: exp overflow -> prob 0
            coff = (y[None, :] + 1) / 2 - 1 / (1 + np.exp(-(w @ x.T)))
        dw = n_data / 100 * coff @ x - alpha[:, None] * w
        da = dim / 2 - alpha / 2 * np.sum(w**2, 1) + (config.a0 - 1) - config.b0 * alpha + 1
        return np.concatenate([dw, da[:, None]], axis=1)

    def numpy_blr(theta0, n_iter):
        from scipy.spatial.distance import pdist, squareform

        theta, hist = np.copy(theta0), 0.0
        for it in range(n_iter):
            g0 = np_grad(theta, it)
            d = squareform(pdist(theta)) ** 2
            h = np.sqrt(0.5 * np.median(d) / np.log(theta.shape[0] + 1))
            k = np.exp(-d / h**2 / 2)
            rep = (-k @ theta + theta * k.sum(1)[:, None]) / h**2
            g = (k @ g0 + rep) / theta.shape[0]
            hist = g**2 if it == 0 else 0.9 * hist + 0.1 * g**2
            theta = theta + 0.05 * g / (1e-6 + np.sqrt(hist))
        return theta

    for n, n_iter, n_slow in ((100, 1000, 200), (1000, 100, 10)):
        rng = np.random.default_rng(1)
        alpha0 = rng.gamma(1.0, 0.01, n)
        theta0 = np.concatenate(
            [rng.normal(size=(n, dim)) / np.sqrt(alpha0)[:, None], np.log(alpha0)[:, None]], 1
        )
        runner = SVGDRunner(svgd.build_step(score, track_ksd=False), chunk_size=n_iter)
        first = runner.run(svgd.init(jnp.asarray(theta0)), n_iter, 0.05, data)
        times = []
        for _ in range(repeats):
            res = runner.run(svgd.init(jnp.asarray(theta0)), n_iter, 0.05, data)
            times.append(res.wall_s / n_iter * 1e3)
        ref = float(np.median(times))
        t0 = time.perf_counter()
        out_np = numpy_blr(theta0, n_slow)
        np_ms = (time.perf_counter() - t0) / n_slow * 1e3
        rows = [
            ("dgm", times, first.compile_s, res.particles, n_iter),
            ("numpy-original", [np_ms], 0.0, out_np, n_slow),
        ]
        for name, ts, compile_s, out, iters in rows:
            acc, ll = svgd_blr.evaluate(np.asarray(out)[:, :-1], xte, yte)
            print(
                json.dumps(
                    {
                        "bench": "svgd-blr-breast-cancer",
                        "method": name,
                        "particles": n,
                        "iterations": iters,
                        "ms_per_iter_median": round(float(np.median(ts)), 4),
                        "ms_per_iter_min": round(float(np.min(ts)), 4),
                        "ratio_vs_dgm": round(float(np.median(ts)) / ref, 2),
                        "compile_s": round(compile_s, 3),
                        "test_accuracy": round(acc, 4),
                        "test_loglik": round(ll, 4),
                    }
                ),
                flush=True,
            )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", choices=["all", "gaussian2d", "blr"], default="all")
    parser.add_argument(
        "--particles", default="100,1000", help="comma-separated particle counts (2-d)"
    )
    args = parser.parse_args()
    if args.only in ("all", "gaussian2d"):
        bench_gaussian2d(args)
    if args.only in ("all", "blr"):
        bench_blr(args.repeats)


def bench_gaussian2d(args):
    try:
        import blackjax  # noqa: F401

        have_blackjax = True
    except ImportError:
        have_blackjax = False
    sizes = [int(v) for v in args.particles.split(",")]
    for n in sizes:
        n_iter, n_iter_slow = (1000, 200) if n <= 300 else (200, 10)
        x0 = np.random.default_rng(0).normal(size=(n, 2))
        dgm_times, dgm_compile, dgm_out = time_dgm(x0, n_iter, args.repeats, False)
        ref = float(np.median(dgm_times))
        rows = [("dgm", dgm_times, dgm_compile, dgm_out, n_iter)]
        rows.append(("dgm+ksd", *time_dgm(x0, n_iter, args.repeats, True), n_iter))
        f64 = time_dgm(x0, n_iter, args.repeats, False, jnp.float64)
        rows.append(("dgm-float64", *f64, n_iter))
        rows.append(
            ("dgm-float64+ksd", *time_dgm(x0, n_iter, args.repeats, True, jnp.float64), n_iter)
        )
        reps = max(1, args.repeats // 2)
        rows.append(("numpy-original", *time_numpy(x0, n_iter_slow, reps), n_iter_slow))
        if have_blackjax:
            rows.append(("blackjax", *time_blackjax(x0, n_iter_slow, reps), n_iter_slow))
        exact = np.random.default_rng(1).multivariate_normal(MU, COV, size=n)
        rows.append(("exact-draws", [np.nan], 0.0, exact, 0))
        for name, times, compile_s, out, iters in rows:
            mean_err, cov_err = accuracy(out)
            print(
                json.dumps(
                    {
                        "bench": "svgd-gaussian2d",
                        "method": name,
                        "dtype": str(np.asarray(out).dtype),
                        "particles": n,
                        "iterations": iters,
                        "ms_per_iter_median": _ms(np.median(times)),
                        "ms_per_iter_min": _ms(np.min(times)),
                        "ratio_vs_dgm": _ms(np.median(times) / ref, 2),
                        "compile_s": round(compile_s, 3),
                        "mean_error": round(mean_err, 4),
                        "cov_rel_error": round(cov_err, 4),
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
