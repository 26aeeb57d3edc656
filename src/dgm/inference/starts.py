"""Starting points in the typical set of a generator's manifold, not in a far-off mode.

A Gauss–Newton solve from a prior draw lands on the manifold G(u) = y, but where it lands
depends on the draw: minimum-norm steps move whichever inputs the outputs are most
sensitive to, and can end in a secondary mode far below the main one (a chain started
there may never leave). :func:`typical_starts` therefore makes several candidates per
chain, each a prior draw projected onto the manifold, moves each uphill on the manifold's
log-density

    ℓ(u) = log N(u; 0, I) − ½ log det(J Jᵀ)   (−φ(u) of the constrained sampler)

by projected gradient ascent (a tangent step, then a Gauss–Newton retraction, the step
halved when ℓ does not increase), and keeps only candidates whose final ℓ is within
``agree_nats`` of the best one. Chains start at a random choice among those.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS, §3 (the manifold density).
    Absil, Mahony & Sepulchre (2008), "Optimization Algorithms on Matrix Manifolds",
    §4.2 (gradient ascent with a retraction, Armijo-type step control).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from dgm.inference.manifold import ManifoldSystem, gauss_newton, project_tangent


class StartsInfo(NamedTuple):
    """What :func:`typical_starts` did, per candidate and overall."""

    log_density: Float[Array, " candidates"]  # ℓ at each moved candidate (−inf: off the manifold)
    num_agreeing: Int[Array, ""]  # candidates within ``agree_nats`` of the best
    chosen: Int[Array, " chains"]  # the candidate index of each chain's start


def default_agree_nats(manifold_dim: int) -> float:
    """Default width of the kept band of ℓ: 1 + √(d/2) nats on a d-dimensional manifold.

    Near a mode ℓ is about a quadratic in d directions, so over the posterior it has
    standard deviation about √(d/2) (a Gaussian approximation): a candidate more than that
    (plus one nat) below the best one sits in a mode that holds a small part of the mass
    (a mode Δ nats lower and equally wide holds e^(−Δ) of the main one's).
    """
    d = max(int(manifold_dim), 1)
    return 1.0 + (0.5 * d) ** 0.5


def _residual(system: ManifoldSystem, u, y):
    return jnp.max(jnp.abs(system.constraint(u, y)))


def _log_density(system: ManifoldSystem, u, y, tol):
    """ℓ(u), or −inf off the manifold (residual above ``tol``) or where it is not finite."""
    _, factor = system.cache(u)
    value = -system.potential(u, factor)
    ok = (_residual(system, u, y) <= tol) & jnp.isfinite(value) & jnp.all(jnp.isfinite(u))
    return jnp.where(ok, value, -jnp.inf)


def move_uphill(
    system: ManifoldSystem,
    u: Float[Array, " dim"],
    y: Float[Array, " obs"],
    num_steps: int,
    tol: float,
    step_size: float = 0.5,
) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
    """``num_steps`` of projected gradient ascent on ℓ from a point ``u`` on the manifold.

    Each step tries u' = GN(u + η Π_u ∇ℓ(u)) (Π_u: the tangent projection; GN: the
    Gauss–Newton retraction); it is taken if u' is on the manifold and ℓ(u') > ℓ(u), and
    η doubles (up to 8), else η halves. Returns the final point and ℓ there.
    """

    def body(_, carry):
        u, value, eta = carry
        jac, factor = system.cache(u)
        grad = -system.potential_grad(u, jac, factor)
        direction = project_tangent(grad, jac, factor)
        trial = gauss_newton(system, u + eta * direction, y, 0.01 * tol, 20)
        trial_value = _log_density(system, trial, y, tol)
        better = trial_value > value
        u = jnp.where(better, trial, u)
        value = jnp.where(better, trial_value, value)
        eta = jnp.clip(jnp.where(better, 2.0 * eta, 0.5 * eta), 1e-8, 8.0)
        return u, value, eta

    init = (u, _log_density(system, u, y, tol), jnp.asarray(step_size, u.dtype))
    u, value, _ = jax.lax.fori_loop(0, num_steps, body, init)
    return u, value


def typical_starts(
    system: ManifoldSystem,
    y: Float[Array, " obs"],
    key,
    num_chains: int,
    num_candidates: int = 4,
    num_uphill: int = 30,
    tol: float = 1e-8,
    agree_nats: float | None = None,
) -> tuple[Float[Array, "chains dim"], StartsInfo]:
    """``num_chains`` starting points on G(u) = y near the manifold's main mode.

    Args:
        system: the constraint system (its generator, Jacobian and potential).
        y: the observed output.
        key: PRNG key.
        num_chains: starting points to return.
        num_candidates: prior draws per chain (so ``num_chains * num_candidates`` in all).
        num_uphill: gradient-ascent steps per candidate (:func:`move_uphill`).
        tol: the manifold tolerance on ``max |G(u) − y|``.
        agree_nats: the band below the best ℓ in which candidates are kept; by default
            :func:`default_agree_nats` of the manifold dimension.

    Returns:
        The starting points (a candidate may start several chains when fewer than
        ``num_chains`` agree) and a :class:`StartsInfo`. Every candidate off the manifold
        gives ``num_agreeing = 0`` (the caller raises).
    """
    if agree_nats is None:
        agree_nats = default_agree_nats(system.input_dim - system.output_dim)
    system = system.at(y)
    num = num_chains * num_candidates
    key_prior, key_pick = jax.random.split(key)
    u0 = jax.random.normal(key_prior, (num, system.input_dim), y.dtype)

    def one(u):
        u = gauss_newton(system, u, y, 1e-3 * tol, 100)
        return move_uphill(system, u, y, num_uphill, tol)

    u, value = jax.vmap(one)(u0)
    best = jnp.max(value)
    agree = jnp.isfinite(value) & (value >= best - agree_nats)
    # a random order of the agreeing candidates first, then cycle through them
    score = jnp.where(agree, jax.random.uniform(key_pick, (num,)), 2.0)
    order = jnp.argsort(score)
    num_agreeing = jnp.sum(agree)
    chosen = order[jnp.arange(num_chains) % jnp.maximum(num_agreeing, 1)]
    return u[chosen], StartsInfo(value, num_agreeing, chosen)


class TypicalStarts:
    """:func:`typical_starts` compiled once per constraint system (``y`` is traced, so a
    new observation of the same shape reuses it); keeps the last :class:`StartsInfo`."""

    def __init__(self, system: ManifoldSystem, num_candidates: int = 4, num_uphill: int = 30):
        self.system = system
        self.last_info: StartsInfo | None = None

        def run(y, key, num_chains, tol):
            return typical_starts(system, y, key, num_chains, num_candidates, num_uphill, tol)

        self._run = jax.jit(run, static_argnums=(2, 3))
        many = jax.vmap(run, (0, 0, None, None))
        self._many = jax.jit(many, static_argnums=(2, 3))

    def __call__(self, y, key, num_chains: int, tol: float = 1e-8) -> Float[Array, "chains dim"]:
        """Starting points for ``num_chains`` chains on G(u) = y (float64)."""
        with jax.enable_x64(True):
            u, info = self._run(jnp.asarray(y, jnp.float64), key, int(num_chains), float(tol))
        self.last_info = info
        return u

    def many(self, ys, keys, num_chains: int, tol: float = 1e-8) -> Float[Array, "n chains dim"]:
        """:meth:`__call__` for each row of ``ys`` with its key, in one batched call."""
        with jax.enable_x64(True):
            ys = jnp.asarray(ys, jnp.float64)
            u, info = self._many(ys, keys, int(num_chains), float(tol))
        self.last_info = info
        return u
