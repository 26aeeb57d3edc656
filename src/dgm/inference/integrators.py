"""Deterministic integrators: ``(state, step_size, ...) -> state``; no randomness."""

from collections.abc import Callable
from typing import NamedTuple

import jax
from jaxtyping import Array, Float

from dgm.inference.metrics import InverseMass, velocity


class IntegratorState(NamedTuple):
    position: Float[Array, " dim"]
    momentum: Float[Array, " dim"]
    log_density: Float[Array, ""]
    log_density_grad: Float[Array, " dim"]


def leapfrog(
    state: IntegratorState,
    step_size: Float[Array, ""],
    log_density_fn: Callable,
    inverse_mass_matrix: InverseMass,
) -> IntegratorState:
    """One velocity-Verlet (kick-drift-kick) step; one gradient evaluation.

    References:
        Neal (2011), "MCMC using Hamiltonian dynamics", Handbook of MCMC, §5.2.3.
    """
    p = state.momentum + 0.5 * step_size * state.log_density_grad
    q = state.position + step_size * velocity(p, inverse_mass_matrix)
    logp, grad = jax.value_and_grad(log_density_fn)(q)
    p = p + 0.5 * step_size * grad
    return IntegratorState(q, p, logp, grad)
