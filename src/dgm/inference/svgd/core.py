"""Stein variational gradient descent (SVGD) over the whole ``(particles, dim)`` array.

``init`` and the ``step`` returned by :func:`build_step` are pure. Each step computes the
pairwise distances, the bandwidth and the kernel products once, and from them the SVGD
direction and the kernelized Stein discrepancy of the current particles (see
:mod:`dgm.inference.svgd.kernel` for the kernels, the exact median bandwidth and the
blocked path for large particle counts).

Large n: ``build_step(..., block_size=B)`` processes the particles in row blocks of B,
so no n x n matrix is stored. Several devices: :func:`shard` splits the particles across
them and the jitted step runs SPMD.

References:
    Liu & Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian
    Inference Algorithm", NIPS 2016 (arXiv:1608.04471). Liu, Lee & Jordan, "A
    Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016.
"""

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.config import check_choice, check_positive_or_none, check_positive_values, check_range
from dgm.inference.mesh import make_mesh
from dgm.inference.svgd.kernel import BANDWIDTHS, KERNELS, phi_and_ksd_uv

__all__ = ["SVGDInfo", "SVGDState", "build_step", "init", "make_score_fn", "shard"]


class SVGDState(NamedTuple):
    """Only what the next step needs.

    Attributes:
        particles: the current particles.
        opt_state: the step rule's state (``(hist,)`` for the original rule, else Optax's).
        iteration: number of steps taken.
    """

    particles: Float[Array, "particles dim"]
    opt_state: Any
    iteration: Int[Array, ""]


class SVGDInfo(NamedTuple):
    """Diagnostics of one step (the step never reads them back).

    Attributes:
        ksd: kernelized Stein discrepancy of the particles *before* the step:
            ``sqrt(max(U, 0))`` of the U-statistic ``U`` of KSD², under the step's kernel.
        ksd_v: ``sqrt(V)`` of the V-statistic: the RKHS norm of the SVGD direction, 0
            exactly at a fixed point of SVGD (what ``ksd_tol`` compares; inf when the
            step does not track the KSD).
        update_norm: root mean square over particles of the norm of the move.
        bandwidth: the kernel bandwidth ``h`` used.
        is_finite: whether the new particles are all finite.
    """

    ksd: Float[Array, ""]
    ksd_v: Float[Array, ""]
    update_norm: Float[Array, ""]
    bandwidth: Float[Array, ""]
    is_finite: Bool[Array, ""]


# ----------------------------------------------------------------------------- target


def make_score_fn(
    *,
    log_density_fn: Callable | None = None,
    grad_log_density_fn: Callable | None = None,
    log_prior_fn: Callable | None = None,
    log_likelihood_fn: Callable | None = None,
    batch_size: int | None = None,
) -> Callable:
    """``score(particles, iteration, data) -> (particles, dim)`` gradients of log p.

    Exactly one target: ``log_density_fn(x)`` (one particle; vmapped and differentiated),
    ``grad_log_density_fn(particles)`` (the whole array, like the original code), or
    ``log_prior_fn(x)`` plus ``log_likelihood_fn(x, batch)`` (the summed log likelihood
    of a batch of data rows). With ``batch_size`` the likelihood gradient is taken on
    rows ``[i*B, (i+1)*B) mod N`` at iteration ``i`` and rescaled by ``N / B``.
    """
    given = [f is not None for f in (log_density_fn, grad_log_density_fn, log_likelihood_fn)]
    if sum(given) != 1:
        raise ValueError(
            "give exactly one target: `log_density_fn`, `grad_log_density_fn`, or "
            f"`log_likelihood_fn` (with `log_prior_fn`); got {sum(given)}"
        )
    check_positive_or_none("batch_size", batch_size, integer=True)
    if grad_log_density_fn is not None:
        return lambda x, it, data: grad_log_density_fn(x)
    if log_density_fn is not None:
        g = jax.vmap(jax.grad(log_density_fn))
        return lambda x, it, data: g(x)
    prior = log_prior_fn if log_prior_fn is not None else (lambda x: jnp.zeros((), x.dtype))

    def score(x, it, data):
        num = jax.tree.leaves(data)[0].shape[0]
        if batch_size is None or batch_size >= num:
            batch, scale = data, 1.0
        else:
            # (it * B) mod N, from it mod (N / gcd(N, B)): it * B overflows int32 past
            # 2^31 rows seen (21 million iterations at B = 100)
            cycle = num // math.gcd(num, batch_size)
            start = (it % cycle) * batch_size
            idx = (start + jnp.arange(batch_size, dtype=it.dtype)) % num
            batch = jax.tree.map(lambda a: a[idx], data)
            scale = num / batch_size

        def logp(xi):
            return prior(xi) + scale * log_likelihood_fn(xi, batch)

        return jax.vmap(jax.grad(logp))(x)

    return score


# ----------------------------------------------------------------------------- step


def init(particles: ArrayLike, optimizer: Any = None) -> SVGDState:
    """Initial state: the original step rule's accumulator, or ``optimizer.init``.

    Args:
        particles: initial particles, shape ``(particles, dim)``.
        optimizer: the Optax optimizer that ``build_step`` was given, if any.

    Raises:
        ValueError: ``particles`` is not a non-empty 2-d array.
    """
    x = jnp.asarray(particles)
    if x.ndim != 2:
        raise ValueError(f"`particles` must be a 2-d array (particles, dim); got shape {x.shape}")
    if x.shape[0] < 1 or x.shape[1] < 1:
        raise ValueError(
            f"`particles` needs at least one particle and one dimension; got {x.shape}"
        )
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    opt_state = (jnp.zeros_like(x),) if optimizer is None else optimizer.init(x)
    return SVGDState(x, opt_state, jnp.zeros((), jnp.int32))


