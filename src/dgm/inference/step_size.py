"""Initial step sizes: double or halve until one step's acceptance crosses 1/2.

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15, Algorithm 4.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.inference.integrators import IntegratorState, leapfrog
from dgm.inference.metrics import InverseMass, kinetic_energy, sample_momentum


def _double_or_halve(crosses: Callable, first_above, eps0, max_iters: int):
    """Move ``eps0`` by factors of 2 (up if ``first_above``) until ``crosses(eps, direction)``;
    return the last size on the accepting side."""
    direction = jnp.where(first_above, 1.0, -1.0)

    def cond(carry):
        i, eps = carry
        return (i < max_iters) & ~crosses(eps, direction)

    def body(carry):
        i, eps = carry
        return i + 1, eps * 2.0**direction

    _, eps = jax.lax.while_loop(cond, body, (jnp.asarray(0), eps0))
    # On doubling, ``eps`` is the first size that fails; step back to the last that passed.
    return jnp.where(direction > 0, eps / 2.0, eps)


def find_reasonable_step_size(
    key: PRNGKeyArray,
    position: Float[Array, " dim"],
    log_density_fn: Callable,
    inverse_mass_matrix: InverseMass,
    step_size: Float[Array, ""],
    max_iters: int = 100,
) -> Float[Array, ""]:
    """Double or halve ``step_size`` until one leapfrog step's acceptance crosses 1/2.

    References:
        Hoffman & Gelman (2014), JMLR 15, Algorithm 4.
    """
    p0 = sample_momentum(key, inverse_mass_matrix, position)
    logp, grad = jax.value_and_grad(log_density_fn)(position)
    h0 = -logp + kinetic_energy(p0, inverse_mass_matrix)
    start = IntegratorState(position, p0, logp, grad)

    def log_accept(eps):
        end = leapfrog(start, eps, log_density_fn, inverse_mass_matrix)
        delta = h0 + end.log_density - kinetic_energy(end.momentum, inverse_mass_matrix)
        return jnp.where(jnp.isfinite(delta), delta, -jnp.inf)

    def crosses(eps, direction):
        return direction * log_accept(eps) <= direction * jnp.log(0.5)

    first_above = log_accept(step_size) > jnp.log(0.5)
    return _double_or_halve(crosses, first_above, step_size, max_iters)


def kernel_step_size_search(
    key: PRNGKeyArray, step: Callable, state: Any, params: Any, max_iters: int = 100
) -> Float[Array, ""]:
    """Double or halve ``params.step_size`` until one kernel step's acceptance crosses 1/2.

    The same key is used at every size; a non-finite acceptance (a failed step) counts as
    0, so failures read as a step size too large.
    """

    def accept(eps):
        _, info = step(key, state, params._replace(step_size=eps))
        return jnp.where(jnp.isfinite(info.accept_prob), info.accept_prob, 0.0)

    def crosses(eps, direction):
        return direction * accept(eps) <= direction * 0.5

    eps0 = params.step_size
    return _double_or_halve(crosses, accept(eps0) > 0.5, eps0, max_iters)
