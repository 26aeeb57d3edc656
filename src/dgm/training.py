"""Training machinery shared by the amortized-VI models (DMM, DRAW, IAF-VAE).

- :func:`make_train_step`: one ``eqx.filter_jit`` around loss, gradient and Optax update.
- :func:`make_optimizer`: Adam after global-norm clipping; :func:`l2_penalty`; :func:`kl_weight`.
- :class:`SequenceLoader` / :class:`ArrayLoader`: epoch orders (shuffled, length-bucketed),
  drawn by a NumPy generator seeded from the data key and the epoch number.
- :func:`fit`: the epoch loop with validation, early stopping, the best model kept, atomic
  checkpoints that make ``--resume`` bit-identical, metrics as JSON lines, a loss curve.

A batch handed to a loss is ``(data, hyper)``: ``hyper`` holds float32 scalars computed on
the host each step (the KL weight), so changing them never recompiles.
"""

import dataclasses
import functools
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import Array, Float, PRNGKeyArray, PyTree

from dgm import runs
from dgm.config import check_nonnegative, check_positive

_FORMAT = "dgm-checkpoint-v1"


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings. Defaults follow the DMM paper (structuredinference).

    Attributes:
        num_epochs: passes over the training data.
        batch_size: sequences (or examples) per update.
        learning_rate, b1, b2: Adam.
        clip_norm: global-norm clipping threshold (0 disables).
        l2: weight of the L2 penalty Σθ² added to the cost (divided by the batch size).
        anneal_steps: KL weight rises linearly from ``kl_initial`` to 1 over this many
            updates (0: the weight is 1 from the start).
        kl_initial: first KL weight.
        eval_every: validate every this many epochs.
        patience: stop after this many validations without improvement (0: never).
        bucket_width: pad each batch's time axis to a multiple of this (bounds recompiles).
        data_parallel: split each batch over the local devices (see :func:`shard_batch`).
    """

    num_epochs: int = 2000
    batch_size: int = 20
    learning_rate: float = 8e-4
    b1: float = 0.9
    b2: float = 0.999
    clip_norm: float = 1.0
    l2: float = 0.05
    anneal_steps: int = 5000
    kl_initial: float = 0.01
    eval_every: int = 25
    patience: int = 0
    bucket_width: int = 16
    data_parallel: bool = False

    def __post_init__(self) -> None:
        for name in ("num_epochs", "batch_size", "eval_every", "bucket_width"):
            check_positive(f"train.{name}", getattr(self, name), integer=True)
        for name in ("clip_norm", "l2"):
            check_nonnegative(f"train.{name}", getattr(self, name))
        for name in ("anneal_steps", "patience"):
            check_nonnegative(f"train.{name}", getattr(self, name), integer=True)
        check_positive("train.learning_rate", self.learning_rate)
        if not 0 <= self.kl_initial <= 1:
            raise ValueError(f"`train.kl_initial` must be in [0, 1]; got {self.kl_initial!r}")


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    """Global-norm clipping (when ``clip_norm > 0``) followed by Adam."""
    adam = optax.adam(config.learning_rate, b1=config.b1, b2=config.b2, eps=1e-8)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam)
    return adam


def l2_penalty(model: PyTree) -> Float[Array, ""]:
    """Σθ² over every floating-point array of ``model`` (boolean masks excluded)."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return sum((jnp.sum(leaf**2) for leaf in leaves), jnp.zeros((), jnp.float32))


def kl_weight(step: int, anneal_steps: int, initial: float = 0.01) -> float:
    """β after ``step`` updates: ``min(1, initial + step / anneal_steps)`` (1 if no annealing)."""
    if anneal_steps <= 0:
        return 1.0
    return min(1.0, initial + step / anneal_steps)


