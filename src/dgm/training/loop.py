"""The epoch loop: train one epoch, validate, checkpoint, log, until done or stopped.

:func:`fit` only sequences these pieces. Each epoch's order comes from a NumPy generator
seeded by the data key and the epoch; each update's key is ``fold_in(train_key, step)``;
schedules are evaluated at the update count. Everything that moves is in the checkpoint,
so a resumed run is bit-identical to a straight one, also from a checkpoint written inside
an epoch (``TrainConfig.checkpoint_every``): it holds the updates done and their losses.
"""

import dataclasses
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import PRNGKeyArray, PyTree

from dgm._types import check_key
from dgm.training.checkpoint import FORMAT, load_training, save_checkpoint
from dgm.training.config import TrainConfig
from dgm.training.interrupt import DeferredInterrupt
from dgm.training.loaders import ArrayLoader, SequenceLoader
from dgm.training.loggers import Logger
from dgm.training.schedules import Schedule
from dgm.training.step import Trainer, TrainState, shard_batch

_clock = time.perf_counter  # the time limit's clock (tests replace it)


def _out_of_time(deadline: float | None) -> bool:
    return deadline is not None and _clock() >= deadline


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns: final and best models, the history, timings.

    ``best_model`` is the model validated best (the weight average when averaging is on);
    ``averaged_model`` is the final weight average, or ``None`` without averaging.
    ``time_limited``: training stopped at ``fit``'s ``time_limit_s`` (``steps`` updates
    done in all, a checkpoint written at the stop) before its last epoch.
    """

    model: Any
    best_model: Any
    history: list[dict]
    epochs: int
    best_epoch: int
    best_valid: float
    stopped_early: bool
    wall_s: float
    s_per_epoch: float
    averaged_model: Any = None
    time_limited: bool = False
    steps: int = 0


@dataclasses.dataclass
class _Progress:
    """The loop's counters, saved in the checkpoint header."""

    epoch: int = 0
    step: int = 0
    best_valid: float = math.inf
    best_epoch: int = 0
    bad_evals: int = 0
    history: list = dataclasses.field(default_factory=list)
    # an unfinished epoch (a checkpoint inside one): its updates' losses and its seconds
    epoch_losses: list = dataclasses.field(default_factory=list)
    epoch_s: float = 0.0


@dataclasses.dataclass(frozen=True)
class _Keys:
    data_seed: list  # seeds each epoch's NumPy generator with the epoch number
    train: PRNGKeyArray
    eval: PRNGKeyArray
    root: list  # the fit key, stored in the header to refuse another seed's checkpoint

    @classmethod
    def split(cls, key: PRNGKeyArray) -> "_Keys":
        key_data, key_train, key_eval = jax.random.split(key, 3)
        data_seed = np.asarray(jax.random.key_data(key_data)).ravel().tolist()
        return cls(data_seed, key_train, key_eval, np.asarray(jax.random.key_data(key)).tolist())


@dataclasses.dataclass(frozen=True)
class _Hyper:
    """The ``hyper`` dict of each update: constants, and schedules of the update count."""

    constants: dict[str, jax.Array]
    schedules: Mapping[str, Schedule]

    def values(self, step: int) -> dict[str, float]:
        return {name: float(fn(step)) for name, fn in self.schedules.items()}

    def arrays(self, values: dict[str, float]) -> dict[str, jax.Array]:
        scheduled = {k: jnp.asarray(v, jnp.float32) for k, v in values.items()}
        return {**self.constants, **scheduled}


def _restore(trainer, model, checkpoint, resume, fingerprint, keys):
    """The state, best model and counters to start from: fresh, or the checkpoint's."""
    state, best, progress = trainer.init(model), model, _Progress()
    if not (resume and checkpoint is not None and checkpoint.exists()):
        return state, best, progress
    like = (state.model, state.opt_state, best, state.averaged)
    (model, opt_state, best, averaged), header = load_training(checkpoint, like, fingerprint)
    if header["key"] != keys.root:
        raise ValueError(f"checkpoint {checkpoint} was written with a different seed")
    saved = {f.name: header[f.name] for f in dataclasses.fields(_Progress) if f.name in header}
    saved["best_valid"] = float(saved["best_valid"])  # JSON holds "inf" without validation
    progress = _Progress(**saved)
    return TrainState(model, opt_state, averaged), best, progress


