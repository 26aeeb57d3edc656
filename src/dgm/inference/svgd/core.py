"""Stein variational gradient descent (SVGD) over the whole ``(particles, dim)`` array.

``init`` and the ``step`` returned by :func:`build_step` are pure. Each step computes the
pairwise distances, the bandwidth and the kernel products once, and from them the SVGD
direction and the kernelized Stein discrepancy of the current particles (see
:mod:`dgm.inference.svgd_kernel` for the kernels, the exact median bandwidth and the
blocked path for large particle counts).

Large n: ``build_step(..., block_size=B)`` processes the particles in row blocks of B,
so no n x n matrix is stored. Several devices: :func:`shard` splits the particles across
them and the jitted step runs SPMD.

References:
    Liu & Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian
    Inference Algorithm", NIPS 2016 (arXiv:1608.04471). Liu, Lee & Jordan, "A
    Kernelized Stein Discrepancy for Goodness-of-fit Tests", ICML 2016.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.inference._select import median, order_statistic
from dgm.inference.svgd_kernel import (
    BANDWIDTHS,
    KERNELS,
    bandwidth_from,
    ksd,
    phi_and_ksd,
    squared_distances,
)

__all__ = [
    "SVGDInfo",
    "SVGDState",
    "bandwidth_from",
    "build_step",
    "init",
    "ksd",
    "make_score_fn",
    "median",
    "order_statistic",
    "phi_and_ksd",
    "shard",
    "squared_distances",
]


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
        update_norm: root mean square over particles of the norm of the move.
        bandwidth: the kernel bandwidth ``h`` used.
        is_finite: whether the new particles are all finite.
    """

    ksd: Float[Array, ""]
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
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"`batch_size` must be a positive int or None; got {batch_size!r}")
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
            idx = (it * batch_size + jnp.arange(batch_size, dtype=it.dtype)) % num
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
        optimizer: an Optax ``GradientTransformation`` (applied to ``-phi``); ``None``
            for the original rule ``hist = phi^2`` at the first step, then
            ``hist = alpha hist + (1 - alpha) phi^2``, ``x += step_size phi /
            (fudge + sqrt(hist))``, elementwise. With Optax, ``step_size`` is ignored.
        alpha: the original rule's decay.
        fudge: the original rule's denominator offset.
        track_ksd: compute the KSD (else ``info.ksd`` is 0).
        block_size: if given, particles beyond this count are processed in row blocks of
            this size, so no n x n matrix is stored (memory O(block_size * n)); the
            result equals the dense one up to rounding. For large n.

    Raises:
        ValueError: an unknown kernel or bandwidth rule, a non-positive bandwidth, or
            ``alpha`` outside [0, 1); at trace time, a score of the wrong shape.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> score = make_score_fn(log_density_fn=lambda x: -0.5 * jnp.sum(x**2))
        >>> step = jax.jit(build_step(score))
        >>> state = init(jax.random.normal(jax.random.key(0), (50, 2)))
        >>> state, info = step(state, 0.05)
    """
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {list(KERNELS)}; got {kernel!r}")
    if isinstance(bandwidth, str):
        if bandwidth not in BANDWIDTHS:
            raise ValueError(
                f"`bandwidth` must be one of {list(BANDWIDTHS)} or a positive number; "
                f"got {bandwidth!r}"
            )
    elif not float(bandwidth) > 0:
        raise ValueError(f"`bandwidth` must be positive; got {bandwidth!r}")
    if not 0.0 <= float(alpha) < 1.0:
        raise ValueError(f"`alpha` must lie in [0, 1); got {alpha!r}")
    if block_size is not None and (
        not isinstance(block_size, int) or isinstance(block_size, bool) or block_size < 1
    ):
        raise ValueError(f"`block_size` must be a positive int or None; got {block_size!r}")

    def step(state: SVGDState, step_size, data=None) -> tuple[SVGDState, SVGDInfo]:
        x = state.particles
        scores = score_fn(x, state.iteration, data)
        if scores.shape != x.shape:
            raise ValueError(
                f"the gradient of log p must have the particles' shape {x.shape}; "
                f"got {scores.shape}"
            )
        phi, u, h = phi_and_ksd(x, scores.astype(x.dtype), kernel, bandwidth, track_ksd, block_size)
        if optimizer is None:
            (hist,) = state.opt_state
            hist = jnp.where(state.iteration == 0, phi**2, alpha * hist + (1.0 - alpha) * phi**2)
            new_x = x + jnp.asarray(step_size, x.dtype) * phi / (fudge + jnp.sqrt(hist))
            opt_state = (hist,)
        else:
            # Optax's bias corrections mix Python floats and int32 counts
            with jax.numpy_dtype_promotion("standard"):
                updates, opt_state = optimizer.update(-phi, state.opt_state, x)
            new_x = x + updates
        move = new_x - x
        info = SVGDInfo(
            ksd=jnp.sqrt(jnp.maximum(u, 0.0)),
            update_norm=jnp.sqrt(jnp.mean(jnp.sum(move * move, axis=1))),
            bandwidth=h,
            is_finite=jnp.all(jnp.isfinite(new_x)),
        )
        return SVGDState(new_x, opt_state, state.iteration + 1), info

    return step


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
    mesh = jax.sharding.Mesh(np.array(devices), ("particles",))
    split = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("particles"))
    whole = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

    def place(a):
        a = jnp.asarray(a)
        per_particle = a.ndim >= 1 and a.shape[0] == n
        return jax.device_put(a, split if per_particle else whole)

    return jax.tree.map(place, state)
