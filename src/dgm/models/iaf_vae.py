"""The ResNet VAE with inverse autoregressive flow posteriors (Kingma et al. 2016).

The Theano ``cvae1`` model of ``openai/iaf`` (spec ``iaf.md`` §2): an encoder conv (5×5,
stride 2), ``levels × blocks`` of ResNet blocks, each with ``n_z`` latent channels at its
resolution, a learned top state, a sub-pixel decoder conv. The bottom-up pass gives each
block's posterior parameters and context; the top-down pass gives each block's prior, the
bidirectional posterior (``down_*``), the IAF step (``*_iaf1_nl``: location only,
``*_iaf2_nl``: location and scale; the code's form ``z ← (z − 0.1m)/exp(0.1s)``,
``log q += 0.1s``), and the single-sample KL ``log q(z) − log p(z)`` per element.

Blocks of a level after its first share shapes and are stacked; they run unrolled, or under
``lax.scan`` with ``scan_blocks=True`` (its gradient was 9× slower on XLA:CPU). Functions take
NHWC batches (free bits and the data-dependent initialisation need minibatch statistics);
the latent draws of every block (:func:`draw_noise`) are explicit inputs, so the top-down
pass from the prior is a generator of them (:func:`pixel_means`).

References:
    D. P. Kingma, T. Salimans, R. Jozefowicz, X. Chen, I. Sutskever and M. Welling,
    "Improved Variational Inference with Inverse Autoregressive Flow", NeurIPS 2016.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.models import _iaf_blocks
from dgm.models._iaf_blocks import POSTERIORS, IAFBlock, Noise
from dgm.models._iaf_layers import (
    WNConv,
    apply,
    bernoulli_log_prob,
    discretized_logistic_log_prob,
)

LIKELIHOODS = ("bernoulli", "logistic")
__all__ = ["LIKELIHOODS", "POSTERIORS", "ResNetVAE", "draw_noise", "forward", "pixel_means"]


def check_depths(depths, image_size: int) -> None:
    """Raise ``ValueError`` unless ``depths`` are positive ints that keep the top ≥ 1×1."""
    depths = tuple(depths)
    if not depths or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                             for d in depths):  # fmt: skip
        raise ValueError(f"`depths` must be a non-empty list of positive ints; got {list(depths)}")
    top = image_size / 2 ** len(depths)
    if top < 1 or top != int(top):
        raise ValueError(
            f"`depths` has {len(depths)} levels, which downsample the {image_size}×{image_size} "
            f"image below 1×1 (or to a fraction); at most "
            f"{int(image_size).bit_length() - 1} levels for this image size; got {list(depths)}"
        )


class ResNetVAE(eqx.Module):
    """ResNet VAE with one of the six posterior variants.

    Args:
        channels: image channels (1 for MNIST, 3 for CIFAR-10).
        n_h: hidden channels.
        n_z: latent channels per block.
        depths: blocks per level (``[2, 2]``: two levels of two blocks).
        posterior: one of :data:`POSTERIORS`.
        depth_ar: hidden layers of the autoregressive network (IAF variants).
        likelihood: ``"bernoulli"`` (binary images) or ``"logistic"`` (8-bit pixels).
        image_size: side of the (square) image the network sees.
        pad: border pixels that are padding (MNIST: 2), left out of the likelihood.
        scan_blocks: run each level's later blocks under ``lax.scan`` (faster compilation
            for deep models; on XLA:CPU its gradient was 16× slower than the unrolled
            loop's at the mnist sizes, so it is off by default).
        key: initialisation key.

    Example:
        >>> vae = ResNetVAE(1, 8, 4, (1, 1), "down_diag", key=jax.random.key(0))
        >>> x = jnp.zeros((2, 32, 32, 1))
        >>> log_px, kls = forward(vae, x, draw_noise(vae, jax.random.key(1), 2))
        >>> log_px.shape, len(kls)
        ((2,), 2)
    """

    x_enc: WNConv
    x_dec: WNConv
    h_top: Float[Array, " n_h"]
    logsd_x: Float[Array, ""]
    levels: tuple[tuple[IAFBlock, IAFBlock | None], ...]
    channels: int = eqx.field(static=True)
    n_h: int = eqx.field(static=True)
    n_z: int = eqx.field(static=True)
    depths: tuple[int, ...] = eqx.field(static=True)
    posterior: str = eqx.field(static=True)
    depth_ar: int = eqx.field(static=True)
    likelihood: str = eqx.field(static=True)
    image_size: int = eqx.field(static=True)
    pad: int = eqx.field(static=True)
    scan_blocks: bool = eqx.field(static=True)

    def __init__(self, channels: int, n_h: int, n_z: int, depths, posterior: str,
                 depth_ar: int = 1, likelihood: str = "bernoulli", image_size: int = 32,
                 pad: int = 0, *, scan_blocks: bool = False, key: PRNGKeyArray):  # fmt: skip
        depths = tuple(depths)
        check_depths(depths, image_size)
        if posterior not in POSTERIORS:
            raise ValueError(f"`posterior` must be one of {list(POSTERIORS)}; got {posterior!r}")
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"`likelihood` must be one of {list(LIKELIHOODS)}; got {likelihood!r}")
        k_enc, k_dec, k_blocks = jax.random.split(key, 3)
        self.x_enc = WNConv(channels, n_h, 5, stride=2, key=k_enc)
        self.x_dec = WNConv(n_h, channels, 5, upsample=True, key=k_dec)
        self.h_top = jnp.zeros((n_h,), jnp.float32)
        self.logsd_x = jnp.zeros((), jnp.float32)
        levels = []
        for i, (depth, k) in enumerate(zip(depths, jax.random.split(k_blocks, len(depths)),
                                           strict=True)):  # fmt: skip
            k_head, k_tail = jax.random.split(k)
            args = (n_h, n_z, posterior, depth_ar)
            head = IAFBlock(*args, resample=i > 0, key=k_head)
            tail = None
            if depth > 1:
                keys = jax.random.split(k_tail, depth - 1)
                tail = _iaf_blocks.stack([IAFBlock(*args, resample=False, key=k) for k in keys])
            levels.append((head, tail))
        self.levels = tuple(levels)
        self.channels, self.n_h, self.n_z, self.depths = channels, n_h, n_z, depths
        self.posterior, self.depth_ar, self.likelihood = posterior, depth_ar, likelihood
        self.image_size, self.pad, self.scan_blocks = image_size, pad, scan_blocks

    def level_sizes(self) -> list[int]:
        """Spatial side of each level's latents (``image_size / 2^(i+1)``)."""
        return [self.image_size // 2 ** (i + 1) for i in range(len(self.depths))]

    @property
    def latent_dim(self) -> int:
        """Number of latent draws of one image (all blocks, all positions, all channels)."""
        return sum(d * s * s * self.n_z for d, s in zip(self.depths, self.level_sizes(),
                                                        strict=True))  # fmt: skip


def block_names(model: ResNetVAE) -> list[str]:
    """Names ``z<level>_<block>`` of the blocks in the order of :class:`Terms`'s
    ``kl_blocks`` (top-down: levels from the top, a level's later blocks before its first)."""
    names = []
    for i in reversed(range(len(model.depths))):
        names += [f"z{i}_{j}" for j in range(1, model.depths[i])] + [f"z{i}_0"]
    return names


def draw_noise(model: ResNetVAE, key: PRNGKeyArray, batch: int) -> Noise:
    """Standard-normal draws for every block: per level ``(head (N, s, s, n_z), tail
    (depth − 1, N, s, s, n_z) or None)``."""
    noise = []
    for i, (depth, side) in enumerate(zip(model.depths, model.level_sizes(), strict=True)):
        k_head, k_tail = jax.random.split(jax.random.fold_in(key, i))
        shape = (batch, side, side, model.n_z)
        head = jax.random.normal(k_head, shape)
        tail = jax.random.normal(k_tail, (depth - 1, *shape)) if depth > 1 else None
        noise.append((head, tail))
    return noise


def noise_from_vector(model: ResNetVAE, u: Float[Array, " latent"]) -> Noise:
    """The flat vector of all draws (level by level, head then tail) as :func:`draw_noise`'s
    structure for one image."""
    noise, start = [], 0
    for depth, side in zip(model.depths, model.level_sizes(), strict=True):
        size = side * side * model.n_z
        head = u[start : start + size].reshape(1, side, side, model.n_z)
        start += size
        tail = None
        if depth > 1:
            num = (depth - 1) * size
            tail = u[start : start + num].reshape(depth - 1, 1, side, side, model.n_z)
            start += num
        noise.append((head, tail))
    return noise


def _encode_input(model: ResNetVAE, x):
    """x̄ − 0.5 with x̄ = x for binary images, clip((x + 0.5)/256, 0, 1) for 8-bit ones."""
    if model.likelihood == "bernoulli":
        return x - 0.5
    return jnp.clip((x + 0.5) / 256.0, 0.0, 1.0) - 0.5


def _top(model: ResNetVAE, batch: int):
    side = model.image_size // 2 ** len(model.depths)
    return jnp.broadcast_to(model.h_top, (batch, side, side, model.n_h))


def _log_px(model: ResNetVAE, out, x) -> Float[Array, " batch"]:
    if model.likelihood == "bernoulli":
        lp = bernoulli_log_prob(out, x)
    else:
        lp = discretized_logistic_log_prob(out, x, model.logsd_x)
    p, size = model.pad, model.image_size
    return jnp.sum(lp[:, p : size - p, p : size - p, :], axis=(1, 2, 3))


def _posterior_pass(model: ResNetVAE, x, noise: Noise, init_scale):
    """``(decoder output, kls, (x_enc, x_dec, levels))`` of the two passes."""
    x_enc, h = apply(model.x_enc, _encode_input(model, x), init_scale)
    scan = model.scan_blocks
    levels, records = _iaf_blocks.up_pass(model.levels, h, noise, init_scale, scan=scan)
    h, levels, kls = _iaf_blocks.down_pass(levels, _top(model, x.shape[0]), records, noise,
                                           init_scale, prior=False, scan=scan)  # fmt: skip
    x_dec, out = apply(model.x_dec, jax.nn.elu(h), init_scale)
    return 0.1 * out, kls, (x_enc, x_dec, levels)


def forward(
    model: ResNetVAE, x, noise: Noise, *, init_scale: float | None = None
) -> tuple[Float[Array, " batch"], list] | tuple[Float[Array, " batch"], list, ResNetVAE]:
    """Bottom-up and top-down pass with posterior samples built from ``noise``.

    Args:
        model: the VAE.
        x: images ``(N, size, size, channels)``: {0, 1} for Bernoulli, 0..255 for logistic.
        noise: :func:`draw_noise` for ``N`` images.
        init_scale: data-dependent initialisation: every ordinary conv is set to output
            mean 0 and standard deviation ``init_scale`` on ``x`` (blocks run one by one).

    Returns:
        ``(log p(x|z) per image, per-block KL elements (N, s, s, n_z) top-down)``, and with
        ``init_scale`` also the initialised model.
    """
    out, kls, parts = _posterior_pass(model, x, noise, init_scale)
    log_px = _log_px(model, out, x)
    if init_scale is None:
        return log_px, kls
    new = eqx.tree_at(lambda m: (m.x_enc, m.x_dec, m.levels), model, parts)
    return log_px, kls, new


def _means(model: ResNetVAE, out):
    if model.likelihood == "bernoulli":
        return jax.nn.sigmoid(out)
    return jnp.clip(out + 0.5, 1.0 / 512, 1.0 - 1.0 / 512)


def reconstruction_means(model: ResNetVAE, x, key: PRNGKeyArray):
    """Pixel means of p(x|z) for one z ~ q(z|x) per image (reconstructions)."""
    out, _, _ = _posterior_pass(model, x, draw_noise(model, key, x.shape[0]), None)
    return _means(model, out)


def decoder_output(model: ResNetVAE, noise: Noise, batch: int):
    """The decoder output (0.1·x_dec) of the top-down pass with z ~ p(z) from ``noise``."""
    h, _, _ = _iaf_blocks.down_pass(model.levels, _top(model, batch), None, noise, None,
                                    prior=True, scan=model.scan_blocks)  # fmt: skip
    return 0.1 * model.x_dec(jax.nn.elu(h))


def pixel_means(model: ResNetVAE, noise: Noise, batch: int):
    """Pixel means of prior samples ``(N, size, size, channels)`` in (0, 1): σ(output) for
    Bernoulli, the logistic's location μ for 8-bit images."""
    return _means(model, decoder_output(model, noise, batch))


@eqx.filter_jit
def data_dependent_init(model: ResNetVAE, x, key: PRNGKeyArray, init_scale: float = 0.1):
    """The model with every ordinary conv initialised on the minibatch ``x`` (spec §2.6):
    each output channel has mean 0 and standard deviation ``init_scale`` (AR convs: 1)."""
    return forward(model, x, draw_noise(model, key, x.shape[0]), init_scale=init_scale)[2]


class Terms(eqx.Module):
    """One-sample terms of a minibatch: ``log p(x|z)`` and the KL per image, the free-bits
    KL, the per-block KL means (nats per image, top-down)."""

    log_px: Float[Array, " batch"]
    kl: Float[Array, " batch"]
    kl_free_bits: Float[Array, ""]
    kl_blocks: Float[Array, " blocks"]


def _block_channel_kl(kl):
    """Minibatch mean of the spatially summed KL per (block, channel): ``(blocks, n_z)``."""
    per = jnp.sum(kl, axis=(-3, -2))  # (..., N, n_z)
    return jnp.mean(per, axis=-2).reshape(-1, per.shape[-1])


def image_block_kl(kls: list, num_images: int) -> Float[Array, "blocks batch"]:
    """Each block's KL per image, ``(blocks, N)``, from :func:`forward`'s KL elements."""
    return jnp.concatenate([jnp.sum(k, axis=(-3, -2, -1)).reshape(-1, num_images) for k in kls])


def terms(model: ResNetVAE, x, key: PRNGKeyArray, kl_min) -> Terms:
    """The ELBO's pieces for images ``x`` with one posterior sample each.

    Free bits as the code does them (spec §2.8): for every block and latent channel, the
    minibatch mean of the spatially summed ``log q − log p``, floored at ``kl_min``, summed:
    one scalar for the whole batch. With ``kl_min = 0`` it is the plain mean KL.
    """
    log_px, kls = forward(model, x, draw_noise(model, key, x.shape[0]))
    kl = image_block_kl(kls, x.shape[0]).sum(0)
    per_block = jnp.concatenate([_block_channel_kl(k) for k in kls])
    floored = jnp.sum(jnp.maximum(kl_min, per_block))
    free_bits = jnp.where(kl_min > 0, floored, jnp.mean(kl))
    return Terms(log_px, kl, free_bits, per_block.sum(-1))


def loss(model: ResNetVAE, x, key: PRNGKeyArray, kl_min) -> Float[Array, ""]:
    """Training cost, nats per image: ``mean(−log p(x|z)) + free-bits KL``. With
    ``kl_min = 0`` it is the minibatch mean of the one-sample −ELBO."""
    t = terms(model, x, key, kl_min)
    return -jnp.mean(t.log_px) + t.kl_free_bits


def log_weights(model: ResNetVAE, x, key: PRNGKeyArray) -> Float[Array, " batch"]:
    """``log p(x|z) + log p(z) − log q(z|x)`` for one z ~ q(z|x) per image (no free bits):
    the one-sample ELBO, and the log importance weight."""
    t = terms(model, x, key, 0.0)
    return t.log_px - t.kl


def importance_log_likelihood(
    model: ResNetVAE, x, key: PRNGKeyArray, num_samples: int, chunk_size: int
) -> Float[Array, " batch"]:
    """log p̂(x) = logmeanexp over ``num_samples`` log weights per image (spec §2.10).

    Each chunk repeats the ``N`` images ``chunk_size`` times (one forward pass of
    ``N·chunk_size`` images); chunks run under ``lax.map``, so K = 1000 fits in memory.

    Raises:
        ValueError: ``chunk_size`` does not divide ``num_samples``.
    """
    if num_samples % chunk_size:
        raise ValueError(
            f"`chunk_size` must divide `num_samples`; got {chunk_size} and {num_samples}"
        )
    n = x.shape[0]
    reps = jnp.repeat(x, chunk_size, axis=0)

    def chunk(k):
        return log_weights(model, reps, k).reshape(n, chunk_size)

    keys = jax.random.split(key, num_samples // chunk_size)
    log_w = jnp.moveaxis(jax.lax.map(chunk, keys), 0, 1).reshape(n, num_samples)
    return jax.nn.logsumexp(log_w, axis=1) - jnp.log(float(num_samples))