def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """Build ``train_step(model, opt_state, batch, key) -> (model, opt_state, metrics)``.

    Args:
        loss_fn: ``loss_fn(model, batch, key) -> (loss, aux)`` with ``aux`` a dict of scalars.
        optimizer: an Optax transformation, initialised on
            ``eqx.filter(model, eqx.is_inexact_array)``.
    """

    @eqx.filter_jit
    def train_step(model, opt_state, batch, key):
        grad_fn = eqx.filter_value_and_grad(loss_fn, has_aux=True)
        (loss, aux), grads = grad_fn(model, batch, key)
        params = eqx.filter(model, eqx.is_inexact_array)
        # Optax mixes its int32 step count with float decay rates; allow that promotion
        # even when a caller runs with jax_numpy_dtype_promotion="strict".
        with jax.numpy_dtype_promotion("standard"):
            updates, opt_state = optimizer.update(grads, opt_state, params)
        model = eqx.apply_updates(model, updates)
        return model, opt_state, {"loss": loss, "grad_norm": optax.tree.norm(grads), **aux}

    return train_step


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
    mesh = jax.sharding.Mesh(np.array(devices), ("batch",))
    return len(devices), jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("batch"))


class SequenceLoader:
    """Padded sequences ``x (N, T, D)`` with ``mask (N, T)``, batched by length.

    With ``bucket=True`` (structuredinference): sequences sorted by length form fixed
    contiguous batches; only the batch order is shuffled each epoch. Otherwise a full
    shuffle. The last partial batch is filled with empty sequences (index −1, mask 0), and
    each batch is cut to its longest sequence rounded up to ``bucket_width``.
    """

    def __init__(self, x, mask, batch_size: int, *, bucket: bool = True, bucket_width: int = 16):
        self.x, self.mask = np.asarray(x, np.float32), np.asarray(mask, np.float32)
        self.lengths = self.mask.sum(axis=1).astype(np.int64)
        self.batch_size, self.bucket, self.bucket_width = batch_size, bucket, bucket_width
        self.num_batches = math.ceil(len(self.x) / batch_size)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        """Index rows ``(num_batches, batch_size)`` of one epoch; −1 marks filler."""
        n, b = len(self.x), self.batch_size
        if self.bucket:
            base = np.argsort(self.lengths, kind="stable")
        else:
            base = rng.permutation(n)
        padded = np.full(self.num_batches * b, -1, np.int64)
        padded[:n] = base
        rows = padded.reshape(self.num_batches, b)
        if self.bucket:
            rows = rows[rng.permutation(self.num_batches)]
        return rows

    def batch(self, row: np.ndarray) -> tuple[Array, Array]:
        valid = row >= 0
        idx = np.where(valid, row, 0)
        longest = int(self.lengths[idx][valid].max()) if valid.any() else 1
        width = min(self.x.shape[1], math.ceil(longest / self.bucket_width) * self.bucket_width)
        x = self.x[idx, :width] * valid[:, None, None]
        mask = self.mask[idx, :width] * valid[:, None]
        return jnp.asarray(x), jnp.asarray(mask)