def build_step(
    score_fn: Callable,
    *,
    kernel: str = "rbf",
    bandwidth: str | float = "median",
    optimizer: Any = None,
    alpha: float = 0.9,
    fudge: float = 1e-6,
    track_ksd: bool = True,
    block_size: int | None = None,
) -> Callable:
    """Build ``step(state, step_size, data=None) -> (state, info)``.

    Args:
        score_fn: from :func:`make_score_fn`.
        kernel: ``"rbf"`` or ``"imq"``.
        bandwidth: ``"median"``, ``"median-paper"`` or a fixed positive ``h``.
        optimizer: an Optax ``GradientTransformation`` (applied to ``-phi``; then
            ``step_size`` is ignored); ``None`` for the original rule, elementwise:
            ``hist = phi^2`` at the first step, then ``hist = alpha hist + (1 - alpha)
            phi^2``; ``x += step_size phi / (fudge + sqrt(hist))``.
        alpha: the original rule's decay.
        fudge: the original rule's denominator offset.
        track_ksd: compute the KSD (else ``info.ksd`` is 0 and ``info.ksd_v`` inf, and a
            runner refuses ``ksd_tol``).
        block_size: if given, particles beyond this count are processed in row blocks of
            this size, so no n x n matrix is stored (memory O(block_size * n)); the
            result equals the dense one up to rounding. For large n.

    Raises:
        ValueError: an unknown kernel or bandwidth rule, a non-positive bandwidth or
            ``block_size``, ``alpha`` outside [0, 1); when traced, scores of a wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> step = jax.jit(build_step(make_score_fn(log_density_fn=lambda x: -x @ x / 2)))
        >>> state, info = step(init(jax.random.normal(jax.random.key(0), (50, 2))), 0.05)
    """
    _check_step_args(kernel, bandwidth, alpha, block_size)

    def step(state: SVGDState, step_size, data=None) -> tuple[SVGDState, SVGDInfo]:
        x = state.particles
        scores = _checked_scores(score_fn(x, state.iteration, data), x)
        phi, u, v, h = phi_and_ksd_uv(
            x, scores.astype(x.dtype), kernel, bandwidth, track_ksd, block_size
        )
        if optimizer is None:
            new_x, opt_state = _original_rule(state, phi, step_size, alpha, fudge)
        else:
            # Optax's bias corrections mix Python floats and int32 counts
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(-phi, state.opt_state, x)
            new_x = x + updates
        move = new_x - x
        info = SVGDInfo(
            ksd=jnp.sqrt(jnp.maximum(u, 0.0)),
            ksd_v=jnp.sqrt(jnp.maximum(v, 0.0)),
            update_norm=jnp.sqrt(jnp.mean(jnp.sum(move * move, axis=1))),
            bandwidth=h,
            is_finite=jnp.all(jnp.isfinite(new_x)),
        )
        return SVGDState(new_x, opt_state, state.iteration + 1), info

    step.tracks_ksd = track_ksd  # read by SVGDRunner.run's ksd_tol check
    return step


def _checked_scores(scores: Array, x: Float[Array, "particles dim"]) -> Array:
    """``scores``, after checking at trace time that they have the particles' shape."""
    if scores.shape != x.shape:
        raise ValueError(
            f"the gradient of log p must have the particles' shape {x.shape}; got {scores.shape}"
        )
    return scores


def _check_step_args(kernel: str, bandwidth: Any, alpha: float, block_size: Any) -> None:
    """:func:`build_step`'s trace-time checks (see its ``Raises``)."""
    check_choice("kernel", kernel, KERNELS)
    if isinstance(bandwidth, str):
        check_choice("bandwidth", bandwidth, BANDWIDTHS)
    else:
        check_positive_values("bandwidth", bandwidth)
    check_range("alpha", alpha, 0, 1)
    check_positive_or_none("block_size", block_size, integer=True)


def _original_rule(
    state: SVGDState, phi: Float[Array, "particles dim"], step_size, alpha: float, fudge: float
) -> tuple[Float[Array, "particles dim"], tuple]:
    """The original code's "AdaGrad with momentum" move (see :func:`build_step`)."""
    x = state.particles
    (hist,) = state.opt_state
    hist = jnp.where(state.iteration == 0, phi**2, alpha * hist + (1.0 - alpha) * phi**2)
    new_x = x + jnp.asarray(step_size, x.dtype) * phi / (fudge + jnp.sqrt(hist))
    return new_x, (hist,)


def shard(state: SVGDState, devices: Any = None) -> SVGDState:
    """Split the particles (and per-particle step-rule state) across devices.

    The jitted ``step`` then runs SPMD: each device computes its rows of the distance
    and kernel matrices, and the median's counting passes add up across devices. The
    result equals the unsharded step up to rounding.

    Args:
        state: from :func:`init`.
        devices: the devices to use; default all of ``jax.devices()``.

    Raises:
        ValueError: the particle count is not a multiple of the number of devices.

    Example:
        >>> state = shard(init(jnp.zeros((8, 2))))  # doctest: +SKIP
    """
    devices = list(jax.devices() if devices is None else devices)
    n = state.particles.shape[0]
    if n % len(devices):
        raise ValueError(
            f"the particle count ({n}) must be a multiple of the number of devices "
            f"({len(devices)}) to shard; use a multiple or pass fewer `devices`"
        )
    mesh = make_mesh(devices=devices, axis="particles")
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("particles"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(a):
        a = jnp.asarray(a)
        per_particle = a.ndim >= 1 and a.shape[0] == n
        return jax.device_put(a, split if per_particle else whole)

    return jax.tree.map(place, state)
