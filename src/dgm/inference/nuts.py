"""The No-U-Turn Sampler: HMC whose trajectory length is chosen per transition.

The kernel follows the house pattern (see :mod:`dgm.inference.hmc`): pure ``init`` and
``step(key, state, params)``, NamedTuple state, info and params. The tunables are
:class:`NUTSParams`: the step size and inverse mass matrix are arrays (adaptation changes
them without recompiling), the maximum tree depth a Python int (a compile-time constant:
it sizes the U-turn checkpoint stack). The tree building is
:func:`dgm.inference.dynamic.sample_trajectory` with leapfrog leaves.

Example:
    >>> import jax, jax.numpy as jnp
    >>> kernel = nuts(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5)
    >>> state = kernel.init(jnp.zeros(3))
    >>> state, info = kernel.step(jax.random.key(0), state, kernel.params)

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15; Betancourt (2017),
    arXiv:1701.02434.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.inference.base import Kernel
from dgm.inference.dynamic import LeafFns, check_max_depth, depth_and_capacity, sample_trajectory
from dgm.inference.hmc import HMCState, checked_init, init
from dgm.inference.integrators import IntegratorState, leapfrog
from dgm.inference.metrics import (
    InverseMass,
    check_inverse_mass_matrix,
    kinetic_energy,
    sample_momentum,
    velocity,
)

__all__ = ["NUTSInfo", "NUTSParams", "build_kernel", "init", "nuts"]


class NUTSParams(NamedTuple):
    """Tunables of NUTS. ``max_depth`` must be a Python int (at most ``2^max_depth − 1``
    leapfrog steps per transition); the other two are arrays."""

    step_size: Float[ArrayLike, ""]
    inverse_mass_matrix: InverseMass  # a vector (diagonal) or a matrix (dense)
    max_depth: int = 10


class NUTSInfo(NamedTuple):
    accept_prob: Float[Array, ""]  # mean Metropolis probability over the trajectory
    is_divergent: Bool[Array, ""]
    energy_error: Float[Array, ""]  # H(new) − H(start)
    energy: Float[Array, ""]  # H(new)
    tree_depth: Int[Array, ""]
    num_steps: Int[Array, ""]  # leapfrog steps (gradient evaluations)


def leapfrog_leaves(log_density_fn: Callable, inverse_mass_matrix: InverseMass) -> LeafFns:
    """:class:`~dgm.inference.dynamic.LeafFns` of the leapfrog integrator."""

    def energy(leaf: IntegratorState):
        return -leaf.log_density + kinetic_energy(leaf.momentum, inverse_mass_matrix)

    return LeafFns(
        step=lambda leaf, eps: leapfrog(leaf, eps, log_density_fn, inverse_mass_matrix),
        energy=energy,
        velocity=lambda p: velocity(p, inverse_mass_matrix),
        failures=lambda leaf: jnp.zeros((0,), bool),
    )


def build_kernel(
    log_density_fn: Callable, divergence_threshold: float = 1000.0, max_depth_bound: int = 10
) -> Callable:
    """Build the NUTS transition on ``log_density_fn``.

    Args:
        log_density_fn: log target density of one position vector.
        divergence_threshold: energy error that marks a leaf divergent.
        max_depth_bound: used only when ``params.max_depth`` arrives traced (e.g. under
            ``jax.jit(step)`` with the params as an argument): the static size of the
            U-turn stack, and the cap on the traced depth. A Python int
            ``params.max_depth`` (as :class:`~dgm.inference.base.ChainRunner` and
            :func:`~dgm.inference.adaptation.warmup` keep it) is used as is.

    Returns:
        ``step(key, state: HMCState, params: NUTSParams) -> (HMCState, NUTSInfo)``.

    Raises:
        ValueError: (when traced) for a ``params.max_depth`` Python int below 1.
    """
    check_max_depth(max_depth_bound)

    def step(key, state: HMCState, params: NUTSParams) -> tuple[HMCState, NUTSInfo]:
        max_depth, capacity = depth_and_capacity(params.max_depth, max_depth_bound)
        key_mom, key_tree = jax.random.split(key)
        step_size = jnp.asarray(params.step_size, state.position.dtype)
        imm = jnp.asarray(params.inverse_mass_matrix, state.position.dtype)
        p0 = sample_momentum(key_mom, imm, state.position)
        start = IntegratorState(state.position, p0, state.log_density, state.log_density_grad)
        fns = leapfrog_leaves(log_density_fn, imm)
        leaf, tree = sample_trajectory(
            key_tree, fns, start, step_size, max_depth, divergence_threshold, capacity
        )
        new = HMCState(leaf.position, leaf.log_density, leaf.log_density_grad)
        info = NUTSInfo(
            tree.accept_prob,
            tree.is_divergent,
            tree.energy_error,
            fns.energy(leaf),
            tree.tree_depth,
            tree.num_steps,
        )
        return new, info

    return step


def nuts(
    log_density_fn: Callable,
    step_size: ArrayLike = 1.0,
    inverse_mass_matrix: ArrayLike | None = None,
    max_depth: Any = 10,
    divergence_threshold: float = 1000.0,
) -> Kernel:
    """NUTS with validated default tunables: ``Kernel(init, step, params)``.

    Args:
        log_density_fn: log target density of one position vector.
        step_size: leapfrog step size (> 0); adapt it with
            :func:`dgm.inference.adaptation.warmup`.
        inverse_mass_matrix: vector (diagonal) or matrix (dense); ``None`` for the
            identity (the scalar 1 until ``warmup`` shapes it).
        max_depth: the most tree doublings per transition (an int ≥ 1).
        divergence_threshold: energy error that marks a leaf divergent.

    Raises:
        ValueError: for a non-positive step size, a ``max_depth`` below 1 or not an int,
            or an inverse mass matrix of the wrong rank.
    """
    check_max_depth(max_depth)
    if jnp.ndim(step_size) != 0 or not float(jnp.asarray(step_size)) > 0:
        raise ValueError(f"`step_size` must be a positive scalar; got {step_size!r}")
    if inverse_mass_matrix is not None:
        shape = jnp.shape(inverse_mass_matrix)
        check_inverse_mass_matrix(inverse_mass_matrix, shape[0] if shape else 0)
        imm = jnp.asarray(inverse_mass_matrix)
    else:
        imm = jnp.ones(())
    params = NUTSParams(jnp.asarray(step_size), imm, max_depth)

    init_fn = checked_init(log_density_fn, inverse_mass_matrix)
    return Kernel(init_fn, build_kernel(log_density_fn, divergence_threshold), params)