def train_epoch(
    trainer,
    state,
    loader,
    epoch,
    progress,
    keys,
    hyper,
    config,
    bar,
    interrupt,
    save=lambda state: None,
    deadline: float | None = None,
):
    """One pass over ``loader`` (its rest, when ``progress`` holds an unfinished epoch);
    returns the new state and the epoch's record, or ``None`` for the record when the
    ``deadline`` (a ``_clock()`` time) passed before the epoch's last update.

    Every ``config.checkpoint_every`` updates before the epoch's end, and at the deadline,
    ``progress`` takes the losses so far and ``save(state)`` writes the checkpoint. A Ctrl-C
    stops it after the current update (``interrupt.check``).
    """
    t0 = time.perf_counter() - progress.epoch_s
    order = loader.order(np.random.default_rng([*keys.data_seed, epoch]))
    losses = [np.float32(v) for v in progress.epoch_losses]
    values, every = {}, config.checkpoint_every
    for row in order[len(losses) :]:
        values = hyper.values(progress.step)
        data = loader.batch(row)
        if config.data_parallel:
            data = shard_batch(data)
        step_key = jax.random.fold_in(keys.train, progress.step)
        state, metrics = trainer.step(state, (data, hyper.arrays(values)), step_key)
        progress.step += 1
        losses.append(metrics["loss"])
        out_of_time = _out_of_time(deadline)
        if len(losses) < len(order) and (out_of_time or (every and progress.step % every == 0)):
            progress.epoch_losses = [float(v) for v in jax.device_get(losses)]
            progress.epoch_s = time.perf_counter() - t0
            save(state)
            if out_of_time:
                bar.update()
                return state, None
        interrupt.check(state)
        bar.update()
        if progress.step % 10 == 0 and not bar.disable:
            bar.set_postfix(epoch=epoch + 1, loss=f"{float(metrics['loss']):.3f}")
    progress.epoch_losses, progress.epoch_s = [], 0.0
    record = {
        "epoch": epoch + 1,
        "step": progress.step,
        "train_loss": float(np.mean(jax.device_get(losses))),
        **{name: float(v) for name, v in values.items()},
        "epoch_s": time.perf_counter() - t0,
    }
    return state, record


def _due(epoch: int, config: TrainConfig) -> bool:
    """Whether epoch ``epoch`` (0-based) is validated: every ``eval_every``-th, and the last."""
    return (epoch + 1) % config.eval_every == 0 or epoch + 1 == config.num_epochs


def validate(model, best, eval_fn, epoch, progress, keys, config, record):
    """Validate when due (adds ``record["valid"]``); returns the best model and whether to stop."""
    if eval_fn is None:
        progress.best_epoch = epoch + 1
        return model, False
    if not _due(epoch, config):
        return best, False
    scores = eval_fn(model, jax.random.fold_in(keys.eval, epoch))
    if isinstance(scores, Mapping):
        if "valid" not in scores:
            raise ValueError(f"`eval_fn` returned a mapping without 'valid': {sorted(scores)}")
        record.update({k: float(v) for k, v in scores.items()})
    else:
        record["valid"] = float(scores)
    if record["valid"] < progress.best_valid:
        progress.best_valid, progress.best_epoch, progress.bad_evals = record["valid"], epoch + 1, 0
        best = model
    else:
        progress.bad_evals += 1
    return best, config.patience > 0 and progress.bad_evals >= config.patience


def write_checkpoint(path, state, best, progress, keys, fingerprint):
    """Save everything the next epoch needs (atomically; nothing when ``path`` is None)."""
    if path is None:
        return
    header = {"format": FORMAT, "fingerprint": fingerprint, "key": keys.root}
    header.update(dataclasses.asdict(progress))
    header["averaged"] = state.averaged is not None
    save_checkpoint(path, (state.model, state.opt_state, best, state.averaged), header)