class ArrayLoader:
    """Fixed-shape examples ``x (N, ...)``, shuffled each epoch; a partial last batch is dropped."""

    def __init__(self, x, batch_size: int):
        self.x = np.asarray(x, np.float32)
        self.batch_size = batch_size
        self.num_batches = max(1, len(self.x) // batch_size)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        perm = rng.permutation(len(self.x))
        return perm[: self.num_batches * self.batch_size].reshape(self.num_batches, -1)

    def batch(self, row: np.ndarray) -> Array:
        return jnp.asarray(self.x[row])


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: final and best models, the history, timings."""

    model: Any
    best_model: Any
    history: list[dict]
    epochs: int
    best_epoch: int
    best_valid: float
    stopped_early: bool
    wall_s: float
    s_per_epoch: float


@dataclasses.dataclass
class _State:
    epoch: int = 0
    step: int = 0
    best_valid: float = math.inf
    best_epoch: int = 0
    bad_evals: int = 0
    history: list = dataclasses.field(default_factory=list)


_STEP_CACHE: dict[tuple, tuple[optax.GradientTransformation, Callable]] = {}


def _cached_step(loss_fn: Callable, config: TrainConfig):
    """One jitted step per (loss, optimizer settings), so repeated fits reuse compilations."""
    cache_key = (loss_fn, config.learning_rate, config.b1, config.b2, config.clip_norm)
    if cache_key not in _STEP_CACHE:
        optimizer = make_optimizer(config)
        _STEP_CACHE[cache_key] = (optimizer, make_train_step(loss_fn, optimizer))
    return _STEP_CACHE[cache_key]


def save_checkpoint(path: Path, tree: PyTree, header: dict) -> None:
    """Write a JSON header line, then the Equinox-serialised ``tree``, atomically."""
    with runs.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(json.dumps(runs._to_jsonable(header)).encode() + b"\n")
        eqx.tree_serialise_leaves(f, tree)


def load_checkpoint(path: Path, like: PyTree, fingerprint: str) -> tuple[PyTree, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``like``.

    Raises:
        ValueError: the file is not a dgm checkpoint, or was written by another config.
    """
    with open(path, "rb") as f:
        try:
            header = json.loads(f.readline())
        except ValueError:
            raise ValueError(f"{path} is not a dgm checkpoint (unreadable header)") from None
        if header.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a dgm checkpoint; expected format {_FORMAT}")
        if header.get("fingerprint") != fingerprint:
            raise ValueError(
                f"checkpoint {path} was written by a different configuration; resume with the "
                "same config or start a new run directory"
            )
        return eqx.tree_deserialise_leaves(f, like), header


def _history_plot(history: list[dict], ctx: runs.RunContext, name: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["epoch"] for h in history], [h["train_loss"] for h in history], label="train")
    valid = [h for h in history if "valid" in h]
    if valid:
        ax.plot([h["epoch"] for h in valid], [h["valid"] for h in valid], "o-", label="valid")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.legend()
    ctx.save_figure(f"{name}_loss.png", fig)


def _jsonl(record: dict) -> str:
    return json.dumps(runs._to_jsonable(record)) + "\n"


def _tensorboard(ctx: runs.RunContext, name: str, start: int):
    """A tensorboardX writer for ``<out>/tensorboard`` when tensorboardX is installed, else None.

    Each epoch's record is logged under ``<name>/<field>`` with the epoch as the step and
    flushed at once (like the JSON-lines log, so a killed run loses no logged epoch). A
    resumed run adds an event file, which TensorBoard reads as a continuation; its name ends
    in the fit's name and first epoch, since the time in it has a resolution of seconds.
    """
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        return None
    suffix = f".{name}.{start}"
    return SummaryWriter(str(ctx.path("tensorboard")), filename_suffix=suffix)


def _log_scalars(writer, name: str, record: dict) -> None:
    if writer is None:
        return
    for field, value in record.items():
        if field != "epoch":
            writer.add_scalar(f"{name}/{field}", value, global_step=record["epoch"])
    writer.flush()


