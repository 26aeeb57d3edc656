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

from dgm.inference.svgd import SVGDState


class SVGDResult(NamedTuple):
    """What :meth:`SVGDRunner.run` returns.

    Attributes:
        state: the final state (the last finite one if the run hit a NaN).
        trace: per-iteration ``ksd``, ``update_norm`` and ``bandwidth`` (NumPy arrays).
        num_iterations: steps applied.
        status: ``"completed"``, ``"converged"`` (stopping rule) or ``"non-finite"``.
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
    def particles(self) -> np.ndarray:
        return np.asarray(self.state.particles)


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
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}")
        self.chunk_size = chunk_size
        self.num_traces = 0

        def chunk(state, step_size, data, num_left, ksd_tol, update_tol):
            self.num_traces += 1

            def body(carry, i):
                state, stopped = carry
                new, info = step(state, step_size, data)
                active = (~stopped) & (i < num_left)
                bad = ~info.is_finite
                apply = active & ~bad
                state = jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, state)
                converged = (info.ksd < ksd_tol) | (info.update_norm < update_tol)
                stopped = stopped | (active & (bad | converged))
                return (state, stopped), (info, active, active & bad, active & converged)

            (state, _), out = jax.lax.scan(
                body, (state, jnp.zeros((), bool)), jnp.arange(chunk_size)
            )
            return state, out

        self._chunk = jax.jit(chunk)
        self._compiled: dict = {}

    def _executable(self, args) -> tuple[Callable, float]:
        """The compiled chunk for these argument shapes, and the seconds spent compiling
        it now (0 when it was compiled before): compilation is timed apart from running."""
        leaves, treedef = jax.tree.flatten(args)
        sig = (
            treedef,
            tuple((np.shape(a), jnp.result_type(a), getattr(a, "sharding", None)) for a in leaves),
        )
        if sig in self._compiled:
            return self._compiled[sig], 0.0
        t0 = time.perf_counter()
        self._compiled[sig] = self._chunk.trace(*args).lower().compile()
        return self._compiled[sig], time.perf_counter() - t0

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
            ksd_tol: stop once the KSD of the particles falls below it.
            update_tol: stop once the RMS particle move falls below it.
            progress: show a progress bar.

        Raises:
            ValueError: for a non-positive ``num_iterations``, ``step_size`` or tolerance.
        """
        if not isinstance(num_iterations, int) or num_iterations < 1:
            raise ValueError(f"`num_iterations` must be a positive int; got {num_iterations!r}")
        if not np.all(np.asarray(step_size) > 0):
            raise ValueError(f"`step_size` must be positive; got {step_size!r}")
        for name, tol in (("ksd_tol", ksd_tol), ("update_tol", update_tol)):
            if tol is not None and not float(tol) > 0:
                raise ValueError(f"`{name}` must be positive or None; got {tol!r}")
        dtype = state.particles.dtype
        tols = [jnp.asarray(-np.inf if t is None else t, dtype) for t in (ksd_tol, update_tol)]
        step_size = jnp.asarray(step_size, dtype)
        parts, done, status, message = [], 0, "completed", ""
        wall = compile_s = 0.0
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=num_iterations, desc="svgd", unit="it", leave=False)
        try:
            while done < num_iterations:
                args = (state, step_size, data, jnp.asarray(num_iterations - done), *tols)
                exe, seconds = self._executable(args)
                compile_s += seconds
                t0 = time.perf_counter()
                state, (info, active, bad, conv) = jax.block_until_ready(exe(*args))
                wall += time.perf_counter() - t0
                active, bad, conv = np.asarray(active), np.asarray(bad), np.asarray(conv)
                num_active = int(active.sum())
                info = jax.tree.map(np.asarray, info)
                if bad.any():
                    first = int(np.argmax(bad))
                    parts.append(jax.tree.map(lambda a, f=first: a[:f], info))
                    status = "non-finite"
                    message = (
                        f"non-finite particles at iteration {done + first + 1}; stopped and kept "
                        f"the last finite particles (iteration {done + first})"
                    )
                    done += first
                    break
                parts.append(jax.tree.map(lambda a, m=num_active: a[:m], info))
                done += num_active
                if bar is not None:
                    bar.update(num_active)
                if conv.any():
                    status = "converged"
                    message = f"stopping rule met at iteration {done}"
                    break
        finally:
            if bar is not None:
                bar.close()
        if not message:
            message = f"completed {done} iterations"
        trace = {
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in ("ksd", "update_norm", "bandwidth")
        }
        return SVGDResult(state, trace, done, status, message, wall, compile_s)


def to_inference_data(result: SVGDResult, var_name: str = "x"):
    """ArviZ ``InferenceData``: particles as the draws of one chain, traces as a group.

    The ``svgd_trace`` group holds ``ksd``, ``update_norm`` and ``bandwidth`` with the
    iteration as its ``draw`` axis.
    """
    import arviz as az

    idata = az.from_dict(posterior={var_name: result.particles[None]})
    trace = az.dict_to_dataset({k: v[None] for k, v in result.trace.items()})
    idata.add_groups(svgd_trace=trace)
    return idata