def fit(
    model: PyTree,
    trainer: Trainer | Callable,
    loader: SequenceLoader | ArrayLoader,
    config: TrainConfig,
    *,
    key: Any,  # checked by check_key, which names it (a precise hint would pre-empt that)
    eval_fn: Callable[[PyTree, PRNGKeyArray], float | Mapping[str, float]] | None = None,
    track_fn: Callable[[PyTree, PRNGKeyArray], Mapping[str, float]] | None = None,
    checkpoint: str | Path | None = None,
    resume: bool = False,
    progress: bool = False,
    loggers: Sequence[Logger] = (),
    fingerprint: str = "",
    schedules: Mapping[str, Schedule] | None = None,
    constants: Mapping[str, float] | None = None,
    time_limit_s: Any = None,  # seconds or None; checked below, which names it
) -> FitResult:
    """Train ``model`` for ``config.num_epochs`` epochs (or until early stopping).

    Args:
        trainer: a :class:`Trainer` (keep it to reuse its compilations across fits), or a
            loss function, trained by ``Trainer.from_config(loss_fn, config)``.
        config: epochs, validation cadence, patience, data parallelism.
        key: the root key of data order, update and validation keys.
        eval_fn: ``eval_fn(model, key)`` returns a validation loss (lower is better),
            evaluated every ``config.eval_every`` epochs and at the end, on the weight
            average when the trainer keeps one. Without it the last model is the best.
            It may return a mapping instead: ``"valid"`` (that loss) and other scores
            (e.g. a test bound), all joining the epoch's record and so the history, the
            loggers and the checkpoint.
        track_fn: ``track_fn(model, key)`` returns scores (e.g. a test bound) for the
            epoch's record, on the model ``eval_fn`` would see, every
            ``config.eval_every`` epochs and at the end; unlike ``eval_fn`` it never picks
            the model (for runs that keep their last weights, as the IAF VAE's do).
        checkpoint: written atomically after every epoch (model, optimizer state, best
            model, weight average, counters, history), and every
            ``config.checkpoint_every`` updates inside one; ``None``: no checkpoint.
        resume: continue from ``checkpoint`` when it exists, bit-identically.
        progress: show a progress bar.
        loggers: each receives every epoch's record (see :mod:`dgm.training.loggers`).
        fingerprint: a text form of the config; a checkpoint of another one is refused.
        schedules: ``{name: schedule(step)}``, e.g. :func:`kl_schedule`; each value joins
            the loss's ``hyper`` dict as a float32 scalar and the epoch's record.
        constants: ``{name: value}`` (e.g. ``{"l2": 0.05}``) joining ``hyper`` as float32.
        time_limit_s: stop training once this many seconds have passed since ``fit``
            started (compilation included), after the update running then: a checkpoint
            is written there (inside an epoch if need be) and ``resume=True`` continues
            from it, as a straight run would have gone on. The result has
            ``time_limited=True``; without ``eval_fn`` its ``best_model`` is the model at
            the stop, with ``eval_fn`` the best one validated so far. ``None``: no limit.

    Raises:
        ValueError: the checkpoint is foreign (another config, seed or format).
        RuntimeError: an epoch's mean training loss is not finite (a diverged run), raised
            before that epoch's checkpoint, so the last one holds finite weights (a
            checkpoint inside the epoch, with ``checkpoint_every``, may not);
            :class:`~dgm.training.nan_guard.NaNGuardTrainer` stops at the update instead.
        KeyboardInterrupt: on Ctrl-C, raised after the current update (the updates since
            the last checkpoint are dropped) or, during validation, after that epoch's
            checkpoint; the last checkpoint is always whole, and ``resume=True`` continues
            from it.
    """
    if not isinstance(trainer, Trainer):
        trainer = Trainer.from_config(trainer, config)
    check_key(key)
    if time_limit_s is not None and not (
        isinstance(time_limit_s, int | float)
        and not isinstance(time_limit_s, bool)
        and 0 < time_limit_s < math.inf
    ):
        raise ValueError(
            f"`time_limit_s` must be a positive number of seconds; got {time_limit_s!r}"
        )
    wall0 = time.perf_counter()
    deadline = None if time_limit_s is None else _clock() + time_limit_s
    checkpoint = None if checkpoint is None else Path(checkpoint)
    keys = _Keys.split(key)
    state, best, prog = _restore(trainer, model, checkpoint, resume, fingerprint, keys)
    fixed = {k: jnp.asarray(v, jnp.float32) for k, v in (constants or {}).items()}
    hyper = _Hyper(fixed, dict(schedules or {}))
    run = _Run(trainer, loader, config, keys, hyper, eval_fn, track_fn, deadline)
    for logger in loggers:
        logger.start(list(prog.history))
    try:
        state, best, stopped, timed_out = _epochs(
            run, state, best, prog, checkpoint, fingerprint, loggers, progress
        )
    finally:
        for logger in loggers:
            logger.close()
    return _result(state, best, prog, stopped, timed_out, time.perf_counter() - wall0)


