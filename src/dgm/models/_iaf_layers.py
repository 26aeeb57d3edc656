"""Pieces of the IAF ResNet VAE: weight-normalised convolutions and the two likelihoods.

The convolutions follow the Theano code's ``conv.py`` (spec ``iaf.md`` §2.6): per output
channel ``w = exp(3g)·v/‖v‖`` with ``v ~ N(0, 0.05²)``, "valid" convolution over the input
zero-padded by ``(k − 1)/2`` plus one extra input channel that is 1 on the padded border and
0 inside, optional stride 2, optional sub-pixel ×2 upsampling (convolve to 4× the channels,
then depth-to-space). :meth:`WNConv.data_init` sets ``g`` and ``b`` from a minibatch so that
every output channel has mean 0 and a given standard deviation (0.1 for the ResNet's convs).

Arrays are NHWC batches: the free-bits objective and the data-dependent initialisation need
minibatch statistics, so these layers work on a batch, not on one example.

References:
    T. Salimans and D. P. Kingma, "Weight Normalization: A Simple Reparameterization to
    Accelerate Training of Deep Neural Networks", NeurIPS 2016.
    D. P. Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016 (and the code ``openai/iaf``).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.nn._masked import init_factor
from dgm.nn.rnn import host_rng

Image = Float[Array, "_batch _height _width _channels"]  # sizes may change: not bound


def depth_to_space(x: Image) -> Image:
    """``(N, H, W, 4C) -> (N, 2H, 2W, C)``: channel block ``2i + j`` fills sub-pixel (i, j)."""
    n, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(n, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, 2 * h, 2 * w, c)


def mean_pool(x: Image) -> Image:
    """2×2 mean pooling (the residual path of a downsampling block)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def upsample_nn(x: Image) -> Image:
    """Nearest-neighbour ×2 upsampling (the residual path of an upsampling block)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


def _pad_with_indicator(x: Image, pad: int) -> Image:
    """Zero-pad H and W by ``pad`` and append a channel that is 1 on the border, 0 inside."""
    n, h, w, _ = x.shape
    widths = ((0, 0), (pad, pad), (pad, pad), (0, 0))
    border = jnp.pad(jnp.zeros((n, h, w, 1), x.dtype), widths, constant_values=1.0)
    return jnp.concatenate([jnp.pad(x, widths), border], axis=-1)


class WNConv(eqx.Module):
    """Weight-normalised 2-d convolution with the padding-indicator channel.

    Args:
        in_channels, out_channels: channel counts (``out_channels`` after upsampling).
        kernel: odd kernel size.
        stride: 1, or 2 to halve H and W.
        upsample: sub-pixel ×2 upsampling of the output.
        key: draws ``v``.

    Example:
        >>> conv = WNConv(3, 8, 3, stride=2, key=jax.random.key(0))
        >>> conv(jnp.zeros((2, 16, 16, 3))).shape
        (2, 8, 8, 8)
    """

    v: Float[Array, "kh kw cin cout"]
    g: Float[Array, " cout"]
    b: Float[Array, " cout"]
    kernel: int = eqx.field(static=True)
    stride: int = eqx.field(static=True)
    upsample: bool = eqx.field(static=True)

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel: int,
        *,
        stride: int = 1,
        upsample: bool = False,
        key: PRNGKeyArray,
    ):
        if kernel % 2 != 1 or stride not in (1, 2):
            raise ValueError(f"`kernel` must be odd and `stride` 1 or 2; got {kernel}, {stride}")
        n_out = out_channels * (4 if upsample else 1)
        shape = (kernel, kernel, in_channels + 1, n_out)  # drawn on the host: no compilation
        self.v = jnp.asarray(host_rng(key).normal(0.0, 0.05, shape), jnp.float32)
        self.g = jnp.zeros((n_out,), jnp.float32)
        self.b = jnp.zeros((n_out,), jnp.float32)
        self.kernel, self.stride, self.upsample = kernel, stride, upsample

    def _conv(self, x: Image, scale: Float[Array, " cout"]) -> Image:
        norm = jnp.sqrt(jnp.sum(self.v**2, axis=(0, 1, 2)))
        w = self.v * (scale / norm)[None, None, None, :]
        xp = _pad_with_indicator(x, (self.kernel - 1) // 2)
        dims = ("NHWC", "HWIO", "NHWC")
        return jax.lax.conv_general_dilated(
            xp, w, (self.stride, self.stride), "VALID", dimension_numbers=dims
        )

    def _finish(self, y: Image) -> Image:
        return depth_to_space(y) if self.upsample else y

    def __call__(self, x: Image) -> Image:
        return self._finish(self._conv(x, jnp.exp(3.0 * self.g)) + self.b[None, None, None, :])

    def data_init(self, x: Image, init_scale: float) -> tuple["WNConv", Image]:
        """``(layer, output)`` with ``g`` and ``b`` set so that each output channel of ``x``
        has mean 0 and standard deviation ``init_scale`` (over batch, height and width).

        A channel that is constant over the batch (a 1×1 top level sees the same
        zero-initialised ``h_top`` for every image) keeps the gain 1
        (:func:`~dgm.nn._masked.init_factor`); 1/std sent the loss to ~1e15 in one update.
        """
        y = self._conv(x, jnp.ones_like(self.g))
        mean = jnp.mean(y, axis=(0, 1, 2))
        factor = init_factor(mean, jnp.std(y, axis=(0, 1, 2)), init_scale)
        layer = eqx.tree_at(lambda c: (c.g, c.b), self, (jnp.log(factor) / 3.0, -mean * factor))
        return layer, self._finish((y - mean[None, None, None, :]) * factor[None, None, None, :])


def apply(layer, x, init_scale: float | None):
    """``(layer, layer(x))``, or with ``init_scale`` the data-initialised layer and its output."""
    if init_scale is None:
        return layer, layer(x)
    return layer.data_init(x, init_scale)


def gaussian_log_pdf(z, mean, logsd):
    """Elementwise log N(z; mean, exp(logsd)²)."""
    return -0.5 * (math.log(2 * math.pi) + 2.0 * logsd + ((z - mean) * jnp.exp(-logsd)) ** 2)


def bernoulli_log_prob(logits: Image, x: Image) -> Image:
    """Elementwise log Bernoulli(x; clip(σ(logits), 1e-7, 1 − 1e-7)), as the code does."""
    p = jnp.clip(jax.nn.sigmoid(logits), 1e-7, 1.0 - 1e-7)
    return x * jnp.log(p) + (1.0 - x) * jnp.log1p(-p)


def discretized_logistic_log_prob(
    out: Image, x: Image, log_scale: Float[Array, ""], *, edge_bins: bool = False
) -> Image:
    """Elementwise log-probability of 8-bit pixels under the code's discretised logistic.

    ``μ = clip(out + 0.5, 1/512, 1 − 1/512)``, bin width ``b = 1/256``, scale
    ``s = exp(log_scale)``, ``log(σ((x/256 − μ + b)/s) − σ((x/256 − μ)/s) + 1e-7)``
    (spec §2.7). The code has no edge bins, so mass outside [0, 1] is lost; ``edge_bins``
    extends the first and last bins to ±∞ (PixelCNN++'s form), so the 256 bins sum to 1.

    Args:
        out: the decoder output (0.1·x_dec).
        x: pixel values 0..255 (as floats).
        log_scale: the learned scalar ``logsd_x``.
        edge_bins: open the outer bins.
    """
    mu = jnp.clip(out + 0.5, 1.0 / 512, 1.0 - 1.0 / 512)
    inv_s = jnp.exp(-log_scale)
    lo = x / 256.0
    upper = jax.nn.sigmoid((lo - mu + 1.0 / 256) * inv_s)
    lower = jax.nn.sigmoid((lo - mu) * inv_s)
    if edge_bins:
        upper = jnp.where(x >= 255, 1.0, upper)
        lower = jnp.where(x <= 0, 0.0, lower)
    return jnp.log(upper - lower + 1e-7)
