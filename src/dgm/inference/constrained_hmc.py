"""Constrained HMC on the manifold {u : G(u) = y} with a geodesic integrator.

The transition is the one the paper's experiments ran: full momentum refresh in the
tangent space, a random inclusive number of steps, and per step ``num_geodesic_steps``
position sub-steps (quasi-Newton projection anchored at the sub-step's start, momentum
from the projected finite difference, a reversibility check) between merged kicks. Any
projection failure, failed reversibility check or divergence rejects the proposal and
is flagged in :class:`CHMCInfo`; nothing raises inside ``step``.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS; Leimkuhler & Matthews (2016) for the geodesic integrator;
    Zappa, Holmes-Cerfon & Goodman (2018) for the reversibility check.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PyTree

from dgm.inference.manifold import (
    ManifoldSystem,
    factor_is_finite,
    project_onto_manifold,
    project_tangent,
)


class CHMCState(NamedTuple):
    """Position on the manifold with its cached Jacobian, Gram factor, potential and gradient."""

    position: Float[Array, " dim"]
    jac: Float[Array, "obs dim"]
    chol: PyTree  # dense lower Cholesky factor of J Jᵀ, or a structured Gram factor
    potential: Float[Array, ""]
    potential_grad: Float[Array, " dim"]


class CHMCInfo(NamedTuple):
    accept_prob: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    is_divergent: Bool[Array, ""]
    projection_failed: Bool[Array, ""]
    is_irreversible: Bool[Array, ""]
    energy_error: Float[Array, ""]
    num_steps: Int[Array, ""]
    constraint_residual: Float[Array, ""]  # max |G(u) - y| at the state after the step


class TrajectoryState(NamedTuple):
    position: Float[Array, " dim"]
    momentum: Float[Array, " dim"]
    jac: Float[Array, "obs dim"]
    chol: PyTree  # dense lower Cholesky factor of J Jᵀ, or a structured Gram factor
    potential: Float[Array, ""]
    potential_grad: Float[Array, " dim"]
    projection_failed: Bool[Array, ""]
    is_irreversible: Bool[Array, ""]


def init(system: ManifoldSystem, position: Float[Array, " dim"]) -> CHMCState:
    """State at ``position`` (which must already lie on the manifold)."""
    phi, grad, jac, chol = system.potential_and_grad(position)
    return CHMCState(position, jac, chol, phi, grad)


def build_geodesic_step(system: ManifoldSystem, tol: float, max_iters: int, check_reverse: bool):
    """One geodesic sub-step ``(traj, y, h) -> traj`` (position move, no kick)."""

    def substep(t: TrajectoryState, y, h) -> TrajectoryState:
        fwd = project_onto_manifold(
            system, t.position + h * t.momentum, y, t.jac, t.chol, tol, max_iters
        )
        u1 = fwd.position
        jac1, chol1 = system.cache(u1)
        p1 = project_tangent((u1 - t.position) / h, jac1, chol1)
        failed = ~fwd.converged | ~factor_is_finite(chol1)
        irreversible = jnp.asarray(False)
        if check_reverse:
            rev = project_onto_manifold(system, u1 - h * p1, y, jac1, chol1, tol, max_iters)
            diff = t.position - rev.position
            failed = failed | ~rev.converged
            irreversible = (jnp.max(jnp.abs(t.jac @ diff)) > tol) | (
                jnp.max(jnp.abs(diff)) > jnp.sqrt(tol)
            )
        return t._replace(
            position=u1,
            momentum=p1,
            jac=jac1,
            chol=chol1,
            projection_failed=t.projection_failed | failed,
            is_irreversible=t.is_irreversible | (irreversible & ~failed),
        )

    return substep


def build_trajectory(
    system: ManifoldSystem,
    num_geodesic_steps: int = 3,
    tol: float = 1e-8,
    max_iters: int = 100,
    check_reverse: bool = True,
):
    """``trajectory(traj, y, step_size, num_steps) -> traj``: the whole integration.

    Half kick, then ``num_steps`` × (``num_geodesic_steps`` sub-steps, kick), where every
    kick but the last is a merged full kick; each kick is followed by the tangent
    projection. The loop stops early once a sub-step fails.
    """
    substep = build_geodesic_step(system, tol, max_iters, check_reverse)

    def kick(t: TrajectoryState, eps) -> TrajectoryState:
        p = project_tangent(t.momentum - eps * t.potential_grad, t.jac, t.chol)
        return t._replace(momentum=p)

    def trajectory(t: TrajectoryState, y, step_size, num_steps) -> TrajectoryState:
        h = step_size / num_geodesic_steps
        t = kick(t, 0.5 * step_size)

        def cond(carry):
            s, t = carry
            return (s < num_steps) & ~t.projection_failed & ~t.is_irreversible

        def body(carry):
            s, t = carry
            t = jax.lax.fori_loop(0, num_geodesic_steps, lambda _, t: substep(t, y, h), t)
            phi = system.potential(t.position, t.chol)
            grad = system.potential_grad(t.position, t.jac, t.chol)
            t = t._replace(potential=phi, potential_grad=grad)
            t = kick(t, jnp.where(s == num_steps - 1, 0.5, 1.0) * step_size)
            return s + 1, t

        _, t = jax.lax.while_loop(cond, body, (jnp.asarray(0), t))
        return t

    return trajectory


def build_kernel(
    system: ManifoldSystem,
    num_geodesic_steps: int = 3,
    tol: float = 1e-8,
    max_iters: int = 100,
    check_reverse: bool = True,
    divergence_threshold: float = 1000.0,
) -> Callable:
    """Build the constrained HMC transition.

    Returns:
        ``step(key, state, y, step_size, num_steps_min, num_steps_max) -> (CHMCState,
        CHMCInfo)`` for one chain; the step count is uniform on the inclusive range.
    """
    trajectory = build_trajectory(system, num_geodesic_steps, tol, max_iters, check_reverse)

    def step(key, state: CHMCState, y, step_size, num_min, num_max):
        key_mom, key_steps, key_accept = jax.random.split(key, 3)
        num_steps = jax.random.randint(key_steps, (), num_min, num_max + 1)
        noise = jax.random.normal(key_mom, state.position.shape, state.position.dtype)
        p0 = project_tangent(noise, state.jac, state.chol)
        t0 = TrajectoryState(
            state.position,
            p0,
            state.jac,
            state.chol,
            state.potential,
            state.potential_grad,
            jnp.asarray(False),
            jnp.asarray(False),
        )
        t1 = trajectory(t0, y, step_size, num_steps)
        h0 = state.potential + 0.5 * jnp.dot(p0, p0)
        h1 = t1.potential + 0.5 * jnp.dot(t1.momentum, t1.momentum)
        energy_error = h1 - h0
        failed = t1.projection_failed | t1.is_irreversible
        is_divergent = ~failed & (
            ~jnp.isfinite(energy_error) | (energy_error > divergence_threshold)
        )
        ok = ~failed & ~is_divergent
        accept_prob = jnp.where(
            ok, jnp.exp(jnp.minimum(0.0, -jnp.where(ok, energy_error, 0.0))), 0.0
        )
        is_accepted = jax.random.uniform(key_accept, dtype=accept_prob.dtype) < accept_prob
        proposal = CHMCState(t1.position, t1.jac, t1.chol, t1.potential, t1.potential_grad)
        new = jax.tree.map(lambda a, b: jnp.where(is_accepted, a, b), proposal, state)
        residual = jnp.max(jnp.abs(system.constraint(new.position, y)))
        info = CHMCInfo(
            accept_prob,
            is_accepted,
            is_divergent,
            t1.projection_failed,
            t1.is_irreversible & ~t1.projection_failed,
            energy_error,
            num_steps,
            residual,
        )
        return new, info

    return step
