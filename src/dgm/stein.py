"""``dgm.svgd``: a log density and initial particles in, ArviZ particles out.

The same convention as :func:`dgm.sample`: ``log_density_fn`` takes one position (a vector,
or a pytree of parameters), and the result is ``arviz.InferenceData``, so the particles of
SVGD and the draws of NUTS or constrained HMC are compared with the same tools. The
particles are the draws of one chain; the per-iteration kernelized Stein discrepancy,
RMS move and bandwidth are the ``svgd_trace`` group. The compiled chunk is kept per log
density and setting: a second call with the same shapes compiles nothing.

Example:
    >>> import jax, jax.numpy as jnp, dgm
    >>> x0 = jax.random.normal(jax.random.key(0), (50, 2))
    >>> idata = dgm.svgd(lambda x: -0.5 * jnp.sum((x - 1.0) ** 2), x0, num_iterations=200)
    >>> idata.posterior["x"].shape
    (1, 50, 2)
"""

import functools
from collections.abc import Mapping
from typing import Any

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np

from dgm.config import check_choice, check_positive
from dgm.inference import svgd as _svgd
from dgm.inference.svgd.driver import trace_dataset
from dgm.sampling import _check_scalar_output, _Raveled


def svgd(
    log_density_fn: Any,
    init_particles: Any,
    *,
    num_iterations: Any = 1000,
    step_size: Any = 0.01,
    optimizer: Any = None,
    kernel: Any = "rbf",
    bandwidth: Any = "median",
    ksd_tol: Any = None,
    update_tol: Any = None,
    var_name: Any = "x",
    chunk_size: Any = 100,
    progress_bar: Any = False,
):
    """Move ``init_particles`` towards ``exp(log_density_fn)`` with SVGD (Liu & Wang 2016).

    Args:
        log_density_fn: log density (up to a constant) of one position; JAX-traceable,
            returning a scalar.
        init_particles: the initial particles: an array ``(num_particles, dim)``, or a
            pytree of parameters (a dict, possibly nested, or a NamedTuple) whose every
            leaf has the particles on its leading axis; the log density then takes one
            particle's structure. Its (floating) dtype is the dtype of the run, as JAX
            holds it: float64 particles run in float64 only with ``jax_enable_x64`` on
            (otherwise JAX makes them float32, as every ``jnp.asarray`` does; unlike
            ``dgm.SVGD().update`` and ``dgm.condition``, which switch float64 on themselves).
        num_iterations: most SVGD steps.
        step_size: the original code's step rule (AdaGrad with momentum 0.9:
            ``x += step_size · φ / (1e-6 + sqrt(hist))``), so about the first step's move per
            coordinate. Ignored when ``optimizer`` is given.
        optimizer: an Optax ``GradientTransformation`` applied to ``−φ`` instead.
        kernel: ``"rbf"`` (the paper's) or ``"imq"`` (inverse multiquadric).
        bandwidth: ``"median"`` (the original code's median heuristic), ``"median-paper"``
            or a fixed positive bandwidth.
        ksd_tol, update_tol: stop early once the kernelized Stein discrepancy, or the RMS
            particle move of a step, falls below it. The KSD compared is the V-statistic
            (``ksd_v`` in the trace: the RKHS norm of the SVGD direction, 0 at SVGD's fixed
            point), not the reported U-statistic ``ksd``, which can read 0 while the
            particles are still far off. With minibatch scores both carry the batch's
            noise. Under the original step rule
            a particle's move stays near ``step_size`` (it is normalised by its own running
            RMS), so ``update_tol`` suits an ``optimizer`` with a decaying step.
        var_name: the variable's name for an array start (a pytree's leaves are named by
            their keys, joined by ``.``).
        chunk_size: steps per compiled call.
        progress_bar: show a progress bar.

    Returns:
        ``arviz.InferenceData``: ``posterior[var_name]`` of shape ``(1, num_particles, dim)``
        (a pytree start: one variable per leaf, ``(1, num_particles, *leaf shape)``), the
        ``svgd_trace`` group (``ksd``, ``ksd_v``, ``update_norm``, ``bandwidth`` per iteration,
        on its ``draw`` axis) and attributes ``sampler`` (``"svgd"``), ``num_iterations`` (steps
        applied), ``status`` (``"completed"``, ``"converged"``, ``"non-finite"``: a step
        that would make a particle non-finite is not applied and the run stops,
        ``"interrupted"``), ``message``, ``ksd`` (the last iteration's), ``wall_s``, ``compile_s``.

    Raises:
        ValueError: for bad arguments (each message names the argument).
    """
    if not callable(log_density_fn):
        raise ValueError(f"`log_density_fn` must be callable; got {type(log_density_fn).__name__}")
    check_positive("chunk_size", chunk_size, integer=True)
    check_choice("kernel", kernel, _svgd.KERNELS)
    if not isinstance(var_name, str) or not var_name:
        raise ValueError(f"`var_name` must be a non-empty str; got {var_name!r}")
    if optimizer is not None and not hasattr(optimizer, "update"):
        raise ValueError(
            f"`optimizer` must be an Optax GradientTransformation or None; got "
            f"{type(optimizer).__name__}"
        )
    raveled, particles = _particles(log_density_fn, init_particles)
    fn = raveled if raveled is not None else log_density_fn
    _check_scalar_output(fn, particles.shape[1], particles.dtype)
    runner = _runner(fn, kernel, bandwidth, optimizer, chunk_size)
    result = runner.run(
        _svgd.init(particles, optimizer),
        num_iterations,
        step_size,
        ksd_tol=ksd_tol,
        update_tol=update_tol,
        progress=progress_bar,
    )
    draws = result.particles[None]
    if raveled is None:
        posterior, dims = {var_name: draws}, {var_name: [f"{var_name}_dim"]}
    else:
        posterior, dims = raveled.named_draws(draws, var_name), None
    idata = az.from_dict(posterior=posterior, dims=dims)
    idata.add_groups(svgd_trace=trace_dataset(result))
    ksd = result.trace["ksd"]
    idata.posterior.attrs.update(
        sampler="svgd",
        num_iterations=result.num_iterations,
        status=result.status,
        message=result.message,
        ksd=float(ksd[-1]) if ksd.size else float("nan"),
        wall_s=result.wall_s,
        compile_s=result.compile_s,
    )
    return idata


