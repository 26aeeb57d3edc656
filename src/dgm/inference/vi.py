"""Amortized variational inference for a joint density ``p(z, y)`` with simulated ``y``.

The objective is the ELBO averaged over observations from the model itself,
``E_{y ~ p(y)} E_{z ~ q(z|y)} [log p(z, y) − log q(z | y)]``: the reverse KL from ``q(· | y)``
to ``p(· | y)`` averaged over ``p(y)``, up to the constant entropy of ``y``. Its
minimiser is the exact posterior for every ``y`` at once (when ``q`` can express it), so no
observed data set is needed, only a simulator of ``y`` (VAE encoders amortize the same
way over a data set). Gradients are reparameterised through ``q``'s draws.

``q`` is any Equinox module with ``sample_and_log_prob(y, *, key) -> (z, log_q)`` (one
observation, one draw), e.g. :class:`dgm.models.amortized.AmortizedPosterior`.

Example:
    >>> import optax
    >>> from dgm.models.amortized import AmortizedPosterior
    >>> log_joint = lambda z, y: -0.5 * (z @ z + jnp.sum((y - z[0]) ** 2) / 0.25)
    >>> def simulate(key):  # z ~ N(0, 1), then three y ~ N(z, 0.5²)
    ...     key_z, key_y = jax.random.split(key)
    ...     return jax.random.normal(key_z) + 0.5 * jax.random.normal(key_y, (3,))
    >>> q = AmortizedPosterior(1, 3, num_flows=0, key=jax.random.key(0))
    >>> optimizer = optax.adam(1e-3)
    >>> step = eqx.filter_jit(build_train_step(log_joint, optimizer))
    >>> ys = simulate_batch(simulate, jax.random.key(1), 8)
    >>> q, opt_state, info = step(q, init(q, optimizer), ys, jax.random.key(2))
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PRNGKeyArray


class VIInfo(NamedTuple):
    """Diagnostics of one training step.

    Attributes:
        loss: the negative ELBO of the step's batch (mean over its observations).
        grad_norm: the global norm of the gradient.
    """

    loss: Float[Array, ""]
    grad_norm: Float[Array, ""]


def elbo(
    q: Any, log_joint_fn: Callable, y: Float[Array, " obs"], key: PRNGKeyArray
) -> Float[Array, ""]:
    """A one-draw estimate of ``log p(z, y) − log q(z | y)``, ``z ~ q(· | y)``."""
    z, log_q = q.sample_and_log_prob(y, key=key)
    return log_joint_fn(z, y) - log_q


def init(q: Any, optimizer: Any) -> Any:
    """The optimizer state for ``q``'s floating arrays (masks and other integer or boolean
    arrays are not trained)."""
    return optimizer.init(eqx.filter(q, eqx.is_inexact_array))


def build_train_step(log_joint_fn: Callable, optimizer: Any) -> Callable:
    """``train_step(q, opt_state, ys, key) -> (q, opt_state, VIInfo)``.

    One draw ``z ~ q(· | y)`` for each row ``y`` of the batch ``ys`` (observations simulated
    from the model, or one observation repeated to fit q to it alone); the loss is the
    batch's mean negative ELBO. Rows that are not finite (a simulator's failures, such as a
    pose behind the camera) are left out of the mean, so q is fitted to the model
    conditioned on its simulations succeeding; with no finite row the loss is NaN.

    Args:
        log_joint_fn: ``log p(z, y)`` (up to a constant), one ``z`` and one ``y``.
        optimizer: an Optax ``GradientTransformation``.
    """

    def loss_fn(q, ys, key):
        keys = jax.random.split(key, ys.shape[0])
        ok = jnp.all(jnp.isfinite(ys), axis=1)
        # a failed row is replaced by a finite one before any arithmetic (its weight is 0,
        # and NaN inputs would make even a zero-weighted gradient NaN)
        safe = jnp.where(ok[:, None], ys, ys[jnp.argmax(ok)])
        terms = jax.vmap(lambda y, k: elbo(q, log_joint_fn, y, k))(safe, keys)
        return -jnp.sum(jnp.where(ok, terms, 0.0)) / jnp.sum(ok, dtype=terms.dtype)

    def train_step(q, opt_state, ys, key):
        loss, grads = eqx.filter_value_and_grad(loss_fn)(q, ys, key)
        # Optax mixes its int32 step count with float decay rates
        with jax.numpy_dtype_promotion("standard"):
            params = eqx.filter(q, eqx.is_inexact_array)
            updates, opt_state = optimizer.update(grads, opt_state, params)
        return eqx.apply_updates(q, updates), opt_state, VIInfo(loss, optax.tree.norm(grads))

    return train_step


def simulate_batch(simulate_fn: Callable, key: PRNGKeyArray, batch_size: int) -> Array:
    """``batch_size`` observations ``simulate_fn(key_i)``, stacked."""
    return jax.vmap(simulate_fn)(jax.random.split(key, batch_size))