def fit(
    model: PyTree,
    loss_fn: Callable,
    loader: SequenceLoader | ArrayLoader,
    config: TrainConfig,
    *,
    key: PRNGKeyArray,
    ctx: runs.RunContext,
    eval_fn: Callable[[PyTree, PRNGKeyArray], float] | None = None,
    fingerprint: str = "",
    name: str = "train",
    plot: bool = True,
    constants: dict[str, float] | None = None,
) -> FitResult:
    """Train ``model`` for ``config.num_epochs`` epochs (or until early stopping).

    Checkpoints ``checkpoints/<name>.eqx`` after every epoch (model, optimizer state, best
    model, step, epoch, key, history); with ``ctx.resume`` the run continues from it
    bit-identically. Each epoch's record goes to ``<name>_metrics.jsonl`` and, when
    tensorboardX is installed, to TensorBoard event files under ``tensorboard/``.
    ``eval_fn(model, key)`` returns a validation loss (lower is better), evaluated every
    ``config.eval_every`` epochs and at the end. With ``plot`` a loss curve
    ``<name>_loss.png`` is written at the end. ``constants`` (e.g. ``{"l2": 0.05}``)
    join the per-step ``hyper`` dict as float32 scalars.
    """
    from tqdm.auto import tqdm

    key_data, key_train, key_eval = jax.random.split(key, 3)
    optimizer, train_step = _cached_step(loss_fn, config)
    opt_state = optimizer.init(eqx.filter(model, eqx.is_inexact_array))
    state, best_model = _State(), model
    path = ctx.out / "checkpoints" / f"{name}.eqx"
    key_list = np.asarray(jax.random.key_data(key)).tolist()
    data_seed = np.asarray(jax.random.key_data(key_data)).ravel().tolist()
    if ctx.resume and path.exists():
        (model, opt_state, best_model), header = load_checkpoint(
            path, (model, opt_state, best_model), fingerprint
        )
        if header["key"] != key_list:
            raise ValueError(f"checkpoint {path} was written with a different seed")
        state = _State(**{f.name: header[f.name] for f in dataclasses.fields(_State)})
        state.best_valid = float(state.best_valid)
    metrics_path = ctx.path(f"{name}_metrics.jsonl")
    if state.history or metrics_path.exists():
        # Once per fit: make the log match the checkpoint (a crash may have left it behind).
        runs.write_text(metrics_path, "".join(_jsonl(h) for h in state.history))
    start, wall0, stopped = state.epoch, time.perf_counter(), False
    bar = tqdm(
        total=loader.num_batches * (config.num_epochs - start),
        disable=not ctx.progress,
        leave=False,
    )
    fixed = {k: jnp.asarray(v, jnp.float32) for k, v in (constants or {}).items()}
    writer = _tensorboard(ctx, name, start)
    for epoch in range(start, config.num_epochs):
        t0 = time.perf_counter()
        order = loader.order(np.random.default_rng([*data_seed, epoch]))
        losses, beta = [], 1.0
        for row in order:
            beta = kl_weight(state.step, config.anneal_steps, config.kl_initial)
            hyper = {**fixed, "kl_weight": jnp.asarray(beta, jnp.float32)}
            step_key = jax.random.fold_in(key_train, state.step)
            data = loader.batch(row)
            if config.data_parallel:
                data = shard_batch(data)
            model, opt_state, metrics = train_step(model, opt_state, (data, hyper), step_key)
            state.step += 1
            losses.append(metrics["loss"])
            bar.update()
            if ctx.progress and state.step % 10 == 0:
                bar.set_postfix(epoch=epoch + 1, loss=f"{float(metrics['loss']):.3f}")
        record = {
            "epoch": epoch + 1,
            "step": state.step,
            "train_loss": float(np.mean(jax.device_get(losses))),
            "kl_weight": beta,
            "epoch_s": time.perf_counter() - t0,
        }
        if eval_fn is not None and (
            (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.num_epochs
        ):
            record["valid"] = float(eval_fn(model, jax.random.fold_in(key_eval, epoch)))
            if record["valid"] < state.best_valid:
                state.best_valid, state.best_epoch, state.bad_evals = record["valid"], epoch + 1, 0
                best_model = model
            else:
                state.bad_evals += 1
            stopped = config.patience > 0 and state.bad_evals >= config.patience
        elif eval_fn is None:
            best_model, state.best_epoch = model, epoch + 1
        state.epoch = epoch + 1
        state.history.append(record)
        header = {"format": _FORMAT, "fingerprint": fingerprint, "key": key_list}
        header.update(dataclasses.asdict(state))
        save_checkpoint(path, (model, opt_state, best_model), header)
        with open(metrics_path, "a") as f:
            f.write(_jsonl(record))
            f.flush()
            os.fsync(f.fileno())
        _log_scalars(writer, name, record)
        if stopped:
            break
    bar.close()
    if writer is not None:
        writer.close()
    if plot and state.history:
        _history_plot(state.history, ctx, name)
    times = [h["epoch_s"] for h in state.history]
    steady = times[1:] if len(times) > 1 else times
    return FitResult(
        model=model,
        best_model=best_model,
        history=state.history,
        epochs=state.epoch,
        best_epoch=state.best_epoch,
        best_valid=state.best_valid,
        stopped_early=stopped,
        wall_s=time.perf_counter() - wall0,
        s_per_epoch=float(np.median(steady)) if steady else math.nan,
    )
