"""MNIST in-painting: the additive-noise Gram factor, and constrained vs latent HMC.

Four comparisons on the 246-input in-painting generator ``y = m(z)[:196] + 0.05 n``, one
JSON line per result on stdout (``--rows R``: ``factor``, ``parts`` and ``step`` also for the
top R rows observed, N = 28 R outputs and k + N inputs, where the Woodbury factor's 50×50
capacitance matrix stands against an N×N Cholesky; the observation for R ≠ 7 is an image
of the decoder's own):

* ``factor``: the Gram factor alone at one point, from a given J (build, solve with J's 246
  columns as ∇φ does, solve one vector as a projection does, ½ log det), one jitted call:
  ``woodbury`` (50×50 capacitance) vs ``dense`` (196×196 Cholesky of J Jᵀ).
* ``step``: ms per constrained-HMC integrator step (3 geodesic sub-steps, reversibility
  check) for three ways of handling the Gram matrix J Jᵀ, same decoder, observation, starts,
  step size (0.25) and step-count range (4...6):
  ``woodbury`` (:func:`dgm.condition_additive_noise`: J = [J_f | σI] from 50 forward passes,
  solves through the 50×50 capacitance matrix), ``dense`` (the same Jacobian, a dense
  196×196 Cholesky) and ``dense_generic`` (``dgm.condition`` on the 246-input generator as
  a black box: J by 246 forward passes, dense Cholesky). Rows give ``dense_over_woodbury``.
  All run ``chain_map="map"`` (one chain per host device): the dense LAPACK Cholesky may not
  run vmapped on several host devices.
* ``parts``: ms of each piece of a step alone (decoder forward pass, the 50- and 246-column
  Jacobians, ∇ ½ log det): the pieces every factor pays, which bound the step ratio.
* ``ess``: run time per effective sample of constrained HMC (all 246 inputs, Woodbury) vs
  HMC on the 50-d latent (noise integrated out: exact), at the experiment's settings and
  chain counts, on a trained decoder (``--decoder``; default: a random-weight VAE decoder,
  whose posterior means little), with ``chmc_over_hmc_s_per_ess`` (< 5 is the target).

Times exclude compilation (``ChainRunner`` times it apart); per-step times are per chain
and core (wall time × devices used / steps). Absolute times on a shared CPU mean little:
compare ratios measured in the same run.

Run:  python benchmarks/bench_inpainting.py [--decoder RUN_DIR] [--hidden 300,500]
          [--only factor,parts,step,ess] [--rows 7,14,28]
          [--chmc-draws 60] [--hmc-draws 600] [--step-draws 10] [--repeats 2]
"""

import argparse
import dataclasses
import json
import statistics
import tempfile
import time

from dgm._runtime import configure_cpu

configure_cpu(2)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import dgm  # noqa: E402
from dgm import runs  # noqa: E402
from dgm.experiments import _mnist_inpainting_report as report_lib  # noqa: E402
from dgm.experiments import mnist_inpainting as exp  # noqa: E402
from dgm.inference.base import device_groups  # noqa: E402
from dgm.models import decoders, vae  # noqa: E402

SIGMA = 0.05


def _decoder(run_dir: str | None, hidden: int = 500) -> decoders.ImageDecoder:
    if run_dir:
        return decoders.load(run_dir)
    model = vae.VAE(784, 50, (hidden, hidden), key=jax.random.key(0))
    dec = model.decoder
    return decoders.ImageDecoder(dec.mean, 50, (28, 28), "vae (random weights)", dec.mean_head)


def _observation(decoder, rows: int = 7) -> np.ndarray:
    """The paper's observed top 7 rows; for other row counts, or without the shared data,
    the top rows of an image of the decoder's own plus noise (timing only)."""
    if rows == 7:
        try:
            return exp.observation(exp.Config(), decoder, jax.random.key(0))
        except FileNotFoundError:
            pass
    n = 28 * rows
    with jax.enable_x64(True):
        z = jax.random.normal(jax.random.key(1), (decoder.input_dim,))
        return np.asarray(decoder(z))[:n] + SIGMA * np.random.default_rng(0).normal(size=n)


