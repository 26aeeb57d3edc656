"""Adamax without bias correction, as the IAF code's ``AdaMaxAvg`` does it.

``m ← b1·m + (1 − b1)·g``, ``u ← max(b2·u, |g| + eps)`` with ``u`` starting at ``eps``,
``Δw = −α·m/u``. Optax's ``scale_by_adamax`` divides ``m`` by ``1 − b1^t`` (bias correction),
which makes the first updates ten times larger than the original's; this transform does not.
Polyak averaging of the weights is the trainer's ``ema_decay``.

References:
    D. P. Kingma and J. Ba, "Adam: A Method for Stochastic Optimization", ICLR 2015 (§7.1,
    AdaMax). The IAF code ``openai/iaf``, ``graphy/misc/optim.py``.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from dgm.config import check_positive


class AdamaxState(NamedTuple):
    """First moment ``m`` and infinity norm ``u`` of every parameter."""

    m: optax.Updates
    u: optax.Updates


def scale_by_adamax_no_bias_correction(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """The Adamax direction ``m/u`` without bias correction (multiply by −α separately)."""

    def init(params):
        zeros = jax.tree.map(jnp.zeros_like, params)
        return AdamaxState(zeros, jax.tree.map(lambda p: jnp.full_like(p, eps), params))

    def update(updates, state, params=None):
        m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, updates)
        u = jax.tree.map(lambda u, g: jnp.maximum(b2 * u, jnp.abs(g) + eps), state.u, updates)
        return jax.tree.map(lambda a, b: a / b, m, u), AdamaxState(m, u)

    return optax.GradientTransformation(init, update)


def adamax_no_bias_correction(
    learning_rate: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8
) -> optax.GradientTransformation:
    """``w ← w − α·m/u``: Adamax as the IAF code runs it (α = 0.002, b1 = 0.9, b2 = 0.999).

    Example:
        >>> opt = adamax_no_bias_correction(0.002)
    """
    check_positive("learning_rate", learning_rate)
    for name, value in (("b1", b1), ("b2", b2)):
        if not 0 <= value < 1:
            raise ValueError(f"`{name}` must lie in [0, 1); got {value!r}")
    return optax.chain(scale_by_adamax_no_bias_correction(b1, b2, eps), optax.scale(-learning_rate))
