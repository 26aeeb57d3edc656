"""Autoregressive (MADE-masked) dense and convolutional layers and networks with a context.

Public API (built on by :mod:`dgm.nn.flows` and the IAF-VAE):

- :func:`made_mask` ``(n_in, n_out, *, strict, reverse) -> bool (n_out, n_in)``: the channel
  mask. Channel ``c`` of a layer of width ``n`` has degree ``c·D/n`` on one global scale
  ``[0, D)`` (``D`` the number of flow variables), so output ``o`` sees input ``i`` iff
  ``i·n_out <= o·n_in`` (``<`` when ``strict``). For widths that divide one another this is
  the original's ``ar.py`` rule: going wider (``k = n_out/n_in``) output group ``o // k`` sees
  inputs ``<= o // k``; the strict (``zerodiagonal``) output layer, going narrower
  (``k = n_in/n_out``), lets output ``o`` see inputs ``< o·k``. ``reverse`` flips both axes
  (the reversed variable order).
- :func:`conv_mask` ``(n_in, n_out, kernel_size, *, strict, reverse) -> bool (out, in, k, k)``:
  raster order over pixels (rows above, and the taps left of the centre in the centre row, are
  free; taps below/right are zero) with :func:`made_mask` at the centre tap. ``reverse`` flips
  all four axes (the original's ``flipmask``).
- :class:`MaskedDense` ``(n_in, n_out, *, strict=False, reverse=False, weight_norm=True, key)``,
  called on one example ``(n_in,) -> (n_out,)``.
- :class:`ARConv2d` ``(n_in, n_out, *, kernel_size=3, strict=False, reverse=False,
  weight_norm=True, border_channel=True, key)``, called on one image ``(C, H, W)``
  (channel-first, as ``eqx.nn.Conv2d``), "same" output size.
- :class:`ARMLP` ``(dim, hidden_sizes, *, context_size=0, num_outputs=2, activation=elu,
  reverse=False, weight_norm=True, key)``: ``net(z, context=None) -> (m, s)`` (a tuple of
  ``num_outputs`` arrays of shape ``(dim,)``). The context (``(context_size,)``) enters through
  an unmasked weight-normed dense layer added after the first masked layer, before its
  nonlinearity (the original's ``ar.mlp``).
- :class:`ARConvNet` ``(channels, hidden_channels, *, kernel_size=3, num_outputs=2,
  activation=elu, reverse=False, weight_norm=True, border_channel=True, key)``:
  ``net(z, context=None) -> (m, s)``; ``context`` has ``hidden_channels[0]`` channels and the
  image's size and is added as is after the first hidden conv (the original's
  ``ar_multiconv2d``). Hidden layers use non-strict masks, the output layers strict ones, so
  output ``(c, y, x)`` depends only on earlier pixels and, at its own pixel, channels ``< c``.
- Every layer and network has ``init_from_data(batch..., target_std=1.0)``: the data-dependent
  initialisation of weight normalisation (outputs of zero mean and ``target_std`` over the batch
  and the pixels; the original uses 1.0 for AR layers), returning a new module.

Weight normalisation is the Theano code's: ``w = exp(3g)·v/‖v‖`` per output channel, of the
*masked* ``v``, with ``v ~ N(0, 0.05²)``, ``g = 0`` and a zero bias. Masks are boolean arrays, so
``eqx.is_inexact_array`` filters (optimizers, L2 penalties) skip them.

The ``border_channel`` option is the Theano convolution's extra input channel that is 1 in the
zero-padded border and 0 inside (``pad2dwithchannel``); it sees only the causal taps.

References:
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016 (code: ``openai/iaf``, ``graphy/nodes/ar.py``).
    Salimans & Kingma, "Weight Normalization", NeurIPS 2016.
"""

