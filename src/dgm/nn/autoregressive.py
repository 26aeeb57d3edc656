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
- :class:`MaskedDense` ``(n_in, n_out, *, strict=False, reverse=False, weight_norm=True,
  masked=True, copies=1, key)``, called on one example ``(n_in,) -> (copies·n_out,)``
  (``copies`` stacks output blocks with the same mask: m and s in one product).
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
  ``ar_multiconv2d``). Hidden layers use non-strict masks, the output layer (``net.out``, the
  ``num_outputs`` blocks stacked) strict ones, so output ``(c, y, x)`` depends only on earlier
  pixels and, at its own pixel, channels ``< c``.
- ``net.solve(update_fn, y, context)`` finds ``z`` with ``z = update_fn(y, net(z, context))``
  elementwise (an IAF inverse): variable by variable at about one pass for a one-hidden-layer
  :class:`ARMLP`, else a fixed point of one pass per variable.
- :func:`elu`: the default activation, ``jax.nn.elu``'s function written with ``exp`` (the
  Theano code's form; ``expm1`` is slower on XLA:CPU).
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
from jaxtyping import Array, Float, Int, PRNGKeyArray

from dgm.nn._masked import (
    ARConv2d,
    MaskedDense,
    _check_size,
    conv_mask,
    elu,
    made_mask,
)

__all__ = ["ARMLP", "ARConv2d", "ARConvNet", "MaskedDense", "conv_mask", "elu", "made_mask"]


