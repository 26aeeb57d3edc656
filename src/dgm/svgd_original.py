"""The original code's API: ``theta = SVGD().update(x0, dlnprob, n_iter, stepsize)``.

Same algorithm and same trajectories as ``python/svgd.py`` of Liu & Wang's reference
code (RBF kernel, ``h = sqrt(0.5 median(D) / log(n + 1))`` over all ``n^2`` squared
distances, "AdaGrad with momentum" steps), NumPy in and out, run by JAX. ``dlnprob`` is
first called on the NumPy particles, for the first iteration's gradient. If it returns a
JAX array (it computes with ``jax.numpy``), the other iterations run as one compiled scan;
if NumPy, it is called once per iteration between compiled steps, exactly ``n_iter``
times, so a ``dlnprob`` that keeps state (the original's minibatch counter) follows the
original's trajectory. A compiled ``dlnprob`` runs its Python code only when traced:
Python-side state (a counter, ``np.random``) stays as it was then; keep such a function
in NumPy.

It computes in the dtype it is given, as the NumPy original does: float64 particles
run in float64 (inside a scoped ``jax.enable_x64(True)``, so this works in a process
where JAX's 64-bit mode is off and leaves that setting as it was), float32 in float32.

References:
    Liu & Wang, "Stein Variational Gradient Descent", NIPS 2016 (arXiv:1608.04471).
"""

import contextlib
import warnings
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from dgm.config import check_positive, check_positive_values, check_range
from dgm.inference.svgd import core
from dgm.inference.svgd.driver import SVGDRunner


def _first_gradient(lnprob: Callable, x0: np.ndarray):
    """``lnprob`` of the NumPy particles, called eagerly once (a NumPy ``lnprob`` runs here).

    Float64 particles run inside a scoped 64-bit mode. JAX 0.10 can then reuse a 32-bit
    copy of a NumPy array that ``lnprob`` closes over, made while the mode was off (e.g. by
    a ``jax.eval_shape`` of the same model in ``dgm.svgd``), and fail with a bare
    ``JaxRuntimeError`` ("expected f64[...] but got ... f32[...]"); say what to do instead.
    """
    try:
        return lnprob(x0.copy())
    except jax.errors.JaxRuntimeError as e:
        if "RuntimeProgramInputMismatch" not in str(e):
            raise
        raise RuntimeError(
            "`lnprob` failed on the float64 particles: JAX mixed in a float32 copy of an "
            "array it closes over, made while JAX's 64-bit mode was off (float64 `x0` runs "
            "in a scoped 64-bit mode). Enable 64-bit mode for the whole program "
            "(jax.config.update('jax_enable_x64', True) before any JAX call), or pass "
            "float32 `x0`."
        ) from e