from collections.abc import Callable

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
        factor = jnp.where(std > 0, target_std / jnp.where(std > 0, std, 1.0), 1.0)
        new = eqx.tree_at(lambda m: m.bias, self, -mean * factor)
        if self.log_scale is not None:
            log_scale = self.log_scale + jnp.log(factor) / _LOG_SCALE_FACTOR
            return eqx.tree_at(lambda m: m.log_scale, new, log_scale)
        scaled = self.weight * factor.reshape((-1,) + (1,) * (self.weight.ndim - 1))
        return eqx.tree_at(lambda m: m.weight, new, scaled)


class MaskedDense(_WeightNormed):
    """A dense layer with a :func:`made_mask` (weight-normalised unless ``weight_norm=False``).

    ``masked=False`` gives a plain (all-ones mask) layer, e.g. for a context input.

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
        key: PRNGKeyArray,
    ):
        mask = made_mask(n_in, n_out, strict=strict, reverse=reverse)
        mask = mask if masked else np.ones_like(mask)
        self.mask = jnp.asarray(mask)
        self.weight = _masked_normal(key, mask)
        self.log_scale = _zeros(n_out) if weight_norm else None
        self.bias = _zeros(n_out)

    def __call__(self, x: Float[Array, " inp"]) -> Float[Array, " out"]:
        return self.effective_weight() @ x + self.bias

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
        key: PRNGKeyArray,
    ):
        mask = conv_mask(n_in, n_out, kernel_size, strict=strict, reverse=reverse)
        if border_channel:  # the indicator channel is constant: causal taps only, no centre
            extra = conv_mask(1, 1, kernel_size, strict=True, reverse=reverse)
            mask = np.concatenate([mask, np.broadcast_to(extra, (n_out, *extra.shape[1:]))], 1)
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
        out = jax.lax.conv_general_dilated(x[None], w, (1, 1), padding)
        return out[0]

    def __call__(self, x: Float[Array, "inp h w"]) -> Float[Array, "out h w"]:
        return self._conv(x) + self.bias[:, None, None]

    def init_from_data(self, x: Float[Array, "batch inp h w"], target_std: float = 1.0):
        """Data-dependent initialisation (see the module docstring)."""
        return self._rescaled(jax.vmap(self._conv)(x), target_std)


class ARMLP(eqx.Module):
    """A MADE network ``z -> (m, s)`` with an optional context (see the module docstring).

    Example:
        >>> net = ARMLP(4, (8, 8), context_size=3, key=jax.random.key(0))
        >>> m, s = net(jnp.ones(4, jnp.float32), jnp.ones(3, jnp.float32))
    """

    hidden: list[MaskedDense]
    outputs: list[MaskedDense]
    context: MaskedDense | None
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        hidden_sizes: tuple[int, ...],
        *,
        context_size: int = 0,
        num_outputs: int = 2,
        activation: Callable = jax.nn.elu,
        reverse: bool = False,
        weight_norm: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = _check_network("dim", dim, hidden_sizes, num_outputs)
        keys = list(jax.random.split(key, len(sizes) - 1 + num_outputs + 1))
        kw = {"reverse": reverse, "weight_norm": weight_norm}
        self.hidden = [
            MaskedDense(a, b, **kw, key=keys.pop()) for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        self.outputs = [
            MaskedDense(sizes[-1], dim, strict=True, **kw, key=keys.pop())
            for _ in range(num_outputs)
        ]
        self.context = None
        if context_size:  # unmasked: the context is not a flow variable
            _check_size("context_size", context_size)
            self.context = MaskedDense(
                context_size, sizes[1], weight_norm=weight_norm, masked=False, key=keys.pop()
            )
        self.activation = activation

    def __call__(
        self, z: Float[Array, " dim"], context: Float[Array, " ctx"] | None = None
    ) -> tuple[Float[Array, " dim"], ...]:
        if (self.context is None) != (context is None):
            have = "no context layer" if self.context is None else "a context layer"
            raise ValueError(f"`context` must be given iff the network has one; it has {have}")
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and self.context is not None:
                h = h + self.context(context)
            h = self.activation(h)
        return tuple(out(h) for out in self.outputs)

    def init_from_data(
        self,
        z: Float[Array, "batch dim"],
        context: Float[Array, "batch ctx"] | None = None,
        target_std: float = 1.0,
    ) -> "ARMLP":
        """Data-dependent initialisation of every layer in turn, on a batch."""
        net, h = self, z
        if self.context is not None and context is not None:
            net = eqx.tree_at(lambda n: n.context, net, net.context.init_from_data(context))
        for i in range(len(self.hidden)):
            layer = net.hidden[i].init_from_data(h, target_std)
            net = eqx.tree_at(lambda n, i=i: n.hidden[i], net, layer)
            h = jax.vmap(layer)(h)
            if i == 0 and net.context is not None and context is not None:
                h = h + jax.vmap(net.context)(context)
            h = self.activation(h)
        outs = [out.init_from_data(h, target_std) for out in net.outputs]
        return eqx.tree_at(lambda n: n.outputs, net, outs)


def _check_network(name, dim, hidden, num_outputs) -> list[int]:
    _check_size(name, dim)
    if not (isinstance(num_outputs, int) and num_outputs in (1, 2)):
        raise ValueError(f"`num_outputs` must be 1 (location only) or 2; got {num_outputs!r}")
    hidden = tuple(hidden)
    if not hidden:
        raise ValueError("`hidden_sizes` must name at least one hidden layer; got ()")
    for h in hidden:
        _check_size("hidden_sizes", h)
    return [dim, *hidden]


class ARConvNet(eqx.Module):
    """An autoregressive conv net ``z -> (m, s)`` with an optional context (module docstring).

    Example:
        >>> net = ARConvNet(2, (8,), key=jax.random.key(0))
        >>> z = jnp.ones((2, 4, 4), jnp.float32)
        >>> m, s = net(z, jnp.zeros((8, 4, 4), jnp.float32))
    """

    hidden: list[ARConv2d]
    outputs: list[ARConv2d]
    activation: Callable = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        hidden_channels: tuple[int, ...],
        *,
        kernel_size: int = 3,
        num_outputs: int = 2,
        activation: Callable = jax.nn.elu,
        reverse: bool = False,
        weight_norm: bool = True,
        border_channel: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = _check_network("channels", channels, hidden_channels, num_outputs)
        keys = list(jax.random.split(key, len(sizes) - 1 + num_outputs))
        kw = {
            "kernel_size": kernel_size,
            "reverse": reverse,
            "weight_norm": weight_norm,
            "border_channel": border_channel,
        }
        self.hidden = [
            ARConv2d(a, b, **kw, key=keys.pop()) for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        self.outputs = [
            ARConv2d(sizes[-1], channels, strict=True, **kw, key=keys.pop())
            for _ in range(num_outputs)
        ]
        self.activation = activation

    def __call__(
        self, z: Float[Array, "c h w"], context: Float[Array, "hid h w"] | None = None
    ) -> tuple[Float[Array, "c h w"], ...]:
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and context is not None:
                h = h + context
            h = self.activation(h)
        return tuple(out(h) for out in self.outputs)

    def init_from_data(
        self,
        z: Float[Array, "batch c h w"],
        context: Float[Array, "batch hid h w"] | None = None,
        target_std: float = 1.0,
    ) -> "ARConvNet":
        """Data-dependent initialisation of every layer in turn, on a batch."""
        net, h = self, z
        for i in range(len(self.hidden)):
            layer = net.hidden[i].init_from_data(h, target_std)
            net = eqx.tree_at(lambda n, i=i: n.hidden[i], net, layer)
            h = jax.vmap(layer)(h)
            if i == 0 and context is not None:
                h = h + context
            h = self.activation(h)
        outs = [out.init_from_data(h, target_std) for out in net.outputs]
        return eqx.tree_at(lambda n: n.outputs, net, outs)
