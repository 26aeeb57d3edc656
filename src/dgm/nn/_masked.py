"""Masked layers for :mod:`dgm.nn.autoregressive`: MADE masks, masked dense and AR conv layers.

Import them from :mod:`dgm.nn.autoregressive` (the public module, whose docstring describes
them); they live here to keep the modules short.

References:
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from dgm.nn.rnn import host_rng

_LOG_SCALE_FACTOR = 3.0  # w = exp(3 g) v / |v| (Theano ``logscale_scale``)
_V_STD = 0.05


def _check_size(name: str, value) -> None:
    if not (isinstance(value, int) and not isinstance(value, bool) and value > 0):
        raise ValueError(f"`{name}` must be a positive int; got {value!r}")


def made_mask(n_in: int, n_out: int, *, strict: bool, reverse: bool = False) -> np.ndarray:
    """The MADE channel mask ``(n_out, n_in)``: output ``o`` sees input ``i`` iff
    ``i·n_out <= o·n_in`` (``<`` when ``strict``); ``reverse`` reverses the order."""
    _check_size("n_in", n_in)
    _check_size("n_out", n_out)
    inp = np.arange(n_in)[None, :] * n_out
    out = np.arange(n_out)[:, None] * n_in
    mask = inp < out if strict else inp <= out
    return mask[::-1, ::-1].copy() if reverse else mask


def conv_mask(
    n_in: int, n_out: int, kernel_size: int, *, strict: bool, reverse: bool = False
) -> np.ndarray:
    """Mask ``(n_out, n_in, k, k)`` of an autoregressive convolution in raster order."""
    if not (isinstance(kernel_size, int) and kernel_size > 0 and kernel_size % 2 == 1):
        raise ValueError(f"`kernel_size` must be a positive odd int; got {kernel_size!r}")
    c = kernel_size // 2
    spatial = np.zeros((kernel_size, kernel_size), bool)
    spatial[:c, :] = True
    spatial[c, :c] = True
    mask = np.broadcast_to(spatial, (n_out, n_in, kernel_size, kernel_size)).copy()
    mask[:, :, c, c] = made_mask(n_in, n_out, strict=strict)
    return mask[::-1, ::-1, ::-1, ::-1].copy() if reverse else mask


def _masked_normal(key: PRNGKeyArray, mask: np.ndarray) -> Float[Array, "..."]:
    """N(0, 0.05²) weights, zero where masked (on the host: no per-shape compilation)."""
    return jnp.asarray(
        np.where(mask, host_rng(key).normal(0.0, _V_STD, mask.shape), 0.0), jnp.float32
    )


def _zeros(n: int) -> Float[Array, " n"]:
    return jnp.asarray(np.zeros(n, np.float32))


def elu(x: Float[Array, "..."]) -> Float[Array, "..."]:
    """ELU as ``x if x > 0 else exp(x) − 1`` (the original Theano code's form).

    The same function as ``jax.nn.elu``, which uses ``expm1``: on XLA:CPU ``expm1`` cost about
    1.7× ``exp`` per element, and the activation is a large part of an IAF network's pass
    (``benchmarks/README.md``, "IAF step"). ``exp(x) − 1`` differs from ``expm1(x)`` by at
    most one float ulp of 1 (≈ 6e-8 in float32) in absolute terms, near ``x = 0``.
    """
    return jnp.where(x > 0, x, jnp.exp(jnp.where(x > 0, 0.0, x)) - 1.0)  # no inf, grad 1 at 0


def _safe_norm(w: Float[Array, "out ..."]) -> Float[Array, " out"]:
    """Per-output-row L2 norm; 1 for an all-zero row (a fully masked output), NaN-free grads."""
    sumsq = jnp.sum(w**2, axis=tuple(range(1, w.ndim)))
    positive = sumsq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sumsq, 1.0)), 1.0)


class _WeightNormed(eqx.Module):
    """Shared parameters of a masked layer: ``weight`` (v), ``log_scale`` (g), ``bias``."""

    weight: eqx.AbstractVar[Float[Array, "out ..."]]
    log_scale: eqx.AbstractVar[Float[Array, " out"] | None]
    bias: eqx.AbstractVar[Float[Array, " out"]]
    mask: eqx.AbstractVar[Bool[Array, "out ..."]]

    def effective_weight(self) -> Float[Array, "out ..."]:
        """The masked weight actually applied (weight-normalised when ``log_scale`` is set)."""
        w = jnp.where(self.mask, self.weight, 0.0)
        if self.log_scale is None:
            return w
        gain = jnp.exp(_LOG_SCALE_FACTOR * self.log_scale) / _safe_norm(w)
        return w * gain.reshape((-1,) + (1,) * (w.ndim - 1))

    def _rescaled(self, pre_bias: Float[Array, "batch out ..."], target_std: float):
        """A copy whose outputs on this batch have mean 0 and std ``target_std`` per channel."""
        axes = (0,) + tuple(range(2, pre_bias.ndim))
        mean, std = jnp.mean(pre_bias, axis=axes), jnp.std(pre_bias, axis=axes)
        factor = init_factor(mean, std, target_std)
        new = eqx.tree_at(lambda m: m.bias, self, -mean * factor)
        if self.log_scale is not None:
            log_scale = self.log_scale + jnp.log(factor) / _LOG_SCALE_FACTOR
            return eqx.tree_at(lambda m: m.log_scale, new, log_scale)
        scaled = self.weight * factor.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        return eqx.tree_at(lambda m: m.weight, new, scaled)


def init_factor(mean, std, target_std: float):
    """Per channel, the scale that data-dependent initialisation applies: ``target_std /
    std``, or 1 for a channel constant over the batch (std 0 up to rounding, as a 1×1 top
    level of the IAF VAE sees: 1/std would be ~1e7), which the original skips."""
    constant = std <= 1e-6 * jnp.maximum(jnp.abs(mean), 1.0)
    return jnp.where(constant, 1.0, target_std / jnp.where(constant, 1.0, std))


class MaskedDense(_WeightNormed):
    """A dense layer with a :func:`made_mask` (weight-normalised unless ``weight_norm=False``).

    ``masked=False`` gives a plain (all-ones mask) layer, e.g. for a context input;
    ``copies=k`` stacks ``k`` output blocks of ``n_out`` rows with the same mask (one matrix
    product for m and s).

    Example:
        >>> layer = MaskedDense(4, 8, key=jax.random.key(0))
        >>> h = layer(jnp.ones(4, jnp.float32))
    """

    weight: Float[Array, "out inp"]
    log_scale: Float[Array, " out"] | None
    bias: Float[Array, " out"]
    mask: Bool[Array, "out inp"]

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        strict: bool = False,
        reverse: bool = False,
        weight_norm: bool = True,
        masked: bool = True,
        copies: int = 1,
        key: PRNGKeyArray,
    ):
        mask = made_mask(n_in, n_out, strict=strict, reverse=reverse)
        mask = np.tile(mask if masked else np.ones_like(mask), (copies, 1))
        n_out = mask.shape[0]
        self.mask = jnp.asarray(mask)
        self.weight = _masked_normal(key, mask)
        self.log_scale = _zeros(n_out) if weight_norm else None
        self.bias = _zeros(n_out)

    def __call__(self, x: Float[Array, " inp"]) -> Float[Array, " out"]:
        return x @ self.effective_weight().T + self.bias  # batch-major under vmap

    def init_from_data(self, x: Float[Array, "batch inp"], target_std: float = 1.0):
        """Data-dependent initialisation (see the module docstring)."""
        return self._rescaled(x @ self.effective_weight().T, target_std)


class ARConv2d(_WeightNormed):
    """An autoregressive convolution (:func:`conv_mask`), stride 1, "same" output size.

    Example:
        >>> conv = ARConv2d(2, 4, key=jax.random.key(0))
        >>> h = conv(jnp.ones((2, 5, 5), jnp.float32))
    """

    weight: Float[Array, "out inp kh kw"]
    log_scale: Float[Array, " out"] | None
    bias: Float[Array, " out"]
    mask: Bool[Array, "out inp kh kw"]
    border_channel: bool = eqx.field(static=True)

    def __init__(
        self,
        n_in: int,
        n_out: int,
        *,
        kernel_size: int = 3,
        strict: bool = False,
        reverse: bool = False,
        weight_norm: bool = True,
        border_channel: bool = True,
        copies: int = 1,
        key: PRNGKeyArray,
    ):
        mask = conv_mask(n_in, n_out, kernel_size, strict=strict, reverse=reverse)
        if border_channel:  # the indicator channel is constant: causal taps only, no centre
            extra = conv_mask(1, 1, kernel_size, strict=True, reverse=reverse)
            mask = np.concatenate([mask, np.broadcast_to(extra, (n_out, *extra.shape[1:]))], 1)
        mask = np.tile(mask, (copies, 1, 1, 1))
        n_out = mask.shape[0]
        self.mask = jnp.asarray(mask)
        self.weight = _masked_normal(key, mask)
        self.log_scale = _zeros(n_out) if weight_norm else None
        self.bias = _zeros(n_out)
        self.border_channel = border_channel

    def _conv(self, x: Float[Array, "inp h w"]) -> Float[Array, "out h w"]:
        pad = self.weight.shape[-1] // 2
        if self.border_channel:
            x = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad)))
            height, width = x.shape[1] - 2 * pad, x.shape[2] - 2 * pad
            border = jnp.ones(x.shape[1:], x.dtype).at[pad : pad + height, pad : pad + width]
            x = jnp.concatenate([x, border.set(0.0)[None]], axis=0)
            padding = "VALID"
        else:
            padding = [(pad, pad), (pad, pad)]
        w = self.effective_weight().astype(x.dtype)
        # channel-last inside: XLA:CPU runs a channel-first conv 5× slower in a loop body
        # (lax.map, lax.scan: importance sampling, samplers), jax-ml/jax#12868
        out = jax.lax.conv_general_dilated(
            x.transpose(1, 2, 0)[None], w.transpose(2, 3, 1, 0), (1, 1), padding,
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )  # fmt: skip
        return out[0].transpose(2, 0, 1)

    def __call__(self, x: Float[Array, "inp h w"]) -> Float[Array, "out h w"]:
        return self._conv(x) + self.bias[:, None, None]

    def init_from_data(self, x: Float[Array, "batch inp h w"], target_std: float = 1.0):
        """Data-dependent initialisation (see the module docstring)."""
        return self._rescaled(jax.vmap(self._conv)(x), target_std)
