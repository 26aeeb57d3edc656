"""What the drivers share: a compile cache, and a chunk loop with a progress bar.

A driver (``SVGDRunner``, ``ChainRunner``) runs a jitted chunk of iterations again and
again. :class:`CompiledCache` compiles it once per argument signature and device, and
reports the seconds spent compiling apart from the run time. :func:`run_chunks` runs
the chunks until the requested iterations are done, a chunk asks to stop, or the user
presses Ctrl-C, and owns the progress bar.
"""

import time
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dgm import _sigint
from dgm.config import check_positive

__all__ = ["ChunkOutcome", "CompiledCache", "run_chunks", "signature", "skip_unless"]


def signature(tree: Any) -> tuple:
    """``(treedef, ((shape, dtype), ...))`` of a PyTree's leaves: what a jitted function
    is compiled for (Python scalars count as their weak JAX dtype)."""
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))


def skip_unless(pred: Any, fn: Callable, carry: Any, *args: Any) -> tuple[Any, Any]:
    """``fn(carry, *args) -> (carry, out)`` when ``pred``, else ``(carry, zeros like out)``.

    A chunk's surplus iterations (past the end of the run, or after a stop) then cost a
    branch, not a step: with ``jnp.where`` on the step's result they cost a whole step
    each (a 40-step run in a chunk of 250 computed 250). ``pred`` must be the same for
    every batch member (a loop index, a shared count): a batched predicate would turn the
    ``cond`` into a select that computes both branches, which is correct but saves nothing.
    """
    out_shapes = jax.eval_shape(fn, carry, *args)[1]

    def hold(carry, *_):
        return carry, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shapes)

    return jax.lax.cond(pred, fn, hold, carry, *args)


class CompiledCache:
    """Compile a jitted function once per (argument signature, device).

    Args:
        jitted_fn: a ``jax.jit``-wrapped function; it is traced, lowered and compiled
            ahead of time, so the compilation is timed on its own.

    Attributes:
        num_compiles: how many executables were compiled so far.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> cache = CompiledCache(jax.jit(lambda x: 2 * x))
        >>> exe, seconds = cache.get((jnp.ones(3),))
        >>> exe, seconds = cache.get((jnp.zeros(3),))  # cached: seconds == 0.0
        >>> cache.num_compiles
        1
    """

    def __init__(self, jitted_fn: Callable):
        self._jitted = jitted_fn
        self._executables: dict = {}
        self.num_compiles = 0

    def get(self, args: tuple, device: Hashable = None) -> tuple[Callable, float]:
        """The executable for ``args`` (call it as ``exe(*args)``) and the seconds spent
        compiling it now (0.0 when it was cached).

        Args:
            args: the positional arguments, as they will be passed.
            device: where the executable runs: a device, or any hashable placement key
                (e.g. the arguments' shardings); a new key compiles anew.
        """
        key = (signature(args), device)
        if key in self._executables:
            return self._executables[key], 0.0
        t0 = time.perf_counter()
        self._executables[key] = self._jitted.trace(*args).lower().compile()
        self.num_compiles += 1
        return self._executables[key], time.perf_counter() - t0


class ChunkOutcome(NamedTuple):
    """What a chunk reports to :func:`run_chunks`.

    Attributes:
        num_done: iterations the chunk completed (at most the number it was asked for).
        stop: end the loop after this chunk (a stopping rule was met, or a failure).
        postfix: shown after the progress bar (``tqdm.set_postfix``), e.g.
            ``{"accept": "0.812"}``; ``None`` leaves it unchanged.
    """

    num_done: int
    stop: bool = False
    postfix: dict[str, Any] | None = None


def run_chunks(
    num_iterations: int,
    chunk_size: int,
    run_chunk: Callable[[int, int], ChunkOutcome | int],
    *,
    progress: bool = False,
    desc: str = "sampling",
) -> tuple[int, bool]:
    """Run ``num_iterations`` iterations as chunks of at most ``chunk_size``.

    Calls ``run_chunk(num_done, num_todo)`` with the iterations done so far and
    ``num_todo = min(chunk_size, num_iterations - num_done)``; it runs that many (it
    may complete fewer and ask to stop) and returns a :class:`ChunkOutcome`, or an int
    (the number completed; go on). A chunk that completes nothing ends the loop too.
    It should update the caller's results only once the
    chunk has finished, so that ``num_done`` always describes them. Ctrl-C during a
    chunk ends the loop with ``interrupted=True``; the interrupted chunk does not count.
    The progress bar (tqdm, if ``progress``) moves after each chunk.

    Returns:
        ``(num_done, interrupted)``.

    Raises:
        ValueError: a non-positive ``num_iterations`` or ``chunk_size``.
    """
    check_positive("num_iterations", num_iterations, integer=True)
    check_positive("chunk_size", chunk_size, integer=True)
    done, interrupted = 0, False
    bar = _progress_bar(num_iterations, desc) if progress else None
    try:
        while done < num_iterations:
            outcome = run_chunk(done, min(chunk_size, num_iterations - done))
            if not isinstance(outcome, ChunkOutcome):
                outcome = ChunkOutcome(int(outcome))
            done += outcome.num_done
            if bar is not None:
                if outcome.postfix is not None:
                    bar.set_postfix(outcome.postfix)
                bar.update(outcome.num_done)
            if outcome.stop or outcome.num_done < 1:
                break
    except KeyboardInterrupt:
        _sigint.acknowledge()  # the caller stops on `interrupted`
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    return done, interrupted


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)
