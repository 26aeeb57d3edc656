"""A trainer that stops at the first non-finite loss, naming the update.

:func:`~dgm.training.fit` checkpoints after every epoch (and every ``checkpoint_every``
updates), all before the failing update, so raising leaves the last good checkpoint in place;
``--resume`` continues from it.
"""

import numpy as np

from dgm.training.step import Trainer


class NaNGuardTrainer(Trainer):
    """A :class:`~dgm.training.Trainer` whose step raises ``RuntimeError`` when the loss is
    NaN or infinite, naming the epoch and the update (``hyper["update_index"]``, filled by the
    ``update_index`` schedule of :func:`update_index`).

    Args:
        loss_fn, optimizer, ema_decay, split_batch: as for :class:`~dgm.training.Trainer`.
        num_batches: updates per epoch (to name the epoch).
    """

    def __init__(self, loss_fn, optimizer, num_batches: int, *, ema_decay=None, split_batch=False):
        super().__init__(loss_fn, optimizer, ema_decay=ema_decay, split_batch=split_batch)
        self.num_batches, self._jitted = num_batches, self.step
        self.step = self._checked_step

    def _checked_step(self, state, batch, key):
        new, metrics = self._jitted(state, batch, key)
        value = float(metrics["loss"])
        if not np.isfinite(value):
            update = int(batch[1]["update_index"])
            epoch, within = divmod(update, self.num_batches)
            raise RuntimeError(
                f"training diverged: the loss is {value} at update {update + 1} (epoch "
                f"{epoch + 1}, update {within + 1} of {self.num_batches}); the last "
                "checkpoint, written before it, is kept"
            )
        return new, metrics


def update_index(step: int) -> float:
    """The schedule giving each update its index (for :class:`NaNGuardTrainer`'s message)."""
    return float(step)
