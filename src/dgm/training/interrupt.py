"""Ctrl-C during training, taken only where stopping is safe.

A SIGINT that lands inside JAX (a dispatch, a compilation, a buffer in use) can surface as
another exception or crash the interpreter at exit, and one that lands in a checkpoint
write wastes it. :class:`DeferredInterrupt` records the signal instead, and
:meth:`~DeferredInterrupt.check` raises ``KeyboardInterrupt`` at the loop's safe points,
after waiting for the computations in flight. A second Ctrl-C raises at once.
"""

import signal
import threading

import jax
from jaxtyping import PyTree


class DeferredInterrupt:
    """Context manager deferring SIGINT to :meth:`check` (main thread only; an ignored
    SIGINT stays ignored). A signal after the last check raises on exit."""

    def __init__(self):
        self.pending = False
        self._previous = None

    def __enter__(self) -> "DeferredInterrupt":
        in_main = threading.current_thread() is threading.main_thread()
        if in_main and signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self, state: PyTree = None) -> None:
        """Raise ``KeyboardInterrupt`` if Ctrl-C was pressed, once ``state`` is computed."""
        if self.pending:
            jax.block_until_ready(state)
            raise KeyboardInterrupt

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
        if self.pending and exc_type is None:
            raise KeyboardInterrupt
