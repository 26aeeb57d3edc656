"""Driver for SVGD: compiled chunks of steps, NaN stop, a stopping rule, traces, ArviZ.

A chunk of ``chunk_size`` steps runs as one compiled ``lax.scan``. Step size, data and
the stopping tolerances are traced arguments, so changing them never recompiles. A step
that produces non-finite particles is not applied: the run stops there, keeping the
last finite particles, and the result's ``message`` names the iteration.
"""

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from dgm.config import check_positive, check_positive_values
from dgm.inference import mesh as mesh_lib
from dgm.inference._compiled import ChunkOutcome, CompiledCache, run_chunks, skip_unless
from dgm.inference.svgd.core import SVGDState


class SVGDResult(NamedTuple):
    """What :meth:`SVGDRunner.run` returns.

    Attributes:
        state: the final state (the last finite one if the run hit a NaN).
        trace: per-iteration ``ksd``, ``ksd_v``, ``update_norm`` and ``bandwidth`` (NumPy
            arrays; see :class:`~dgm.inference.svgd.SVGDInfo`).
        num_iterations: steps applied.
        status: ``"completed"``, ``"converged"`` (stopping rule), ``"non-finite"`` or
            ``"interrupted"`` (Ctrl-C: the state after the last finished chunk).
        message: one line saying how the run ended.
        wall_s: run time, compilation excluded.
        compile_s: compilation time (tracing, lowering and compiling the chunk; 0 when
            the runner had compiled it for these shapes before).
    """

    state: SVGDState
    trace: dict[str, np.ndarray]
    num_iterations: int
    status: str
    message: str
    wall_s: float
    compile_s: float

    @property
    def interrupted(self) -> bool:
        """Whether Ctrl-C ended the run (``status == "interrupted"``)."""
        return self.status == "interrupted"

    @property
    def particles(self) -> np.ndarray:
        """The final particles as one NumPy array. Particles that :func:`~dgm.inference.svgd.shard`
        spread over the devices of several processes are gathered (a collective: every
        process must read it, as every process runs the same program)."""
        x = self.state.particles
        if getattr(x, "is_fully_addressable", True):
            return np.asarray(x)
        return mesh_lib.gather(x)


class SVGDRunner:
    """Compile ``chunk_size`` steps of ``step`` once per shape; run them repeatedly.

    Args:
        step: ``step(state, step_size, data) -> (state, info)`` from
            :func:`dgm.inference.svgd.build_step`.
        chunk_size: steps per compiled call.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from dgm.inference import svgd
        >>> score = svgd.make_score_fn(log_density_fn=lambda x: -0.5 * jnp.sum(x**2))
        >>> runner = SVGDRunner(svgd.build_step(score), chunk_size=50)
        >>> x0 = jax.random.normal(jax.random.key(0), (20, 2))
        >>> result = runner.run(svgd.init(x0), 100, step_size=0.1)
    """

    def __init__(self, step: Callable, chunk_size: int = 100):
        check_positive("chunk_size", chunk_size, integer=True)
        self.chunk_size = chunk_size
        self.tracks_ksd = getattr(step, "tracks_ksd", True)
        self.num_traces = 0
        self._cache = CompiledCache(jax.jit(self._chunk_fn(step, chunk_size)))

    @property
    def num_compiles(self) -> int:
        """Executables compiled so far (one per argument shapes and placement)."""
        return self._cache.num_compiles

    def _chunk_fn(self, step: Callable, chunk_size: int) -> Callable:
        """``chunk(state, step_size, data, num_left, ksd_tol, update_tol)``: a scan of
        ``chunk_size`` steps; steps past ``num_left``, after a stop, or that would make
        the particles non-finite leave the state as it is."""

        def chunk(state, step_size, data, num_left, ksd_tol, update_tol):
            self.num_traces += 1

            def active_step(state):
                new, info = step(state, step_size, data)
                bad = ~info.is_finite
                state = jax.tree.map(lambda a, b: jnp.where(bad, b, a), new, state)
                converged = (info.ksd_v < ksd_tol) | (info.update_norm < update_tol)
                return state, (info, bad, converged)

            def body(carry, i):
                state, stopped = carry
                active = (~stopped) & (i < num_left)  # inactive steps cost a branch: no step
                state, (info, bad, converged) = skip_unless(active, active_step, state)
                stopped = stopped | bad | converged
                return (state, stopped), (info, active, bad, converged)

            (state, _), out = jax.lax.scan(
                body, (state, jnp.zeros((), bool)), jnp.arange(chunk_size)
            )
            return state, out

        return chunk

    def run(
        self,
        state: SVGDState,
        num_iterations: int,
        step_size: ArrayLike = 1e-3,
        data: Any = None,
        *,
        ksd_tol: float | None = None,
        update_tol: float | None = None,
        progress: bool = False,
    ) -> SVGDResult:
        """Run up to ``num_iterations`` steps.

        Args:
            state: from :func:`dgm.inference.svgd.init`.
            num_iterations: maximum number of steps (> 0).
            step_size: positive step size of the original rule.
            data: PyTree of data rows passed to the target (minibatch targets).
            ksd_tol: stop once the V-statistic KSD (``ksd_v``: the RKHS norm of the SVGD
                direction, 0 at a fixed point) falls below it. The U-statistic ``ksd``
                can read 0 while the particles are still far off: 200 particles
                started 5 sds off stopped with the mean 0.4 sds off.
            update_tol: stop once the RMS particle move falls below it.
            progress: show a progress bar.

        Raises:
            ValueError: for a non-positive ``num_iterations``, ``step_size`` or tolerance,
                or a ``ksd_tol`` for a step built with ``track_ksd=False``.
        """
        check_positive("num_iterations", num_iterations, integer=True)
        check_positive_values("step_size", step_size)
        check_positive_values("ksd_tol", ksd_tol, allow_none=True)
        if ksd_tol is not None and not self.tracks_ksd:
            raise ValueError("`ksd_tol` needs the KSD: build the step with track_ksd=True")
        check_positive_values("update_tol", update_tol, allow_none=True)
        dtype = state.particles.dtype
        tols = [jnp.asarray(-np.inf if t is None else t, dtype) for t in (ksd_tol, update_tol)]
        run = _Run(self._cache, state, (jnp.asarray(step_size, dtype), data), tols)
        done, interrupted = run_chunks(
            num_iterations, self.chunk_size, run.chunk, progress=progress, desc="svgd"
        )
        if interrupted:
            run.status, run.message = "interrupted", f"interrupted after {done} iterations"
        message = run.message or f"completed {done} iterations"
        trace = {
            name: np.concatenate([getattr(p, name) for p in run.parts])
            if run.parts
            else np.zeros((0,), dtype)
            for name in ("ksd", "ksd_v", "update_norm", "bandwidth")
        }
        return SVGDResult(run.state, trace, done, run.status, message, run.wall, run.compile_s)


