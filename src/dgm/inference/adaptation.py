"""Warm-up: dual-averaging step size, Welford mass-matrix estimates, Stan's windowed schedule.

Each piece has the optax shape ``init`` / ``update`` / ``final`` and is a pure function of
NamedTuple state. :func:`warmup` strings them together for one chain as a single
``lax.scan`` (jit it, and ``vmap`` it over chains, outside):

- iterations ``[0, init_buffer)``: step size only (dual averaging);
- slow windows of ``base_window``, ``2 * base_window``, ... iterations (the last one
  stretched to meet the terminal buffer): positions feed a Welford estimate of the
  (co)variance; at each window's end the inverse mass matrix becomes the regularised
  estimate and dual averaging restarts from the current step size;
- the terminal buffer: step size only. The returned step size is the dual-averaging
  iterate average.

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, §3.2 (dual averaging) and
    Algorithm 4 (initial step size); Nesterov (2009); Stan Reference Manual, "HMC
    algorithm parameters: automatic parameter tuning" (windows and regularisation);
    Welford (1962).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int, PRNGKeyArray

from dgm.config import check_choice, check_positive
from dgm.inference.base import Kernel, _join_params, _split_params
from dgm.inference.metrics import InverseMass
from dgm.inference.step_size import find_reasonable_step_size, kernel_step_size_search

# ---------------------------------------------------------------------------- dual averaging


class DualAveragingState(NamedTuple):
    """Dual-averaging iterate: ``log_step_size`` is used now, the average at the end."""

    log_step_size: Float[Array, ""]
    log_step_size_avg: Float[Array, ""]
    error_avg: Float[Array, ""]
    mu: Float[Array, ""]
    count: Int[Array, ""]


def dual_averaging_init(step_size: Float[Array, ""]) -> DualAveragingState:
    """Start dual averaging at ``step_size``; the shrinkage point is ``log(10 * step_size)``."""
    log_eps = jnp.log(step_size)
    zero = jnp.zeros_like(log_eps)
    return DualAveragingState(log_eps, zero, zero, jnp.log(10.0) + log_eps, jnp.asarray(0))


def dual_averaging_update(
    state: DualAveragingState,
    accept_prob: Float[Array, ""],
    target_accept: float | Float[Array, ""] = 0.8,
    t0: float = 10.0,
    gamma: float = 0.05,
    kappa: float = 0.75,
) -> DualAveragingState:
    """One dual-averaging step towards mean acceptance ``target_accept``.

    A non-finite ``accept_prob`` counts as 0 (the step was too large).

    References:
        Hoffman & Gelman (2014), JMLR 15, eq. (6).
    """
    accept_prob = jnp.where(jnp.isfinite(accept_prob), accept_prob, 0.0)
    t = state.count + 1
    tf = t.astype(state.error_avg.dtype)
    w = 1.0 / (tf + t0)
    error_avg = (1.0 - w) * state.error_avg + w * (target_accept - accept_prob)
    log_eps = state.mu - jnp.sqrt(tf) / gamma * error_avg
    eta = tf ** (-kappa)
    log_eps_avg = eta * log_eps + (1.0 - eta) * state.log_step_size_avg
    return DualAveragingState(log_eps, log_eps_avg, error_avg, state.mu, t)


def dual_averaging_final(state: DualAveragingState) -> Float[Array, ""]:
    """The step size to sample with: ``exp`` of the averaged log step size."""
    return jnp.exp(state.log_step_size_avg)


# ---------------------------------------------------------------------------- Welford


class WelfordState(NamedTuple):
    """Running mean and sum of squared deviations (a vector, or a matrix when dense)."""

    mean: Float[Array, " dim"]
    m2: Float[Array, " dim"] | Float[Array, "dim dim"]
    count: Int[Array, ""]


def welford_init(position: Float[Array, " dim"], dense: bool = False) -> WelfordState:
    """Empty accumulator for vectors shaped like ``position``."""
    dim = position.shape[0]
    m2 = jnp.zeros((dim, dim) if dense else (dim,), position.dtype)
    return WelfordState(jnp.zeros_like(position), m2, jnp.asarray(0))


def welford_update(state: WelfordState, x: Float[Array, " dim"]) -> WelfordState:
    """Add one sample."""
    count = state.count + 1
    delta = x - state.mean
    mean = state.mean + delta / count.astype(x.dtype)
    delta2 = x - mean
    m2 = state.m2 + (jnp.outer(delta, delta2) if state.m2.ndim == 2 else delta * delta2)
    return WelfordState(mean, m2, count)


def welford_final(state: WelfordState, regularize: bool = True) -> InverseMass:
    """Sample (co)variance, shrunk as Stan does: ``n/(n+5) C + 1e-3 * 5/(n+5) I``.

    Args:
        state: accumulator with at least two samples.
        regularize: apply Stan's shrinkage towards ``1e-3 I``.
    """
    n = state.count.astype(state.mean.dtype)
    cov = state.m2 / (n - 1.0)
    if not regularize:
        return cov
    shrink = 1e-3 * 5.0 / (n + 5.0)
    eye = jnp.eye(cov.shape[0], dtype=cov.dtype) if cov.ndim == 2 else jnp.ones_like(cov)
    return (n / (n + 5.0)) * cov + shrink * eye


# ---------------------------------------------------------------------------- schedule


def build_schedule(
    num_warmup: int, initial_buffer: int = 75, base_window: int = 25, terminal_buffer: int = 50
) -> tuple[np.ndarray, np.ndarray]:
    """Stan's windowed adaptation schedule.

    When the three phases do not fit, they shrink as Stan's do: 15% initial buffer,
    10% terminal buffer, the rest one slow window. Below 20 iterations there is no
    mass-matrix adaptation at all. A slow window after the first that leaves too little
    room for the next (twice its size) runs to the terminal buffer; the first window is
    never stretched (Stan's ``restart``), so 151–199 iterations give two windows.

    Returns:
        ``(in_window, window_end)``: boolean NumPy arrays of length ``num_warmup``;
        iteration ``i`` feeds the variance estimate when ``in_window[i]``, and the
        window closes after it when ``window_end[i]``.
    """
    in_window = np.zeros(num_warmup, bool)
    window_end = np.zeros(num_warmup, bool)
    if num_warmup < 20:
        return in_window, window_end
    if initial_buffer + base_window + terminal_buffer > num_warmup:
        initial_buffer = int(0.15 * num_warmup)
        terminal_buffer = int(0.1 * num_warmup)
        base_window = num_warmup - initial_buffer - terminal_buffer
    slow_end = num_warmup - terminal_buffer
    start, size = initial_buffer, base_window
    while start < slow_end:
        end = start + size
        if start > initial_buffer and end + 2 * size > slow_end:  # the next would not fit
            end = slow_end
        in_window[start:end] = True
        window_end[end - 1] = True
        start, size = end, 2 * size
    return in_window, window_end


# ---------------------------------------------------------------------------- driver


class WarmupResult(NamedTuple):
    """What :func:`warmup` returns for one chain."""

    state: Any
    params: Any  # the kernel's params with the adapted step size (and inverse mass matrix)
    infos: Any  # kernel info per warm-up iteration (leading axis: iteration)

    @property
    def step_size(self) -> Any:  # batched when the result is
        return self.params.step_size

    @property
    def inverse_mass_matrix(self) -> Any:
        return self.params.inverse_mass_matrix


class _Carry(NamedTuple):
    state: Any
    da: DualAveragingState
    welford: WelfordState
    params: Any


def warmup(
    key: PRNGKeyArray,
    kernel: Kernel,
    init_state: Any,
    num_warmup: int,
    *,
    params: Any = None,
    log_density_fn: Callable | None = None,
    metric: str = "diagonal",
    target_accept: float = 0.8,
    find_initial_step_size: bool = True,
) -> WarmupResult:
    """Warm up one chain of any kernel: Stan's windowed adaptation of its params.

    The kernel's params must have a ``step_size`` field, adapted by dual averaging; with a
    ``metric`` other than ``"none"`` also an ``inverse_mass_matrix`` field, set from the
    slow windows' (co)variance estimates. The whole warm-up is one ``lax.scan``; call it
    under ``jax.jit`` and ``jax.vmap`` it over ``(keys, states)`` for several chains (each
    chain adapts on its own).

    Args:
        key: PRNG key for this chain.
        kernel: a :class:`~dgm.inference.base.Kernel`; ``info.accept_prob`` of its step is
            the Metropolis acceptance probability and ``state.position`` the position.
        init_state: the chain's initial state.
        num_warmup: number of warm-up iterations (a positive Python int).
        params: the starting params (default ``kernel.params``); their step size is the
            initial step size.
        log_density_fn: the log target density, for Hoffman & Gelman's one-leapfrog initial
            step-size search (Euclidean HMC); without it the search runs the kernel's own
            step, counting a failed step as acceptance 0 (any kernel, e.g. on a manifold).
        metric: ``"diagonal"``, ``"dense"``, or ``"none"`` (adapt the step size only).
        target_accept: mean acceptance probability dual averaging aims for.
        find_initial_step_size: start from the doubling/halving search (rerun after every
            mass-matrix update).

    Returns:
        :class:`WarmupResult` with the final state and the adapted params.

    Raises:
        ValueError: for a non-positive ``num_warmup`` or step size, an unknown ``metric``,
            a ``target_accept`` outside (0, 1), or an inverse mass matrix of the wrong shape.

    Example:
        >>> import functools, jax, jax.numpy as jnp
        >>> from dgm.inference.hmc import hmc
        >>> logp = lambda x: -0.5 * jnp.sum(x**2)
        >>> kernel = hmc(logp, step_size=1.0, inverse_mass_matrix=jnp.ones(3), num_steps=5)
        >>> run = jax.jit(functools.partial(warmup, kernel=kernel, num_warmup=200,
        ...                                 log_density_fn=logp))
        >>> out = run(jax.random.key(0), init_state=kernel.init(jnp.ones(3)))
    """
    params = kernel.params if params is None else params
    position, params = _check_warmup_args(init_state, num_warmup, params, metric, target_accept)
    in_window, window_end = build_schedule(num_warmup)
    if metric == "none":
        in_window[:] = False
        window_end[:] = False
    key_init, key_run = jax.random.split(key)
    keys_restart = jax.random.split(key_init, num_warmup + 1)

    def search(k, state, params):
        if not find_initial_step_size:
            return params.step_size
        if log_density_fn is not None:
            imm = params.inverse_mass_matrix
            return find_reasonable_step_size(
                k, _position(state), log_density_fn, imm, params.step_size
            )
        return kernel_step_size_search(k, kernel.step, state, params)

    params = params._replace(step_size=search(keys_restart[0], init_state, params))
    da = dual_averaging_init(params.step_size)
    # Python ints in the params (a fixed step count, a maximum tree depth) stay
    # compile-time constants: the scan carries only the array part.
    traced, static = _split_params(params)
    carry = _Carry(init_state, da, welford_init(position, metric == "dense"), traced)
    body = _warmup_body(kernel.step, search, target_accept, metric, static)
    xs = (
        jax.random.split(key_run, num_warmup),
        keys_restart[1:],
        jnp.asarray(in_window),
        jnp.asarray(window_end),
    )
    carry, infos = jax.lax.scan(body, carry, xs)
    params = _join_params(carry.params, static)._replace(step_size=dual_averaging_final(carry.da))
    return WarmupResult(carry.state, params, infos)


def _warmup_body(step: Callable, search: Callable, target_accept: float, metric: str, static):
    """One warm-up iteration: a kernel step, dual averaging, Welford inside a slow window,
    and at a window's end the new inverse mass matrix and a restarted step-size search
    (not traced for ``metric="none"``, whose params may have no inverse mass matrix)."""
    dense = metric == "dense"

    def close_window(c: _Carry, key):
        params = c.params._replace(inverse_mass_matrix=welford_final(c.welford))
        params = params._replace(step_size=search(key, c.state, _join_params(params, static)))
        empty = welford_init(_position(c.state), dense)
        return _Carry(c.state, dual_averaging_init(params.step_size), empty, params)

    def body(c: _Carry, xs):
        key, key_restart, adapt, close = xs
        state, info = step(key, c.state, _join_params(c.params, static))
        da = dual_averaging_update(c.da, info.accept_prob, target_accept)
        welford = jax.tree.map(
            lambda a, b: jnp.where(adapt, a, b),
            welford_update(c.welford, _position(state)),
            c.welford,
        )
        c = _Carry(state, da, welford, c.params._replace(step_size=jnp.exp(da.log_step_size)))
        if metric == "none":
            return c, info
        return jax.lax.cond(close, lambda c: close_window(c, key_restart), lambda c: c, c), info

    return body


def _position(state) -> Float[Array, " dim"]:
    return state.position


def _check_warmup_args(init_state, num_warmup, params, metric, target_accept):
    """Validate; return the position and params with a step size and inverse mass matrix
    of the position's dtype (an identity of ``metric``'s shape for a scalar one)."""
    check_positive("num_warmup", num_warmup, integer=True)
    check_choice("metric", metric, ("diagonal", "dense", "none"))
    if not 0.0 < float(target_accept) < 1.0:
        raise ValueError(f"`target_accept` must lie in (0, 1); got {target_accept!r}")
    if not hasattr(params, "step_size"):
        raise ValueError(f"`params` must have a `step_size` field; got {type(params).__name__}")
    step_size = params.step_size
    if not isinstance(step_size, jax.core.Tracer) and not float(np.asarray(step_size)) > 0:
        raise ValueError(f"`step_size` must be positive; got {step_size!r}")
    position = _position(init_state)
    if position.ndim != 1:
        raise ValueError(f"`init_state.position` must be a vector; got shape {position.shape}")
    params = params._replace(step_size=jnp.asarray(step_size, position.dtype))
    if not hasattr(params, "inverse_mass_matrix"):
        if metric != "none":
            raise ValueError(
                f"`metric` must be 'none' for params without an inverse mass matrix "
                f"({type(params).__name__}); got {metric!r}"
            )
        return position, params
    return position, params._replace(
        inverse_mass_matrix=_inverse_mass(params.inverse_mass_matrix, position, metric)
    )


def _inverse_mass(imm, position, metric: str) -> InverseMass:
    dim = position.shape[0]
    imm = jnp.asarray(imm, position.dtype)
    if imm.ndim == 0:  # a multiple of the identity
        eye = jnp.eye(dim, dtype=position.dtype) if metric == "dense" else jnp.ones_like(position)
        return imm * eye
    expected = {"dense": (2,), "diagonal": (1,), "none": (1, 2)}[metric]
    if imm.ndim not in expected or any(s != dim for s in imm.shape):
        raise ValueError(
            f"`inverse_mass_matrix` for metric {metric!r} must have shape "
            f"{' or '.join(str((dim,) * n) for n in expected)}; got {imm.shape}."
        )
    return imm
