"""Training machinery shared by the amortized-VI models (DMM, DRAW, IAF-VAE).

- :mod:`~dgm.training.config`: :class:`TrainConfig`, :func:`make_optimizer` (clipping,
  Adam, an optional Optax learning-rate schedule).
- :mod:`~dgm.training.step`: :class:`Trainer` (one ``eqx.filter_jit`` around loss, gradient,
  Optax update and the optional weight average), :func:`make_train_step`,
  :func:`l2_penalty`, :func:`shard_batch`.
- :mod:`~dgm.training.schedules`: hyper-parameters as functions of the update step
  (:func:`linear_anneal`, :func:`kl_schedule`).
- :mod:`~dgm.training.loaders`: :class:`SequenceLoader` (length buckets), :class:`ArrayLoader`.
- :mod:`~dgm.training.loggers`: the :class:`Logger` protocol, :class:`JsonLinesLogger`,
  :class:`TensorBoardLogger`, :class:`HistoryPlot`.
- :mod:`~dgm.training.checkpoint`: atomic checkpoints with a JSON header.
- :mod:`~dgm.training.interrupt`: Ctrl-C taken only between updates.
- :mod:`~dgm.training.loop`: :func:`fit`, the epoch loop (validation, early stopping, best
  model, bit-identical resume).

A batch handed to a loss is ``(data, hyper)``: ``hyper`` holds float32 scalars computed on
the host each step (the KL weight, other schedules, constants), so changing them never
recompiles.
"""

from dgm.training.checkpoint import (
    FORMAT,
    load_checkpoint,
    load_training,
    read_header,
    save_checkpoint,
)
from dgm.training.config import TrainConfig, make_optimizer
from dgm.training.loaders import ArrayLoader, SequenceLoader
from dgm.training.loggers import HistoryPlot, JsonLinesLogger, Logger, TensorBoardLogger
from dgm.training.loop import FitResult, fit
from dgm.training.schedules import Schedule, constant, kl_schedule, kl_weight, linear_anneal
from dgm.training.step import (
    Trainer,
    TrainState,
    ema_update,
    l2_penalty,
    make_train_step,
    shard_batch,
)

__all__ = [
    "FORMAT",
    "ArrayLoader",
    "FitResult",
    "HistoryPlot",
    "JsonLinesLogger",
    "Logger",
    "Schedule",
    "SequenceLoader",
    "TensorBoardLogger",
    "TrainConfig",
    "TrainState",
    "Trainer",
    "constant",
    "ema_update",
    "fit",
    "kl_schedule",
    "kl_weight",
    "l2_penalty",
    "linear_anneal",
    "load_checkpoint",
    "load_training",
    "make_optimizer",
    "make_train_step",
    "read_header",
    "save_checkpoint",
    "shard_batch",
]
