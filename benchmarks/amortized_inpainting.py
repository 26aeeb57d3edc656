"""Not a timing script: amortized in-painting with ``dgm.amortize`` on a trained decoder.

The in-painting generator of ``dgm run mnist-inpainting`` (a decoder's first ``rows × 28``
pixel means plus 0.05 noise) has a joint density and a simulator, so one q(z | top rows) can
be trained by simulation and then asked about any observation. For the paper's observation
and for the top rows of test digits (evenly spaced over the test file, plus 0.05 noise),
this compares q with NUTS on the exact latent posterior (``dgm.sample`` on
``latent_log_density``, 4 chains × 1000 after 1000 warm-up): the importance weights' Kish ESS
and Pareto k, and the in-painted pixel means (the decoder's means of the other rows) of q,
of q importance-weighted, and of NUTS, as the RMS difference over pixels and the largest
difference in NUTS Monte Carlo standard errors (over pixels whose posterior sd exceeds
0.001); then the same for q refined on each observation (``Amortized.refine``,
``--refine-steps``). JSON lines.

    DGM_DATA_DIR=../shared/data python benchmarks/amortized_inpainting.py RUN/decoder \\
        --steps 20000 --digits 5
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import dgm
from dgm import diagnostics
from dgm.data.mnist import evenly_spaced, load_mnist_test_images
from dgm.experiments import mnist_inpainting
from dgm.inference.additive_noise import AdditiveNoise
from dgm.models import decoders

SIGMA = 0.05


def _observations(rows: int, width: int, num_digits: int, key) -> dict:
    paper = mnist_inpainting._read_observed(mnist_inpainting._paper_observation())
    obs = {"paper": np.asarray(paper, np.float64)}
    images = load_mnist_test_images()
    for i in evenly_spaced(np.arange(len(images)), num_digits):
        top = images[i].reshape(-1)[: rows * width].astype(np.float64) / 255.0
        noise = np.asarray(jax.random.normal(jax.random.fold_in(key, int(i)), top.shape))
        obs[f"digit {int(i)}"] = top + SIGMA * noise
    return obs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("decoder", help="a run directory holding a trained image model")
    parser.add_argument("--steps", type=int, default=20000)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--context", type=int, default=32)
    parser.add_argument("--digits", type=int, default=5)
    parser.add_argument("--draws", type=int, default=4000)
    parser.add_argument("--refine-steps", type=int, default=1000)
    args = parser.parse_args()
    decoder = decoders.load(args.decoder)
    height, width = decoder.image_shape
    rows = 7
    num_obs = rows * width
    noise = AdditiveNoise(lambda z: decoder.head(z, num_obs), decoder.input_dim, num_obs, SIGMA)
    pixels = jax.jit(jax.vmap(lambda z: decoder(z)[num_obs:]))
    t0 = time.perf_counter()
    q = dgm.amortize(
        noise.log_joint, noise.simulate, decoder.input_dim, key=jax.random.key(0),
        num_steps=args.steps, hidden_size=args.hidden, context_size=args.context,
    )  # fmt: skip
    train = {"bench": "amortized_inpainting_train", "steps": q.num_steps, "status": q.status}
    train |= {"wall_s": q.wall_s, "compile_s": q.compile_s, "total_s": time.perf_counter() - t0}
    train["final_loss"] = float(q.losses[-500:].mean())
    print(json.dumps(train), flush=True)
    for name, y in _observations(rows, width, args.digits, jax.random.key(1)).items():
        y = jnp.asarray(y, jnp.float32)
        t0 = time.perf_counter()
        idata = q.sample(jax.random.key(2), y, num_samples=args.draws)
        vi_s = time.perf_counter() - t0
        z_q = idata.posterior["z"].values[0]
        log_w = idata.sample_stats["log_weight"].values[0]
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        nuts = dgm.sample(
            lambda z, y=y: noise.latent_log_density(z, y), jnp.zeros(decoder.input_dim),
            key=jax.random.key(3),
        )  # fmt: skip
        z_n = nuts.posterior["x"].values
        p_n = np.asarray(pixels(jnp.asarray(z_n.reshape(-1, z_n.shape[-1]))))
        p_n = p_n.reshape(z_n.shape[:2] + p_n.shape[1:])
        mean_n = p_n.mean((0, 1))
        se = p_n.std((0, 1)) / np.sqrt([diagnostics.ess(p_n[..., j]) for j in range(p_n.shape[-1])])
        p_q = np.asarray(pixels(jnp.asarray(z_q)))
        row = {"bench": "amortized_inpainting", "observation": name, "vi_s": vi_s}
        row |= {k: idata.posterior.attrs[k] for k in ("ess_importance", "pareto_k")}
        for label, mean in (("q", p_q.mean(0)), ("q_weighted", w @ p_q)):
            diff = mean - mean_n
            row[f"{label}_rms"] = float(np.sqrt(np.mean(diff**2)))
            varying = p_n.std((0, 1)) > 1e-3  # pixels that vary under the posterior
            row[f"{label}_max_z"] = float(np.max(np.abs(diff[varying]) / se[varying]))
        t0 = time.perf_counter()
        refined = q.refine(jax.random.key(4), y, num_steps=args.refine_steps)
        fit = refined.sample(jax.random.key(2), y, num_samples=args.draws)
        row["refine_s"] = time.perf_counter() - t0
        row |= {f"refined_{k}": fit.posterior.attrs[k] for k in ("ess_importance", "pareto_k")}
        log_w = fit.sample_stats["log_weight"].values[0]
        w = np.exp(log_w - log_w.max())
        p_r = np.asarray(pixels(jnp.asarray(fit.posterior["z"].values[0])))
        diff = (w / w.sum()) @ p_r - mean_n
        row["refined_weighted_rms"] = float(np.sqrt(np.mean(diff**2)))
        row["elbo"], row["refined_elbo"] = (
            idata.posterior.attrs["elbo"],
            fit.posterior.attrs["elbo"],
        )
        row["nuts_wall_s"] = nuts.posterior.attrs["wall_s"] + nuts.posterior.attrs["warmup_s"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
