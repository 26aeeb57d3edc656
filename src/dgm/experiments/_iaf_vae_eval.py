"""Scores and pictures of a trained IAF ResNet VAE (``dgm run iaf-vae``).

Every score uses free bits off (``kl_min = 0``) and the Polyak-averaged weights: the test
one-sample −ELBO and each block's KL (nats per image), the importance-sampled −log p(x)
(spec §2.10), in nats per image for MNIST and bits/dim (÷ 3072·ln 2) for CIFAR-10.
"""

import math
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs
from dgm.data.mnist import evenly_spaced
from dgm.experiments import _pictures
from dgm.models import iaf_vae


@eqx.filter_jit
def _terms(model, x, key):
    """Per image: the one-sample ELBO, and each block's KL as ``(blocks, batch)`` (per image,
    not a batch mean, so that the padding of a last, short batch can be dropped)."""
    log_px, kls = iaf_vae.forward(model, x, iaf_vae.draw_noise(model, key, x.shape[0]))
    blocks = iaf_vae.image_block_kl(kls, x.shape[0])
    return log_px - blocks.sum(0), blocks


@eqx.filter_jit
def _is(model, x, key, num_samples: int, chunk: int):
    return iaf_vae.importance_log_likelihood(model, x, key, num_samples, chunk)


def _batches(x: np.ndarray, size: int):
    for start in range(0, len(x), size):
        part = x[start : start + size]
        padded = np.zeros((size, *x.shape[1:]), np.float32)
        padded[: len(part)] = part
        yield jnp.asarray(padded), len(part)


def _unit(config) -> tuple[str, float]:
    if config.problem == "mnist":
        return "nats", 1.0
    return "bits/dim", 1.0 / (3072 * math.log(2))


def test_bound(config, images: np.ndarray):
    """``track_fn`` for training: the test −ELBO (free bits off; nats or bits/dim) on
    ``config.curve_images`` test images, evenly spaced, as ``test_neg_elbo``."""
    subset, scale = evenly_spaced(images, config.curve_images), _unit(config)[1]

    def fn(model, key):
        elbo = [np.asarray(_terms(model, x, jax.random.fold_in(key, i))[0])[:num]
                for i, (x, num) in enumerate(_batches(subset, config.eval_batch_size))]  # fmt: skip
        return {"test_neg_elbo": float(-np.concatenate(elbo).astype(np.float64).mean() * scale)}

    return fn


def score(config, model, test: np.ndarray, key) -> dict:
    """Test −ELBO, per-block KL and IS −log p(x) of ``model`` (free bits off)."""
    k_elbo, k_is = jax.random.split(key)
    elbo, blocks, n = [], [], 0
    for i, (x, num) in enumerate(_batches(test, config.eval_batch_size)):
        e, kb = _terms(model, x, jax.random.fold_in(k_elbo, i))
        elbo.append(np.asarray(e)[:num])
        blocks.append(np.asarray(kb, np.float64)[:, :num].sum(1))
        n += num
    elbo = np.concatenate(elbo).astype(np.float64)
    is_test = evenly_spaced(test, config.is_images)
    chunk = min(config.is_chunk, config.est_marglik)
    per_call = max(1, config.eval_batch_size // chunk)
    ll = []
    for i, (x, num) in enumerate(_batches(is_test, per_call)):
        ll.append(np.asarray(_is(model, x, jax.random.fold_in(k_is, i), config.est_marglik,
                                 chunk))[:num])  # fmt: skip
    ll = np.concatenate(ll).astype(np.float64)
    unit, scale = _unit(config)
    kl_blocks = np.sum(blocks, axis=0) / n
    names = iaf_vae.block_names(model)
    return {
        "problem": config.problem,
        "posterior": config.margs.posterior,
        "unit": unit,
        "test_neg_elbo": float(-elbo.mean() * scale),
        "test_nll_is": float(-ll.mean() * scale),
        "is_samples": config.est_marglik,
        "is_images": len(is_test),
        "num_test": len(test),
        "kl_blocks": {name: float(v) for name, v in zip(names, kl_blocks, strict=True)},
    }


def _grid(path, images: np.ndarray) -> None:
    """Greyscale ``(n, h, w)`` through the shared helper; RGB ``(n, h, w, 3)`` tiled here."""
    if images.shape[-1] == 1:
        _pictures.save_png(path, images[..., 0])
        return
    from PIL import Image

    n, h, w, _ = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.ones((rows * (h + 1) + 1, cols * (w + 1) + 1, 3))
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        grid[1 + r * (h + 1) : (r + 1) * (h + 1), 1 + c * (w + 1) : (c + 1) * (w + 1)] = img
    with runs.atomic_path(path) as tmp:
        Image.fromarray((grid * 255).astype(np.uint8)).resize(
            (grid.shape[1] * 3, grid.shape[0] * 3), Image.NEAREST
        ).save(tmp, format="PNG")


def pictures(ctx: runs.RunContext, config, model, test: np.ndarray, key) -> float:
    """``samples.png`` and ``reconstructions.png`` (rows: data, reconstruction); returns the
    sampling time per image in seconds (compiled, median of 3)."""
    k_samples, k_recon = jax.random.split(jax.random.fold_in(key, 1))
    num, p = config.num_images, model.pad
    crop = lambda a: np.asarray(a)[:, p : 32 - p, p : 32 - p, :]  # noqa: E731
    sample = eqx.filter_jit(lambda m, k: iaf_vae.pixel_means(m, iaf_vae.draw_noise(m, k, num),
                                                             num))  # fmt: skip
    jax.block_until_ready(sample(model, k_samples))
    times = []
    for i in range(3):
        t0 = time.perf_counter()
        means = jax.block_until_ready(sample(model, jax.random.fold_in(k_samples, i)))
        times.append(time.perf_counter() - t0)
    _grid(ctx.path("samples.png"), crop(means))
    half = max(1, num // 2)
    x = jnp.asarray(evenly_spaced(test, half))  # every digit class, not the first ones
    recon = eqx.filter_jit(iaf_vae.reconstruction_means)(model, x, k_recon)
    data = np.asarray(x) if model.likelihood == "bernoulli" else np.asarray(x) / 255.0
    pairs = np.stack([crop(data), crop(recon)], axis=1).reshape(-1, *crop(data).shape[1:])
    _grid(ctx.path("reconstructions.png"), pairs)
    return float(np.median(times)) / num


def report(config, m: dict) -> str:
    kl_rows = [f"| KL {name} | {v:.3f} nats |" for name, v in m["kl_blocks"].items()]
    return "\n".join([
        f"# IAF ResNet VAE on {config.problem}",
        "",
        f"n_h {config.n_h}, n_z {config.n_z}, depths {list(config.depths)}, posterior "
        f"{config.margs.posterior}, depth_ar {config.margs.depth_ar}, kl_min "
        f"{config.margs.kl_min} (free bits off in every score), Polyak-averaged weights.",
        "",
        "| quantity | value |",
        "|---|---|",
        f"| test −ELBO ({m['num_test']} images) | {m['test_neg_elbo']:.3f} {m['unit']} |",
        f"| test IS −log p(x) (K = {m['is_samples']}, {m['is_images']} images) | "
        f"{m['test_nll_is']:.3f} {m['unit']} |",
        *kl_rows,
        f"| epochs | {m['epochs']} |",
        f"| s/update | {m['s_per_step']:.4f} |",
        f"| sampling s/image | {m['sample_s_per_image']:.5f} |",
        "",
        "Samples: `samples.png`; data and reconstructions: `reconstructions.png`; the model "
        "(averaged weights): `model.eqx`.",
        "",
    ])  # fmt: skip