class _Run:
    """One :meth:`SVGDRunner.run`: the state, trace parts and times, chunk by chunk."""

    def __init__(self, cache: CompiledCache, state: SVGDState, step_args: tuple, tols: list):
        self.cache, self.state, self.step_args, self.tols = cache, state, step_args, tols
        self.parts: list = []
        self.status, self.message = "completed", ""
        self.wall = self.compile_s = 0.0

    def chunk(self, done: int, num_todo: int) -> ChunkOutcome:
        args = (self.state, *self.step_args, jnp.asarray(num_todo), *self.tols)
        placement = tuple(getattr(a, "sharding", None) for a in jax.tree.leaves(args))
        exe, seconds = self.cache.get(args, placement)
        self.compile_s += seconds
        t0 = time.perf_counter()
        state, (info, active, bad, conv) = jax.block_until_ready(exe(*args))
        self.wall += time.perf_counter() - t0
        info = jax.tree.map(np.asarray, info)
        self.state = state  # the chunk never applies a non-finite step
        if np.any(bad):
            first = int(np.argmax(np.asarray(bad)))
            self.parts.append(jax.tree.map(lambda a: a[:first], info))
            self.status = "non-finite"
            self.message = (
                f"non-finite particles at iteration {done + first + 1}; stopped and kept "
                f"the last finite particles (iteration {done + first})"
            )
            return ChunkOutcome(first, stop=True)
        num_active = int(np.asarray(active).sum())
        self.parts.append(jax.tree.map(lambda a: a[:num_active], info))
        if np.any(conv):
            self.status = "converged"
            self.message = f"stopping rule met at iteration {done + num_active}"
            return ChunkOutcome(num_active, stop=True)
        return ChunkOutcome(num_active)


def to_inference_data(result: SVGDResult, var_name: str = "x"):
    """ArviZ ``InferenceData``: particles as the draws of one chain, traces as a group.

    The ``svgd_trace`` group holds ``ksd``, ``ksd_v``, ``update_norm`` and ``bandwidth`` with the
    iteration as its ``draw`` axis.
    """
    import arviz as az

    idata = az.from_dict(posterior={var_name: result.particles[None]})
    idata.add_groups(svgd_trace=trace_dataset(result))
    return idata


def trace_dataset(result: SVGDResult):
    """The ``svgd_trace`` group: ``ksd``, ``ksd_v``, ``update_norm``, ``bandwidth`` per
    iteration."""
    import arviz as az

    return az.dict_to_dataset({k: v[None] for k, v in result.trace.items()})