def _posteriors(dec64, k: int, y: np.ndarray) -> dict:
    n = y.shape[0]
    f = lambda z: dec64.head(z, n)  # noqa: E731
    gen = lambda u: f(u[:k]) + SIGMA * u[k:]  # noqa: E731
    return {
        "woodbury": dgm.condition_additive_noise(f, y, k, SIGMA, gram="woodbury"),
        "dense": dgm.condition_additive_noise(f, y, k, SIGMA, gram="dense"),
        "dense_generic": dgm.condition(gen, y, k + n, jacobian="fwd"),
    }


def bench_factor(dec64, k: int, y: np.ndarray, repeats: int, tag: dict) -> None:
    """The Gram factor alone, from a given J: build it, solve with J's 246 columns (∇φ's P)
    and one vector (a projection), ½ log det: Woodbury vs dense Cholesky."""
    posts = _posteriors(dec64, k, y)
    with jax.enable_x64(True):
        u = jnp.asarray(posts["woodbury"].additive_noise.input_on_manifold(jnp.zeros(k), y))
        jac = posts["woodbury"].system.jacobian(u)
        r = jnp.asarray(y)
        times = {}
        for name in ("woodbury", "dense"):
            system = posts[name].system

            @jax.jit
            def work(jac, r, system=system):
                factor = system.gram_factor(u, jac)
                return factor.solve(jac), factor.solve(r), factor.half_log_det()

            jax.block_until_ready(work(jac, r))
            runs_ms = []
            for _ in range(20 * repeats):
                t0 = time.perf_counter()
                jax.block_until_ready(work(jac, r))
                runs_ms.append(1e3 * (time.perf_counter() - t0))
            times[name] = (statistics.median(runs_ms), min(runs_ms))
    for name, (med, low) in times.items():
        row = {"bench": "factor", **tag, "gram": name, "ms_median": med, "ms_min": low}
        row["dense_over_woodbury"] = med / times["woodbury"][0]
        print(json.dumps(row), flush=True)


def _median_ms(fn, *args, reps: int) -> float:
    jax.block_until_ready(fn(*args))
    runs_ms = []
    for _ in range(reps):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        runs_ms.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(runs_ms)


def bench_parts(dec64, k: int, y: np.ndarray, repeats: int, tag: dict) -> None:
    """What one constrained step is made of: each piece alone, jitted, at one point. Per
    step the sampler runs 3 Jacobians (one per geodesic sub-step), one ∇ ½ log det (a
    reverse pass through the Jacobian map), about 20 decoder forward passes (the Newton
    projections, forward and back) and the factor work; only the last differs between
    the Woodbury and the dense factor."""
    posts = _posteriors(dec64, k, y)
    with jax.enable_x64(True):
        noise = posts["woodbury"].additive_noise
        u = jnp.asarray(noise.input_on_manifold(jnp.zeros(k), y))
        jac = noise.jacobian(u)
        system = posts["dense"].system
        factor = system.gram_factor(u, jac)
        pieces = {
            "decoder_forward": (jax.jit(noise.f), u[:k]),
            "jacobian_50_fwd": (jax.jit(noise.jacobian), u),
            "jacobian_k_plus_n_fwd": (jax.jit(posts["dense_generic"].system.jacobian), u),
            "grad_half_log_det": (jax.jit(lambda u: system.potential_grad(u, jac, factor)), u),
        }
        for name, (fn, arg) in pieces.items():
            row = {"bench": "parts", **tag, "piece": name}
            row["ms_median"] = _median_ms(fn, arg, reps=20 * repeats)
            print(json.dumps(row), flush=True)


def bench_step(dec64, k: int, y: np.ndarray, draws: int, repeats: int, tag: dict) -> None:
    posts = _posteriors(dec64, k, y)
    noise = posts["woodbury"].additive_noise
    with jax.enable_x64(True):
        z0 = jax.random.normal(jax.random.key(2), (2, k), jnp.float64)
        init = np.asarray(jax.vmap(lambda z: noise.input_on_manifold(z, jnp.asarray(y)))(z0))
    args = dict(
        num_chains=2, num_samples=draws, step_size=0.25, num_steps=(4, 6), init=init,
        chain_map="map", progress_bar=False, chunk_size=draws,
    )  # fmt: skip
    times: dict[str, list[float]] = {name: [] for name in posts}
    compile_s: dict[str, float] = {}
    for r in range(repeats + 1):  # the first round compiles
        for name, post in posts.items():
            idata = post.sample(jax.random.key(3 + r), **args)
            attrs = idata.posterior.attrs
            steps = float(idata.sample_stats["n_steps"].values.sum())
            if r == 0:
                compile_s[name] = attrs["compile_s"]
                continue
            times[name].append(1e3 * attrs["wall_s"] * len(device_groups(2)) / steps)
    base = statistics.median(times["woodbury"])
    for name in posts:
        ms = statistics.median(times[name])
        row = {
            "bench": "step",
            **tag,
            "gram": name,
            "ms_per_step_median": ms,
            "ms_per_step_min": min(times[name]),
            "compile_s": compile_s[name],
            "dense_over_woodbury": ms / base,
        }
        print(json.dumps(row), flush=True)


