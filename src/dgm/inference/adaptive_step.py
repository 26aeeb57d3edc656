"""A kernel that adapts its own step size by dual averaging during its first iterations.

:func:`dgm.inference.adaptation.warmup` runs a whole warm-up as one ``lax.scan``. This
module puts the same dual averaging *inside* the kernel instead: the state carries the
dual-averaging iterate, the first ``num_adapt`` transitions use (and update) it, and every
later transition uses the iterate average, frozen. One :class:`~dgm.inference.base.ChainRunner`
run of ``num_warmup + num_samples`` iterations then covers warm-up and sampling with one
compiled chunk, and keeps the runner's chunking, progress bar, checkpoints and resume.

Failed transitions (a projection or reversibility failure on a manifold, a divergence)
report acceptance 0 and so shrink the step size; :func:`search_kernel` finds the starting
step size by doubling or halving, counting a failed step as too large
(:func:`~dgm.inference.step_size.kernel_step_size_search`).

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, §3.2 and Algorithm 4;
    Nesterov (2009).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from dgm.inference.adaptation import (
    DualAveragingState,
    dual_averaging_final,
    dual_averaging_init,
    dual_averaging_update,
)
from dgm.inference.step_size import kernel_step_size_search


class AdaptiveState(NamedTuple):
    """The wrapped kernel's state and the dual-averaging iterate of its step size."""

    state: Any
    da: DualAveragingState


class AdaptiveParams(NamedTuple):
    """The wrapped kernel's params (their ``step_size`` is ignored), the acceptance target,
    and how many transitions adapt (traced: changing them does not recompile)."""

    params: Any
    target_accept: Float[Array, ""]
    num_adapt: Int[Array, ""]


def check_target_accept(target_accept: Any) -> float:
    """``target_accept`` as a float in (0, 1), else ``ValueError`` naming it."""
    ok = isinstance(target_accept, int | float) and not isinstance(target_accept, bool)
    if not (ok and 0.0 < float(target_accept) < 1.0):
        raise ValueError(f"`target_accept` must be a number in (0, 1); got {target_accept!r}")
    return float(target_accept)


def init(state: Any, step_size: Float[Array, ""]) -> AdaptiveState:
    """Start adapting from ``step_size``."""
    return AdaptiveState(state, dual_averaging_init(jnp.asarray(step_size)))


def current_step_size(state: AdaptiveState, num_adapt) -> Float[Array, ""]:
    """The step size of the next transition: the iterate while adapting, then its average."""
    da = state.da
    adapting = da.count < num_adapt
    return jnp.exp(jnp.where(adapting, da.log_step_size, da.log_step_size_avg))


def final_step_size(state: AdaptiveState) -> Float[Array, ""]:
    """The adapted step size (the dual-averaging iterate average)."""
    return dual_averaging_final(state.da)


def adaptive_kernel(step: Callable) -> Callable:
    """Wrap ``step(key, state, params) -> (state, info)`` (``info.accept_prob`` the
    Metropolis acceptance) into ``step(key, AdaptiveState, AdaptiveParams)``."""

    def adaptive_step(key, state: AdaptiveState, params: AdaptiveParams):
        adapting = state.da.count < params.num_adapt
        step_size = current_step_size(state, params.num_adapt)
        inner = params.params._replace(step_size=step_size.astype(state.da.log_step_size.dtype))
        new, info = step(key, state.state, inner)
        da = dual_averaging_update(state.da, info.accept_prob, params.target_accept)
        da = jax.tree.map(lambda a, b: jnp.where(adapting, a, b), da, state.da)
        return AdaptiveState(new, da), info

    return adaptive_step


def search_kernel(step: Callable) -> Callable:
    """``step(key, AdaptiveState, AdaptiveParams) -> (AdaptiveState, step_size)``: one
    doubling/halving search from the current iterate; dual averaging restarts there."""

    def search(key, state: AdaptiveState, params: AdaptiveParams):
        start = params.params._replace(step_size=jnp.exp(state.da.log_step_size))
        step_size = kernel_step_size_search(key, step, state.state, start)
        return AdaptiveState(state.state, dual_averaging_init(step_size)), step_size

    return search
