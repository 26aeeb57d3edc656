"""Optimisation settings and the optimizer built from them."""

import dataclasses

import optax

from dgm.config import check_nonnegative, check_positive


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
            updates (0: the weight is 1 from the start); see :func:`kl_schedule`.
        kl_initial: first KL weight.
        eval_every: validate every this many epochs.
        patience: stop after this many validations without improvement (0: never).
        bucket_width: pad each batch's time axis to a multiple of this (bounds recompiles).
        data_parallel: split each batch over the local devices (see :func:`shard_batch`).
        checkpoint_every: also checkpoint after every this many updates inside an epoch
            (0: at epoch ends only), for epochs longer than one can afford to lose; a run
            resumed from such a checkpoint continues mid-epoch, bit-identically. Like
            ``num_epochs`` it is not part of the run's identity: it may change on resume.

    The weight average is a :class:`~dgm.training.Trainer` argument, not a field here.
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
    checkpoint_every: int = 0

    def __post_init__(self) -> None:
        for name in ("num_epochs", "batch_size", "eval_every", "bucket_width"):
            check_positive(f"train.{name}", getattr(self, name), integer=True)
        for name in ("clip_norm", "l2"):
            check_nonnegative(f"train.{name}", getattr(self, name))
        for name in ("anneal_steps", "patience", "checkpoint_every"):
            check_nonnegative(f"train.{name}", getattr(self, name), integer=True)
        check_positive("train.learning_rate", self.learning_rate)
        if not 0 <= self.kl_initial <= 1:
            raise ValueError(f"`train.kl_initial` must be in [0, 1]; got {self.kl_initial!r}")


def make_optimizer(
    config: TrainConfig, learning_rate: float | optax.Schedule | None = None
) -> optax.GradientTransformation:
    """Global-norm clipping (when ``clip_norm > 0``) followed by Adam.

    Args:
        config: the Adam and clipping settings.
        learning_rate: an Optax schedule (a function of the update count), or a number, in
            place of ``config.learning_rate``.

    Returns:
        The Optax transformation.

    Example:
        >>> opt = make_optimizer(TrainConfig(), optax.cosine_decay_schedule(1e-3, 1000))
    """
    rate = config.learning_rate if learning_rate is None else learning_rate
    adam = optax.adam(rate, b1=config.b1, b2=config.b2, eps=1e-8)
    if config.clip_norm > 0:
        return optax.chain(optax.clip_by_global_norm(config.clip_norm), adam)
    return adam