class ARMLP(eqx.Module):
    """A MADE network ``z -> (m, s)`` with an optional context (see the module docstring).

    Example:
        >>> net = ARMLP(4, (8, 8), context_size=3, key=jax.random.key(0))
        >>> m, s = net(jnp.ones(4, jnp.float32), jnp.ones(3, jnp.float32))
    """

    hidden: list[MaskedDense]
    out: MaskedDense
    context: MaskedDense | None
    activation: Callable = eqx.field(static=True)
    order: Int[Array, " dim"]  # the autoregressive order (an array: both orders share a trace)
    num_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        dim: int,
        hidden_sizes: tuple[int, ...],
        *,
        context_size: int = 0,
        num_outputs: int = 2,
        activation: Callable = elu,
        reverse: bool = False,
        weight_norm: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = _check_network("dim", dim, hidden_sizes, num_outputs)
        keys = list(jax.random.split(key, len(sizes) + 1))
        kw = {"reverse": reverse, "weight_norm": weight_norm}
        self.hidden = [
            MaskedDense(a, b, **kw, key=keys.pop()) for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        self.out = MaskedDense(
            sizes[-1], dim, strict=True, copies=num_outputs, **kw, key=keys.pop()
        )
        self.num_outputs = num_outputs
        self.order = jnp.asarray(np.arange(dim)[::-1].copy() if reverse else np.arange(dim))
        self.context = None
        if context_size:  # unmasked: the context is not a flow variable
            _check_size("context_size", context_size)
            self.context = MaskedDense(
                context_size, sizes[1], weight_norm=weight_norm, masked=False, key=keys.pop()
            )
        self.activation = activation

    def _first(self, z, context):
        """The first hidden layer's pre-activation, context included."""
        if (self.context is None) != (context is None):
            have = "no context layer" if self.context is None else "a context layer"
            raise ValueError(f"`context` must be given iff the network has one; it has {have}")
        h = self.hidden[0](z)
        return h if self.context is None else h + self.context(context)

    def __call__(
        self, z: Float[Array, " dim"], context: Float[Array, " ctx"] | None = None
    ) -> tuple[Float[Array, " dim"], ...]:
        h = self.activation(self._first(z, context))
        for layer in self.hidden[1:]:
            h = self.activation(layer(h))
        return tuple(jnp.split(self.out(h), self.num_outputs))

    def solve(
        self,
        update_fn: Callable,
        y: Float[Array, " dim"],
        context: Float[Array, " ctx"] | None = None,
    ) -> tuple[Float[Array, " dim"], tuple[Float[Array, " dim"], ...]]:
        """The ``z`` with ``z_i = update_fn(y_i, outputs_i(z))`` for every ``i``, and its outputs.

        With one hidden layer, variable by variable in the autoregressive order: setting
        ``z_i`` adds a rank-one term to the hidden pre-activation and output ``i + 1`` needs one
        row of the output layer, so the solve costs about one network pass (``dim`` passes for
        the generic fixed point). Deeper networks fall back to the fixed point.
        """
        if len(self.hidden) != 1:
            return _fixed_point(self, update_fn, y, context)
        dim = y.shape[0]
        w_in, w_out, b_out = (
            self.hidden[0].effective_weight(),
            self.out.effective_weight(),
            self.out.bias,
        )
        rows = jnp.arange(self.num_outputs) * dim

        def body(carry, i):
            z, pre = carry
            act = self.activation(pre)
            outs = tuple(w_out[rows + i] @ act + b_out[rows + i])
            z_i = update_fn(y[i], outs)
            return (z.at[i].set(z_i), pre + w_in[:, i] * z_i), jnp.stack(outs)

        order = self.order
        start = (jnp.zeros_like(y), self._first(jnp.zeros_like(y), context))
        (z, _), outs = jax.lax.scan(body, start, order)
        outs = outs[jnp.argsort(order)].T  # back to variable order, (num_outputs, dim)
        return z, tuple(outs)

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
        return eqx.tree_at(lambda n: n.out, net, net.out.init_from_data(h, target_std))


def _fixed_point(net, update_fn, y, context):
    """Generic autoregressive solve: after pass ``k`` the first ``k`` variables are exact.

    Non-finite placeholders (not yet exact) are reset to 0 so that no inf meets a masked
    (zero) weight and turns an exact variable into NaN.
    """

    def body(_, z):
        new = update_fn(y, net(z, context))
        return jnp.where(jnp.isfinite(new), new, 0.0)

    z = jax.lax.fori_loop(0, y.size, body, jnp.zeros_like(y))
    return z, net(z, context)


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
    out: ARConv2d
    activation: Callable = eqx.field(static=True)
    num_outputs: int = eqx.field(static=True)

    def __init__(
        self,
        channels: int,
        hidden_channels: tuple[int, ...],
        *,
        kernel_size: int = 3,
        num_outputs: int = 2,
        activation: Callable = elu,
        reverse: bool = False,
        weight_norm: bool = True,
        border_channel: bool = True,
        key: PRNGKeyArray,
    ):
        sizes = _check_network("channels", channels, hidden_channels, num_outputs)
        keys = list(jax.random.split(key, len(sizes)))
        kw = {
            "kernel_size": kernel_size,
            "reverse": reverse,
            "weight_norm": weight_norm,
            "border_channel": border_channel,
        }
        self.hidden = [
            ARConv2d(a, b, **kw, key=keys.pop()) for a, b in zip(sizes, sizes[1:], strict=False)
        ]
        self.out = ARConv2d(
            sizes[-1], channels, strict=True, copies=num_outputs, **kw, key=keys.pop()
        )
        self.activation, self.num_outputs = activation, num_outputs

    def __call__(
        self, z: Float[Array, "c h w"], context: Float[Array, "hid h w"] | None = None
    ) -> tuple[Float[Array, "c h w"], ...]:
        h = z
        for i, layer in enumerate(self.hidden):
            h = layer(h)
            if i == 0 and context is not None:
                h = h + context
            h = self.activation(h)
        return tuple(jnp.split(self.out(h), self.num_outputs))

    def solve(
        self,
        update_fn: Callable,
        y: Float[Array, "c h w"],
        context: Float[Array, "hid h w"] | None = None,
    ) -> tuple[Float[Array, "c h w"], tuple[Float[Array, "c h w"], ...]]:
        """The ``z`` with ``z = update_fn(y, outputs(z))`` (fixed point, one pass per variable)."""
        return _fixed_point(self, update_fn, y, context)

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
        return eqx.tree_at(lambda n: n.out, net, net.out.init_from_data(h, target_std))