def _particles(log_density_fn, init) -> tuple["_Raveled | None", jax.Array]:
    """The flat particle array ``(n, dim)``, and the pytree map for a structured start."""
    structured = isinstance(init, Mapping) or hasattr(init, "_fields")
    if structured:
        leaves = jax.tree.leaves(init)
        if not leaves:
            raise ValueError("`init_particles` is an empty pytree; expected parameters")
        counts = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
        if len(counts) != 1 or None in counts:
            raise ValueError(
                "`init_particles`: every leaf must have the particles on its leading axis, "
                f"the same number in each; got leading sizes {sorted(map(str, counts))}"
            )
        one = jax.tree.map(lambda a: jnp.asarray(a)[0], init)
        raveled = _Raveled.of(log_density_fn, one)
        x = jax.vmap(raveled.ravel)(init)
    else:
        raveled, x = None, jnp.asarray(init)
        if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
            raise ValueError(
                "`init_particles` must be an array (num_particles, dim) or a pytree with "
                f"the particles on every leaf's leading axis; got shape {tuple(x.shape)}"
            )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if not bool(jnp.all(jnp.isfinite(x))):
        raise ValueError("`init_particles` must be finite; it contains NaN or inf")
    return raveled, x


@functools.lru_cache(maxsize=16)
def _runner(log_density_fn, kernel, bandwidth, optimizer, chunk_size) -> _svgd.SVGDRunner:
    score = _svgd.make_score_fn(log_density_fn=log_density_fn)
    step = _svgd.build_step(score, kernel=kernel, bandwidth=bandwidth, optimizer=optimizer)
    return _svgd.SVGDRunner(step, chunk_size=chunk_size)