@dataclasses.dataclass(frozen=True)
class _Run:
    """What stays fixed through a fit."""

    trainer: Trainer
    loader: Any
    config: TrainConfig
    keys: _Keys
    hyper: _Hyper
    eval_fn: Callable | None
    track_fn: Callable | None
    deadline: float | None  # a _clock() time, or None


def _epochs(run: _Run, state, best, prog, checkpoint, fingerprint, loggers, progress):
    """Train, validate, checkpoint and log epoch by epoch; stop early, at the deadline or on
    Ctrl-C. Returns the state, the best model, and whether it stopped early or at the
    deadline."""
    from tqdm.auto import tqdm

    total = run.loader.num_batches * max(run.config.num_epochs - prog.epoch, 0)
    total = max(total - len(prog.epoch_losses), 0)
    bar, stopped, timed_out = tqdm(total=total, disable=not progress, leave=False), False, False
    with DeferredInterrupt() as interrupt:
        for epoch in range(prog.epoch, run.config.num_epochs):
            args = (run.loader, epoch, prog, run.keys, run.hyper, run.config, bar, interrupt)

            def save(state, best=best):
                write_checkpoint(checkpoint, state, best, prog, run.keys, fingerprint)

            state, record = train_epoch(run.trainer, state, *args, save=save, deadline=run.deadline)
            if record is None:  # out of time inside the epoch; its checkpoint is written
                timed_out = True
                if run.eval_fn is None:  # the last model is the best
                    best = run.trainer.eval_model(state)
                break
            if not np.isfinite(record["train_loss"]):  # before this epoch's checkpoint
                raise RuntimeError(
                    f"training diverged: the mean loss of epoch {epoch + 1} is "
                    f"{record['train_loss']}; the checkpoint of epoch {prog.epoch} is kept"
                )
            evaluated = run.trainer.eval_model(state)
            args = (run.eval_fn, epoch, prog, run.keys, run.config, record)
            best, stopped = validate(evaluated, best, *args)
            if run.track_fn is not None and _due(epoch, run.config):
                key = jax.random.fold_in(jax.random.fold_in(run.keys.eval, epoch), 1)
                scores = run.track_fn(evaluated, key)
                record.update({k: float(v) for k, v in scores.items()})
            prog.epoch = epoch + 1
            prog.history.append(record)
            write_checkpoint(checkpoint, state, best, prog, run.keys, fingerprint)
            for logger in loggers:
                logger.log(record)
            if stopped:
                break
            interrupt.check(state)
            if _out_of_time(run.deadline):
                timed_out = epoch + 1 < run.config.num_epochs
                break
    bar.close()
    return state, best, stopped, timed_out


def _result(
    state: TrainState, best, prog: _Progress, stopped: bool, timed_out: bool, wall_s: float
) -> FitResult:
    times = [h["epoch_s"] for h in prog.history]
    steady = times[1:] if len(times) > 1 else times
    return FitResult(
        model=state.model,
        best_model=best,
        history=prog.history,
        epochs=prog.epoch,
        best_epoch=prog.best_epoch,
        best_valid=prog.best_valid,
        stopped_early=stopped,
        wall_s=wall_s,
        s_per_epoch=float(np.median(steady)) if steady else math.nan,
        averaged_model=state.averaged,
        time_limited=timed_out,
        steps=prog.step,
    )