def bench_ess(decoder, y: np.ndarray, chmc_draws: int, hmc_draws: int) -> None:
    config = exp.Config(
        chmc=dataclasses.replace(exp.CHMCConfig(), num_samples=chmc_draws),
        hmc=dataclasses.replace(exp.HMCConfig(), num_samples=hmc_draws),
    )
    with tempfile.TemporaryDirectory() as tmp:
        ctx = runs.RunContext(out=tmp, progress=False)
        with jax.enable_x64(True):
            dec64 = exp._float64(decoder)
            k = decoder.input_dim
            post = dgm.condition_additive_noise(
                lambda z: dec64.head(z, 196), y, k, SIGMA,
                derived={"pixels": lambda u: dec64(u[:k])[196:]},
            )  # fmt: skip
            pixel_fn = jax.jit(jax.vmap(jax.vmap(lambda z: dec64(z)[196:])))
            z0 = np.asarray(jax.random.normal(jax.random.key(4), (4, k), jnp.float64))
        results = {
            "chmc": exp.run_chmc(config.chmc, post, z0, jax.random.key(5), ctx),
            "hmc": exp.run_latent_hmc(
                config.hmc, post.additive_noise, y, z0, pixel_fn, jax.random.key(6), ctx
            ),
        }
        m = report_lib.metrics(results, decoder, 196, config)
    for name in ("chmc", "hmc"):
        r = m[name]
        keep = ("num_chains", "num_draws", "accept_rate", "wall_s", "compile_s", "ms_per_iteration")
        keep += ("ess_z_min", "ess_z_median", "ess_pixels_median", "s_per_ess_z")
        keep += ("s_per_ess_pixels",)
        print(json.dumps({"bench": "ess", "method": name, **{f: r[f] for f in keep}}), flush=True)
    ratios = {f: m[f] for f in m if f.startswith("chmc_over_hmc")}
    print(json.dumps({"bench": "ess", "decoder": decoder.kind, **ratios}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--decoder", default=None, help="run directory of a trained model")
    parser.add_argument("--only", default="factor,parts,step,ess")
    parser.add_argument(
        "--hidden", default="300,500", help="hidden widths of the random-weight decoders"
    )
    parser.add_argument(
        "--rows", default="7", help="observed top rows (N = 28 rows outputs), e.g. 7,14,28"
    )
    parser.add_argument("--step-draws", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chmc-draws", type=int, default=60)
    parser.add_argument("--hmc-draws", type=int, default=600)
    args = parser.parse_args()
    only = set(args.only.split(","))
    sizes = [None] if args.decoder else [int(h) for h in args.hidden.split(",")]
    for hidden in sizes:
        decoder = _decoder(args.decoder, hidden or 500)
        with jax.enable_x64(True):
            dec64 = exp._float64(decoder)
        k = decoder.input_dim
        for rows in (int(r) for r in args.rows.split(",")):
            y = _observation(decoder, rows)
            tag = {"decoder": decoder.kind, "hidden": hidden, "rows": rows}
            if "factor" in only:
                bench_factor(dec64, k, y, args.repeats, tag)
            if "parts" in only:
                bench_parts(dec64, k, y, args.repeats, tag)
            if "step" in only:
                bench_step(dec64, k, y, args.step_draws, args.repeats, tag)
    if "ess" in only:
        decoder = _decoder(args.decoder)
        bench_ess(decoder, _observation(decoder), args.chmc_draws, args.hmc_draws)


if __name__ == "__main__":
    main()
