"""One jitted train step (loss, gradient, Optax update, optional weight average).

A batch handed to a loss is ``(data, hyper)``: ``hyper`` holds float32 scalars computed on
the host each step (the KL weight, other schedules, constants), so changing them never
recompiles.
"""

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import optax
from jaxtyping import Array, Float, PyTree

from dgm.inference.mesh import make_mesh
from dgm.training.config import TrainConfig, make_optimizer


def l2_penalty(model: PyTree) -> Float[Array, ""]:
    """Σθ² over every floating-point array of ``model`` (boolean masks excluded)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return sum((jnp.sum(leaf**2) for leaf in leaves), jnp.zeros((), jnp.float32))


def _checked(loss_fn):
    """``loss_fn`` refusing, at its first trace, a result that is not ``(scalar loss,
    metrics dict)``, naming what came back."""

    def checked(model, batch, key):
        out = loss_fn(model, batch, key)
        ok = isinstance(out, tuple) and len(out) == 2 and isinstance(out[1], dict)
        if not (ok and jnp.ndim(out[0]) == 0):
            got = jax.tree.map(
                lambda x: jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x)), out
            )
            raise ValueError(
                "`loss_fn(model, batch, key)` must return (a scalar loss, a dict of metrics); "
                f"got {got}"
            )
        return out

    return checked


def _value_and_grad(loss_fn, model, batch, key):
    value_and_grad = eqx.filter_value_and_grad(_checked(loss_fn), has_aux=True)
    (loss, aux), grads = value_and_grad(model, batch, key)
    return loss, aux, grads


def _split_value_and_grad(loss_fn, model, batch, key):
    """:func:`_value_and_grad` with the batch's rows split over the local devices: each
    device takes the loss and gradient of its slice (with its own key, ``key`` folded with
    the device's index) under :func:`jax.shard_map`, and the results are averaged over the
    devices. That equals the whole batch's mean loss and its gradient for a loss that is a
    mean over the rows. A batch whose size does not divide by the device count runs
    undivided."""
    num_devices, sharding = _batch_sharding()
    data, hyper = batch
    if num_devices < 2 or any(x.shape[0] % num_devices for x in jax.tree.leaves(data)):
        return _value_and_grad(loss_fn, model, batch, key)
    params, static = eqx.partition(model, eqx.is_array)
    axis = sharding.mesh.axis_names[0]

    def local(params, data, hyper, key):
        key = jax.random.fold_in(key, jax.lax.axis_index(axis))
        out = _value_and_grad(loss_fn, eqx.combine(params, static), (data, hyper), key)
        return jax.lax.pmean(out, axis)

    replicated = jax.sharding.PartitionSpec()
    # check_vma=False: scans whose carries start replicated and become per-device (the
    # models' recurrences) would otherwise need every initial carry marked by hand
    return jax.shard_map(
        local,
        mesh=sharding.mesh,
        in_specs=(replicated, sharding.spec, replicated, replicated),
        out_specs=replicated,
        check_vma=False,
    )(params, data, hyper, key)


def _gradient_update(loss_fn, optimizer, model, opt_state, batch, key, split_batch=False):
    grad_fn = _split_value_and_grad if split_batch else _value_and_grad
    loss, aux, grads = grad_fn(loss_fn, model, batch, key)
    params = eqx.filter(model, eqx.is_inexact_array)
    # Optax mixes its int32 step count with float decay rates; allow that promotion
    # even when a caller runs with jax_numpy_dtype_promotion="strict".
    with jax.numpy_dtype_promotion("standard"):
        updates, opt_state = optimizer.update(grads, opt_state, params)
    model = eqx.apply_updates(model, updates)
    return model, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Build ``train_step(model, opt_state, batch, key) -> (model, opt_state, metrics)``.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux)`` with ``aux`` a dict of scalars.
        optimizer: an Optax transformation, initialised on
            ``eqx.filter(model, eqx.is_inexact_array)``.

    Returns:
        The step, one ``eqx.filter_jit`` around loss, gradient and update; it compiles once
        per batch shape for as long as the caller keeps it.
    """
    return eqx.filter_jit(functools.partial(_gradient_update, loss_fn, optimizer))


def ema_update(averaged: PyTree, model: PyTree, decay: float) -> PyTree:
    """``averaged + (1 − decay)·(model − averaged)`` on the floating-point arrays."""
    avg, new = (eqx.filter(t, eqx.is_inexact_array) for t in (averaged, model))
    delta = jax.tree.map(lambda a, p: (1 - decay) * (p - a), avg, new)
    return eqx.apply_updates(averaged, delta)


class TrainState(NamedTuple):
    """What the next step needs: the model, the optimizer state, the weight average.

    ``averaged`` is the exponential moving average of the model (``None`` when averaging
    is off); it starts at the initial model.
    """

    model: PyTree
    opt_state: PyTree
    averaged: PyTree | None


class Trainer:
    """A loss and an optimizer, with the jitted step built once for as long as it is kept.

    Keep one ``Trainer`` per (loss, optimizer) and pass it to every :func:`fit` that should
    reuse its compilations; a new ``Trainer`` compiles afresh.

    Args:
        loss_fn: ``loss_fn(model, (data, hyper), key) -> (loss, aux)``.
        optimizer: an Optax transformation.
        ema_decay: keep an exponential moving average of the weights (Polyak averaging,
            updated inside the jitted step after each update), or ``None``.
        split_batch: split each batch's rows over the local devices (one per core on a CPU
            after ``configure_cpu``): each device takes the loss and gradient of its slice,
            with its own key, and their averages make the update, as PyTorch's
            ``DistributedDataParallel`` does. For a loss that is a mean over the rows that
            is the whole batch's update, with other random draws (they depend on the device
            count); terms that are not (a penalty divided by the batch size, a batch-mean
            KL inside a ``max``) are taken per slice. Unlike ``TrainConfig.data_parallel``
            (the compiler partitions the one computation) each device runs its own loop
            of kernels: on two CPU cores that made DRAW's ``paper`` step with bfloat16
            products 24 % faster and its ``quick`` preset 30 %.

    Example:
        >>> def loss_fn(model, batch, key):  # batch: (rows, this step's schedule values)
        ...     rows, hyper = batch
        ...     return jnp.mean((jax.vmap(model)(rows) - 1.0) ** 2), {}
        >>> trainer = Trainer.from_config(loss_fn, TrainConfig(), ema_decay=0.999)
        >>> state = trainer.init(eqx.nn.Linear(2, "scalar", key=jax.random.key(0)))
        >>> state, metrics = trainer.step(state, (jnp.ones((8, 2)), {}), jax.random.key(1))
        >>> sorted(metrics)
        ['grad_norm', 'loss']
    """

    def __init__(
        self,
        loss_fn: Callable,
        optimizer: optax.GradientTransformation,
        *,
        ema_decay: float | None = None,
        split_batch: bool = False,
    ):
        if ema_decay is not None and not (
            isinstance(ema_decay, int | float) and 0 <= ema_decay < 1
        ):
            raise ValueError(f"`ema_decay` must be None or in [0, 1); got {ema_decay!r}")
        self.loss_fn, self.optimizer, self.ema_decay = loss_fn, optimizer, ema_decay
        self.split_batch = bool(split_batch)
        self.step = eqx.filter_jit(self._step)

    @classmethod
    def from_config(
        cls,
        loss_fn: Callable,
        config: TrainConfig,
        learning_rate: float | optax.Schedule | None = None,
        *,
        ema_decay: float | None = None,
    ) -> "Trainer":
        """A trainer with the :func:`make_optimizer` optimizer of ``config``."""
        return cls(loss_fn, make_optimizer(config, learning_rate), ema_decay=ema_decay)

    def init(self, model: PyTree) -> TrainState:
        """The state before the first update."""
        opt_state = self.optimizer.init(eqx.filter(model, eqx.is_inexact_array))
        return TrainState(model, opt_state, None if self.ema_decay is None else model)

    def _step(self, state: TrainState, batch: Any, key) -> tuple[TrainState, dict]:
        model, opt_state, metrics = _gradient_update(
            self.loss_fn,
            self.optimizer,
            state.model,
            state.opt_state,
            batch,
            key,
            self.split_batch,
        )
        averaged = state.averaged
        if self.ema_decay is not None:
            averaged = ema_update(averaged, model, self.ema_decay)
        return TrainState(model, opt_state, averaged), metrics

    def eval_model(self, state: TrainState) -> PyTree:
        """The model to validate and keep: the average when averaging, else the model.

        With ``split_batch`` the step leaves the weights replicated on every device; the
        model returned is on the first one, as a reloaded checkpoint is, so evaluation runs
        once (not once per device) and scores the same as after a resume.
        """
        model = state.model if state.averaged is None else state.averaged
        if not self.split_batch:
            return model
        device = jax.local_devices()[0]
        return jax.tree.map(lambda x: jax.device_put(x, device) if eqx.is_array(x) else x, model)


def shard_batch(batch: PyTree) -> PyTree:
    """Split the leading (batch) axis of every array over all local devices.

    With several host devices (``configure_cpu`` exposes one per core) the jitted step then
    runs data-parallel, one slice per device, and the gradients are summed across them. A
    batch whose size does not divide evenly is returned unchanged.
    """
    num_devices, sharding = _batch_sharding()
    leaves = jax.tree_util.tree_leaves(batch)
    if num_devices < 2 or any(leaf.shape[0] % num_devices for leaf in leaves):
        return batch
    return jax.device_put(batch, sharding)


@functools.cache
def _batch_sharding() -> tuple[int, Any]:
    """The local device count and a batch-axis sharding over them (built once)."""
    devices = jax.local_devices()
    if len(devices) < 2:
        return len(devices), None
    mesh = make_mesh(devices=devices, axis="batch")
    return len(devices), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))
