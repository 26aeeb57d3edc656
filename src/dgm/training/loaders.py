"""Epoch orders and batches: padded sequences bucketed by length, or fixed-shape arrays.

An order is drawn by a NumPy generator that :func:`~dgm.training.fit` seeds from the data
key and the epoch number, so a resumed run sees the same batches.
"""

import math

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array

from dgm.config import check_positive


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
        """``(x, mask)`` for one row of :meth:`order`, cut to the bucketed length."""
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
        check_positive("batch_size", batch_size, integer=True)
        self.x = np.asarray(x, np.float32)
        self.batch_size = batch_size
        self.num_batches = max(1, len(self.x) // batch_size)

    def order(self, rng: np.random.Generator) -> np.ndarray:
        """Index rows ``(num_batches, batch_size)`` of one epoch."""
        perm = rng.permutation(len(self.x))
        return perm[: self.num_batches * self.batch_size].reshape(self.num_batches, -1)

    def batch(self, row: np.ndarray) -> Array:
        """The examples of one row of :meth:`order`."""
        return jnp.asarray(self.x[row])