class SVGD:
    """Drop-in for the reference code's ``SVGD`` class.

    Example:
        >>> import numpy as np
        >>> x0 = np.random.default_rng(0).normal(size=(50, 2))
        >>> theta = SVGD().update(x0, lambda x: -x, n_iter=200, stepsize=0.05)
    """

    def __init__(self) -> None:
        self._runners: dict = {}
        self._steps: dict = {}

    def update(
        self,
        x0: ArrayLike,
        lnprob: Callable,
        n_iter: int = 1000,
        stepsize: float | int = 1e-3,
        bandwidth: float | int = -1,
        alpha: float = 0.9,
        debug: bool = False,
    ) -> np.ndarray:
        """Run ``n_iter`` SVGD iterations from ``x0``; ``x0`` is not modified.

        Args:
            x0: initial particles, shape ``(n, d)``.
            lnprob: despite its name, returns **∇log p** of all particles, shape ``(n, d)``.
            n_iter: number of iterations.
            stepsize: master step size (> 0).
            bandwidth: negative (default -1) for the median trick; a positive value is
                the original ``svgd_kernel``'s ``h`` (``K = exp(-D / (2 h^2))``). The
                original ``update`` ignores this argument; here it is honoured.
            alpha: decay of the step-size accumulator, in [0, 1).
            debug: print progress every 1000 iterations, like the original.

        Returns:
            The final particles (NumPy). If an iteration produced non-finite values the
            run stops there with a ``RuntimeWarning`` and returns the last finite ones.

        Raises:
            ValueError: for a bad ``x0``, ``n_iter``, ``stepsize``, ``bandwidth`` or
                ``alpha``, or a gradient of the wrong shape.
        """
        x0 = _checked_particles(x0)
        check_positive("n_iter", n_iter, integer=True)
        check_positive_values("stepsize", stepsize)
        if bandwidth == 0:
            raise ValueError(
                "`bandwidth` must be positive, or negative for the median trick; got 0"
            )
        check_range("alpha", alpha, 0, 1)
        bw = "median" if bandwidth < 0 else 2.0 * float(bandwidth) ** 2
        # float64 in: compute in float64 even where JAX's 64-bit mode is off
        x64 = jax.enable_x64(True) if x0.dtype == np.float64 else contextlib.nullcontext()
        with x64:
            x = jnp.asarray(x0)
            first = _first_gradient(lnprob, x0)  # iteration 1's; is lnprob JAX or NumPy?
            state, msg = self._run_loop(core.init(x), lnprob, 1, stepsize, bw, alpha, first)
            if not msg and n_iter > 1:
                rest = (n_iter - 1, stepsize, bw, alpha)
                if isinstance(first, jax.Array) and _traceable(lnprob, x):
                    state, msg = self._run_compiled(state, lnprob, *rest, debug)
                else:
                    state, msg = self._run_loop(state, lnprob, *rest, debug=debug)
            out = np.asarray(state.particles)
        if msg:
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
        return out.astype(x0.dtype, copy=False)

    def _run_compiled(self, state, lnprob, n_iter, stepsize, bw, alpha, debug):
        chunk_size = min(n_iter, 1000)
        key = (lnprob, bw, float(alpha), chunk_size)
        if key not in self._runners:
            score = core.make_score_fn(grad_log_density_fn=_checked(lnprob))
            step = core.build_step(score, bandwidth=bw, alpha=alpha, track_ksd=False)
            self._runners[key] = SVGDRunner(step, chunk_size=chunk_size)
        result = self._runners[key].run(state, n_iter, stepsize)
        if result.interrupted:  # Ctrl-C stops the caller's script, as in the original
            raise KeyboardInterrupt
        if debug:
            print(f"iter {result.num_iterations + 1}: {result.message}")
        return result.state, ("" if result.status != "non-finite" else result.message)

    def _run_loop(self, state, lnprob, n_iter, stepsize, bw, alpha, first=None, debug=False):
        """``n_iter`` iterations with ``lnprob`` called on NumPy particles between compiled
        steps (``first``: the first iteration's gradient, already computed)."""
        key = (bw, float(alpha))
        if key not in self._steps:
            # the gradient arrives as the step's data: score_fn(x, iteration, data) = data
            step = core.build_step(
                lambda x, it, grad: grad, bandwidth=bw, alpha=alpha, track_ksd=False
            )
            self._steps[key] = jax.jit(step)
        step = self._steps[key]
        x, start = state.particles, int(state.iteration)  # one read, not one per iteration
        for it in range(start, start + n_iter):
            if debug and (it + 1) % 1000 == 0:
                print(f"iter {it + 1}")
            grad = first if first is not None else lnprob(np.asarray(x))
            first = None
            grad = np.asarray(grad)
            if grad.shape != x.shape:
                raise ValueError(
                    f"`lnprob` must return the gradient of log p with the particles' shape "
                    f"{x.shape}; got {grad.shape}"
                )
            new, info = step(state, jnp.asarray(stepsize, x.dtype), jnp.asarray(grad, x.dtype))
            if not bool(info.is_finite):
                return state, (
                    f"non-finite particles at iteration {it + 1}; stopped and kept the last "
                    f"finite particles (iteration {it})"
                )
            state, x = new, new.particles
        return state, ""


def _checked_particles(x0: ArrayLike) -> np.ndarray:
    """A copy of ``x0`` as a float array (integers and booleans become float64).

    Raises:
        ValueError: ``x0`` is not a finite 2-d array with a particle and a dimension.
    """
    x0 = np.array(x0, dtype=float if np.asarray(x0).dtype.kind in "iub" else None)
    if x0.ndim != 2:
        raise ValueError(f"`x0` must be a 2-d array (particles, dim); got shape {x0.shape}")
    if x0.shape[0] < 1 or x0.shape[1] < 1:
        raise ValueError(f"`x0` needs at least one particle and one dimension; got {x0.shape}")
    if not np.all(np.isfinite(x0)):
        raise ValueError("`x0` must be finite; it contains NaN or inf")
    return x0


def _checked(lnprob: Callable) -> Callable:
    def grad(x):
        g = jnp.asarray(lnprob(x))
        if g.shape != x.shape:
            raise ValueError(
                f"`lnprob` must return the gradient of log p with the particles' shape "
                f"{x.shape}; got {g.shape}"
            )
        return g.astype(x.dtype)

    return grad


def _traceable(fn: Callable, x) -> bool:
    try:
        jax.eval_shape(fn, jax.ShapeDtypeStruct(x.shape, x.dtype))
    except Exception:  # noqa: BLE001 - any failure means "not JAX-traceable"
        return False
    return True
