"""Dynamic constrained HMC: no-U-turn trajectories on the manifold {u : G(u) = y}.

The tree building of NUTS (:func:`dgm.inference.dynamic.sample_trajectory`) with one step
of the constrained geodesic integrator of :mod:`dgm.inference.constrained_hmc` as the leaf
step (half kick, ``num_geodesic_steps`` projected position sub-steps with the
reversibility check, half kick, every kick projected onto the tangent space). The U-turn
criterion reads the ambient momenta (identity mass: v = p, tangent at each leaf). A leaf
whose projection failed or whose reversibility check failed, or whose energy error exceeds
the threshold, discards its subtree and ends the trajectory; the next state is drawn from
the tree built before it, and each failure kind is flagged in :class:`DCHMCInfo`. Since
these failures depend only on the step taken, the sampler stays reversible with them.

The tunables are :class:`DCHMCParams`: the step size (an array; adapt it with
:func:`dgm.inference.adaptation.warmup` and ``metric="none"``) and the maximum tree depth
(a Python int).

References:
    Graham & Storkey (2017), AISTATS; Hoffman & Gelman (2014), JMLR 15; Zappa,
    Holmes-Cerfon & Goodman (2018), "Monte Carlo on manifolds: sampling densities and
    integrating functions", CPAM (reversibility check); Mici 0.4's
    ``DynamicMultinomialHMC`` with ``ConstrainedLeapfrogIntegrator`` (the same scheme, in
    a Python loop).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.inference.base import Kernel
from dgm.inference.constrained_hmc import CHMCState, TrajectoryState, build_trajectory, init
from dgm.inference.dynamic import LeafFns, check_max_depth, depth_and_capacity, sample_trajectory
from dgm.inference.manifold import ManifoldSystem, project_tangent

__all__ = ["DCHMCInfo", "DCHMCParams", "build_kernel", "dynamic_constrained_hmc", "init"]


class DCHMCParams(NamedTuple):
    """Tunables of dynamic constrained HMC: the integrator step and the most doublings."""

    step_size: Float[ArrayLike, ""]
    max_depth: int = 10


class DCHMCInfo(NamedTuple):
    """The fields of :class:`~dgm.inference.constrained_hmc.CHMCInfo` (so the same
    summaries and ArviZ statistics apply) plus the tree depth."""

    accept_prob: Float[Array, ""]  # mean Metropolis probability over the leaves (0: failed)
    is_accepted: Bool[Array, ""]  # the chain moved
    is_divergent: Bool[Array, ""]  # an energy error above the threshold ended the trajectory
    projection_failed: Bool[Array, ""]  # ... a projection that did not converge
    is_irreversible: Bool[Array, ""]  # ... a failed reversibility check
    energy_error: Float[Array, ""]  # H(new) − H(start)
    energy: Float[Array, ""]  # H(new), with its momentum (ArviZ's `energy`)
    num_steps: Int[Array, ""]  # integrator steps
    constraint_residual: Float[Array, ""]  # max |G(u) − y| at the new state
    tree_depth: Int[Array, ""]


def geodesic_leaves(
    system: ManifoldSystem,
    y_obs: Float[Array, " obs"],
    num_geodesic_steps: int,
    tol: float,
    max_iters: int,
    check_reverse: bool,
) -> LeafFns:
    """:class:`~dgm.inference.dynamic.LeafFns` of one constrained integrator step (spec §2.2
    with one step): the leaf is a :class:`~dgm.inference.constrained_hmc.TrajectoryState`
    whose flags describe the step that made it; failure kinds (projection, reversibility)."""
    trajectory = build_trajectory(system, y_obs, num_geodesic_steps, tol, max_iters, check_reverse)
    false = jnp.asarray(False)

    def step(leaf: TrajectoryState, eps) -> TrajectoryState:
        leaf = leaf._replace(projection_failed=false, is_irreversible=false)
        return trajectory(leaf, eps, 1)

    def failures(leaf: TrajectoryState) -> Bool[Array, " 2"]:
        return jnp.stack([leaf.projection_failed, leaf.is_irreversible & ~leaf.projection_failed])

    return LeafFns(
        step=step,
        energy=lambda leaf: leaf.potential + 0.5 * jnp.dot(leaf.momentum, leaf.momentum),
        velocity=lambda p: p,
        failures=failures,
    )


def build_kernel(
    system: ManifoldSystem,
    y_obs: Float[Array, " obs"],
    num_geodesic_steps: int = 3,
    tol: float = 1e-8,
    max_iters: int = 100,
    check_reverse: bool = True,
    divergence_threshold: float = 1000.0,
    max_depth_bound: int = 10,
) -> Callable:
    """Build the dynamic constrained HMC transition on ``system.generator(u) = y_obs``.

    Args:
        max_depth_bound: the U-turn stack's size when ``params.max_depth`` arrives traced
            (as :func:`dgm.inference.nuts.build_kernel`); a Python int depth is used as is.

    Returns:
        ``step(key, state: CHMCState, params: DCHMCParams) -> (CHMCState, DCHMCInfo)``.
    """
    fns = geodesic_leaves(system, y_obs, num_geodesic_steps, tol, max_iters, check_reverse)
    check_max_depth(max_depth_bound)

    def step(key, state: CHMCState, params: DCHMCParams) -> tuple[CHMCState, DCHMCInfo]:
        max_depth, capacity = depth_and_capacity(params.max_depth, max_depth_bound)
        key_mom, key_tree = jax.random.split(key)
        step_size = jnp.asarray(params.step_size, state.position.dtype)
        # p ← Π_u(n), n ~ N(0, I): a full momentum refresh in the tangent space
        noise = jax.random.normal(key_mom, state.position.shape, state.position.dtype)
        p0 = project_tangent(noise, state.jac, state.gram_factor)
        f = jnp.asarray(False)
        start = TrajectoryState(
            state.position, p0, state.jac, state.gram_factor, state.potential,
            state.potential_grad, f, f,
        )  # fmt: skip
        leaf, tree = sample_trajectory(
            key_tree, fns, start, step_size, max_depth, divergence_threshold, capacity
        )
        new = CHMCState(leaf.position, leaf.jac, leaf.gram_factor, leaf.potential,
                        leaf.potential_grad)  # fmt: skip
        info = DCHMCInfo(
            tree.accept_prob,
            jnp.any(new.position != state.position),
            tree.is_divergent,
            tree.failures[0],
            tree.failures[1],
            tree.energy_error,
            fns.energy(leaf),
            tree.num_steps,
            jnp.max(jnp.abs(system.constraint(new.position, y_obs))),
            tree.tree_depth,
        )
        return new, info

    return step


def dynamic_constrained_hmc(
    system: ManifoldSystem,
    y_obs: Any,
    step_size: ArrayLike,
    max_depth: Any = 10,
    num_geodesic_steps: int = 3,
    tol: float = 1e-8,
    max_iters: int = 100,
    check_reverse: bool = True,
    divergence_threshold: float = 1000.0,
) -> Kernel:
    """Dynamic constrained HMC with validated default tunables: ``Kernel(init, step, params)``.

    Args:
        system: the constraint system (generator, dimensions, Gram factor).
        y_obs: the observed output the manifold is conditioned on.
        step_size: integrator step ``dt`` (> 0).
        max_depth: the most tree doublings per transition (an int ≥ 1).
        num_geodesic_steps, tol, max_iters, check_reverse, divergence_threshold: as
            :func:`dgm.inference.constrained_hmc.build_kernel`.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from dgm.inference.manifold import ManifoldSystem
        >>> system = ManifoldSystem(lambda u: jnp.sqrt(u @ u)[None], 3, 1)
        >>> kernel = dynamic_constrained_hmc(system, jnp.ones(1), step_size=0.5)
        >>> state = kernel.init(jnp.array([0.0, 0.6, 0.8]))
        >>> state, info = kernel.step(jax.random.key(0), state, kernel.params)
    """
    check_max_depth(max_depth)
    if np.ndim(step_size) != 0 or not float(np.asarray(step_size)) > 0:
        raise ValueError(f"`step_size` must be a positive scalar; got {step_size!r}")
    y = jnp.asarray(y_obs)
    step = build_kernel(
        system, y, num_geodesic_steps, tol, max_iters, check_reverse, divergence_threshold
    )
    params = DCHMCParams(np.asarray(step_size, np.float64), max_depth)
    return Kernel(lambda position: init(system, jnp.asarray(position)), step, params)
