"""Dynamic (no-U-turn) trajectories: one iterative tree builder for any leaf step.

A trajectory grows by doubling: at depth ``d`` a new subtree of ``2^d`` integrator steps
is built forwards or backwards in time (a fair coin) from the matching end. The builder is
parameterised by :class:`LeafFns` (one signed integrator step, the energy, the velocity
M⁻¹p, and the integrator's own failure flags), so the same code serves Euclidean NUTS
(:mod:`dgm.inference.nuts`, leapfrog leaves) and dynamic constrained HMC
(:mod:`dgm.inference.dynamic_chmc`, geodesic-integrator leaves).

- Sampling is multinomial: leaf ``i`` has weight ``exp(H₀ − Hᵢ)``. Inside a subtree each
  new leaf replaces the subtree's proposal with probability ``wᵢ / Σ_{j≤i} wⱼ``
  (progressive sampling; it leaves the proposal distributed ∝ w over the subtree, as the
  recursive half-by-half rule does); at the top a finished subtree's proposal replaces the
  trajectory's with probability ``min(1, W_new / W_old)`` (biased progressive sampling).
- Termination: the generalised U-turn criterion with ρ the momentum sum of a (sub)tree and
  v = M⁻¹p at its ends, ``v_first·ρ > 0 and v_last·ρ > 0``, checked at every merge of two
  halves, plus Stan's two extra checks across the adjoining ends of the halves (each half
  extended by the neighbouring leaf of the other). The criterion is symmetric in its two
  ends, so it reads the same in build order whichever way the subtree grows.
- The subtree loop is a while loop over leaves; the U-turn checks of the subtrees a leaf
  completes use a stack of at most ``max_depth`` summaries (ρ, and p at both ends) of the
  left halves still waiting for their right sibling: a binary counter over the leaf index
  (bit ``j`` of the index set: the level-``j`` subtree just completed is a right child,
  merge it with the stored left one; bit clear: store it). Memory is O(max_depth).
- Both loops (doublings, leaves) are :func:`~dgm.inference.masked_loop.masked_while_loop`:
  with chains under ``vmap`` a finished chain's state is masked by the body (the stack by
  a dropped scatter) instead of ``vmap``'s select over the whole carry at every leaf.
- Failure: a leaf whose integrator step failed (a flag of :attr:`LeafFns.failures`) or
  whose energy error exceeds the divergence threshold (or is not finite) ends the subtree;
  the whole subtree is discarded, the trajectory stops, and the next state is drawn from
  the tree built before it. A discarded subtree's leaves count in the acceptance statistic
  with probability 0 (so dual averaging shrinks the step); a subtree that turned keeps its
  leaves' Metropolis probabilities (Stan).

References:
    Hoffman & Gelman (2014), "The No-U-Turn Sampler", JMLR 15; Betancourt (2017), "A
    conceptual introduction to Hamiltonian Monte Carlo", arXiv:1701.02434 (multinomial
    sampling, the generalised criterion); the Stan Reference Manual (the extra checks).
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray, UInt32

from dgm.config import is_int
from dgm.inference.masked_loop import masked_while_loop


class LeafFns(NamedTuple):
    """What the tree builder needs from an integrator; a leaf is a pytree with ``momentum``.

    Attributes:
        step: ``(leaf, step_size) -> leaf``: one integrator step; ``step_size`` is negative
            when the tree grows backwards in time.
        energy: ``leaf -> H``, the Hamiltonian.
        velocity: ``p -> M⁻¹ p`` for a momentum vector.
        failures: ``leaf -> Bool[Array, " kinds"]``: the failure flags the step that made
            the leaf raised (e.g. projection, reversibility); a fixed number of kinds.
    """

    step: Callable
    energy: Callable
    velocity: Callable
    failures: Callable


class TreeInfo(NamedTuple):
    """What one dynamic trajectory did (for one chain)."""

    accept_prob: Float[Array, ""]  # mean Metropolis probability over the leaves built
    tree_depth: Int[Array, ""]  # doublings kept (the last subtree, if discarded, excluded)
    num_steps: Int[Array, ""]  # integrator steps taken, the discarded subtree's included
    is_divergent: Bool[Array, ""]  # an energy error above the threshold ended it
    failures: Bool[Array, " kinds"]  # which integrator failure kind ended it
    energy_error: Float[Array, ""]  # H(proposal) − H₀
    is_turning: Bool[Array, ""]  # the U-turn criterion ended it (not max depth, not failure)


class Ends(NamedTuple):
    """A (sub)tree seen by the U-turn criterion: its momentum sum and both ends' momenta
    (velocities v = M⁻¹p are recomputed where needed: storing them made the stack, which
    a batched loop selects over at every leaf, 5/3 as large)."""

    rho: Float[Array, " dim"]
    p_first: Float[Array, " dim"]
    p_last: Float[Array, " dim"]


def no_turn(v_a: Float[Array, "*n dim"], v_b: Float[Array, "*n dim"], rho: Float[Array, "*n dim"]):
    """The generalised no-U-turn criterion: both ends still move along ρ (batched over
    leading axes)."""
    return (jnp.sum(v_a * rho, axis=-1) > 0) & (jnp.sum(v_b * rho, axis=-1) > 0)


def leaf_log_weight(energy_error: Float[Array, ""]) -> Float[Array, ""]:
    """Multinomial log weight of a leaf, ``H₀ − H``."""
    return -energy_error


def is_turning(x: Ends, y: Ends, velocity: Callable) -> Bool[Array, ""]:
    """U-turn of the merge of ``x`` then ``y`` (``y.first`` adjoins ``x.last``), with Stan's
    two checks across the halves; ``velocity(p) = M⁻¹p``. The three criteria run as one
    batched :func:`no_turn` (in the leaf loop: two kernels instead of six)."""
    v = jax.vmap(velocity)(jnp.stack([x.p_first, x.p_last, y.p_first, y.p_last]))
    vx_first, vx_last, vy_first, vy_last = v[0], v[1], v[2], v[3]
    v_a = jnp.stack([vx_first, vx_first, vx_last])
    v_b = jnp.stack([vy_last, vy_first, vy_last])
    # the whole merge, then x extended by y's first leaf, then y extended by x's last
    rho = jnp.stack([x.rho + y.rho, x.rho + y.p_first, y.rho + x.p_last])
    return ~jnp.all(no_turn(v_a, v_b, rho))


def merge(x: Ends, y: Ends) -> Ends:
    return Ends(x.rho + y.rho, x.p_first, y.p_last)


def reverse(e: Ends) -> Ends:
    return Ends(e.rho, e.p_last, e.p_first)


_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry_2x32_unrolled(key, x0, x1):
    """Threefry-2x32 (20 rounds) of the counter ``(x0, x1)`` under ``key`` (two uint32),
    written out round by round: equal bit for bit to ``jax.extend.random.threefry_2x32``,
    which on CPU lowers to a rolled loop (a ``while`` of five iterations: inside the
    per-leaf loop of a trajectory that loop cost more than the rest of the leaf's
    bookkeeping); unrolled, XLA fuses the whole block into one kernel.

    References:
        Salmon, Moraes, Dror & Shaw (2011), "Parallel random numbers: as easy as 1, 2, 3",
        SC'11 (the Threefry-2x32 rounds, rotations and key schedule).
    """
    k0, k1 = key[0], key[1]
    ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(0x1BD11BDA))
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for block in range(5):
        for r in _ROTATIONS[block % 2]:
            x0 = x0 + x1
            x1 = (x1 << jnp.uint32(r)) | (x1 >> jnp.uint32(32 - r))
            x1 = x1 ^ x0
        x0 = x0 + ks[(block + 1) % 3]
        x1 = x1 + ks[(block + 2) % 3] + jnp.uint32(block + 1)
    return x0, x1


def _leaf_uniform(seed: UInt32[Array, " 2"], depth, count) -> Float[Array, ""]:
    """A uniform in (0, 1) for leaf ``count`` of the subtree at ``depth`` (the midpoints of 2^23
    bins, exact in float32: never 0, whose log would take a leaf of any weight, nor 1, which
    would refuse a subtree's first leaf): one Threefry-2x32
    block keyed by ``seed`` (``fold_in`` then ``uniform`` would be two, and each Threefry
    instance in the loop body costs compile time: with the per-leaf and per-doubling draws
    as ``fold_in``/``split``/``uniform``, they made half of the NUTS step's compile time),
    unrolled (:func:`threefry_2x32_unrolled`)."""
    x0 = jnp.asarray(depth).astype(jnp.uint32)
    bits, _ = threefry_2x32_unrolled(seed, x0, jnp.asarray(count).astype(jnp.uint32))
    return ((bits >> 9).astype(jnp.float32) + 0.5) * jnp.float32(2.0**-23)


def _select(pred, a, b):
    return jax.tree.map(lambda x, y: jnp.where(pred, x, y), a, b)


class _Subtree(NamedTuple):
    edge: Any  # the last leaf built
    count: Int[Array, ""]  # leaves built
    ends: Ends  # of all leaves built so far, in build order
    stack: Array  # left halves waiting for their sibling (Ends stacked), by level
    proposal: Any
    log_weight: Float[Array, ""]
    sum_accept: Float[Array, ""]
    turning: Bool[Array, ""]
    divergent: Bool[Array, ""]
    failures: Bool[Array, " kinds"]


class _Tree(NamedTuple):
    left: Any
    right: Any
    ends: Ends  # in time order: first = left end
    proposal: Any
    proposal_energy: Float[Array, ""]
    log_weight: Float[Array, ""]
    depth: Int[Array, ""]
    num_steps: Int[Array, ""]
    sum_accept: Float[Array, ""]
    turning: Bool[Array, ""]
    divergent: Bool[Array, ""]
    failures: Bool[Array, " kinds"]


def _push(stack: Array, leaf: Ends, index, depth, velocity, active) -> tuple[Array, Any]:
    """Merge the subtrees leaf ``index`` completes; store the next left half waiting.

    The leaf completes one subtree per trailing 1-bit of ``index`` (below ``depth``): at
    level ``j`` the left half is ``stack[j]`` (an :class:`Ends` stacked into one
    ``(3, dim)`` array: one gather and one scatter per leaf, not three) and the right half
    the merge so far. A short
    loop over those levels only (vectorising the checks over all ``max_depth`` levels was
    measured 2x slower per NUTS transition on the 100-d Gaussian, 4 vmapped chains). An
    inactive row (see :func:`~dgm.inference.masked_loop.masked_while_loop`) merges nothing
    and writes nothing.

    Returns the updated stack and whether any completed subtree made a U-turn.
    """

    def cond(carry):
        level, _, turning = carry
        return active & (level < depth) & ((index >> level) & 1 == 1) & ~turning

    def body(carry):
        level, cur, _ = carry
        left = Ends(*stack[level])
        return level + 1, merge(left, cur), is_turning(left, cur, velocity)

    init = (jnp.asarray(0), leaf, jnp.asarray(False))
    level, cur, turning = jax.lax.while_loop(cond, body, init)
    # the top level's merge is not stored (index size: dropped), nor an inactive row's
    level = jnp.where(active, level, stack.shape[0])
    return stack.at[level].set(jnp.stack(cur), mode="drop"), turning


def _leaf_ends(leaf) -> Ends:
    p = leaf.momentum
    return Ends(p, p, p)


def build_subtree(
    seed: UInt32[Array, " 2"],
    fns: LeafFns,
    start: Any,
    step_size: Float[Array, ""],
    depth: Int[Array, ""],
    energy0: Float[Array, ""],
    max_depth: int,
    divergence_threshold: float,
    enabled: Any = True,
) -> _Subtree:
    """Build up to ``2^depth`` leaves from ``start`` (exclusive), stopping early on a U-turn
    of any completed sub-subtree, an integrator failure or a divergence; nothing where
    ``enabled`` is False (a chain whose trajectory ended, batched with others)."""
    ends0 = _leaf_ends(start)
    # levels 0 ... max_depth − 2: the largest subtree (depth max_depth − 1) merges its
    # halves at level max_depth − 2
    size = max(max_depth - 1, 1)
    stack = jnp.zeros((size, 3, *ends0.rho.shape), ends0.rho.dtype)
    zero = jnp.zeros((), energy0.dtype)
    no_failures = jnp.zeros_like(fns.failures(start))
    init = _Subtree(
        start, jnp.asarray(0), ends0, stack, start, jnp.asarray(-jnp.inf, energy0.dtype), zero,
        jnp.asarray(False), jnp.asarray(False), no_failures,
    )  # fmt: skip

    def cond(s: _Subtree):
        failed = s.divergent | jnp.any(s.failures)
        return enabled & (s.count < 2**depth) & ~s.turning & ~failed

    def body(s: _Subtree, active) -> _Subtree:
        leaf = fns.step(s.edge, step_size)
        energy_error = fns.energy(leaf) - energy0
        failures = fns.failures(leaf)
        failed = jnp.any(failures)
        divergent = ~failed & (~jnp.isfinite(energy_error) | (energy_error > divergence_threshold))
        bad = failed | divergent
        log_w = jnp.where(bad, -jnp.inf, leaf_log_weight(energy_error))
        log_weight = jnp.logaddexp(s.log_weight, log_w)
        u = _leaf_uniform(seed, depth, s.count).astype(energy0.dtype)
        take = ~bad & (jnp.log(u) < log_w - log_weight)  # progressive sampling
        accept = jnp.where(bad, 0.0, jnp.exp(jnp.minimum(0.0, -energy_error)))
        one = _leaf_ends(leaf)
        first = s.count == 0
        ends = Ends(
            jnp.where(first, 0.0, s.ends.rho) + one.rho,
            jnp.where(first, one.p_first, s.ends.p_first),
            one.p_last,
        )
        stack, turning = _push(s.stack, one, s.count, depth, fns.velocity, active)
        new = _Subtree(
            leaf, s.count + 1, ends, s.stack, _select(take, leaf, s.proposal), log_weight,
            s.sum_accept + accept, turning & ~bad, divergent, failures,
        )  # fmt: skip
        # the stack masks its own write (a dropped scatter): selecting it whole was most
        # of a leaf's cost with vmapped chains
        return _select(active, new, s)._replace(stack=stack)

    return masked_while_loop(cond, body, init)


def sample_trajectory(
    key: PRNGKeyArray,
    fns: LeafFns,
    start: Any,
    step_size: Float[Array, ""],
    max_depth: Any,
    divergence_threshold: float = 1000.0,
    capacity: int | None = None,
) -> tuple[Any, TreeInfo]:
    """Build a dynamic trajectory from ``start`` (a leaf with fresh momentum) and draw a leaf.

    Args:
        key: PRNG key for the directions and the multinomial draws.
        fns: the integrator, see :class:`LeafFns`.
        start: the initial leaf (position with a momentum just drawn).
        step_size: the integrator step (> 0).
        max_depth: the most doublings: at most ``2^max_depth − 1`` steps. A Python int
            ≥ 1, or a traced int when ``capacity`` is given.
        divergence_threshold: energy error above which a leaf is divergent.
        capacity: a static upper bound on ``max_depth`` (it sizes the U-turn stack); by
            default ``max_depth`` itself. A traced ``max_depth`` is clipped to it.

    Returns:
        ``(leaf, info)``: the drawn leaf (the next state's position and caches) and
        :class:`TreeInfo`.
    """
    if capacity is None:
        capacity = check_max_depth(max_depth)
    else:
        max_depth = jnp.minimum(max_depth, capacity)
    energy0 = fns.energy(start)
    ends0 = _leaf_ends(start)
    zero = jnp.zeros((), energy0.dtype)
    no_failures = jnp.zeros_like(fns.failures(start))
    false = jnp.asarray(False)
    init = _Tree(
        start, start, ends0, start, energy0, zero, jnp.asarray(0), jnp.asarray(0), zero,
        false, false, no_failures,
    )  # fmt: skip

    def cond(t: _Tree):
        failed = t.divergent | jnp.any(t.failures)
        return (t.depth < max_depth) & ~t.turning & ~failed

    key_top, key_leaves = jax.random.split(key)
    tiny = jnp.finfo(energy0.dtype).tiny  # > 0: log u is finite
    uniforms = jax.random.uniform(key_top, (2, capacity), energy0.dtype, tiny)  # direction, take
    seed = jax.random.bits(key_leaves, (2,), jnp.uint32)

    def body(t: _Tree, active) -> _Tree:
        forward = uniforms[0, t.depth] < 0.5
        eps = jnp.where(forward, step_size, -step_size)
        edge = _select(forward, t.right, t.left)
        sub = build_subtree(
            seed, fns, edge, eps, t.depth, energy0, capacity, divergence_threshold, active
        )
        failed = sub.divergent | jnp.any(sub.failures)
        valid = ~failed & ~sub.turning
        # biased progressive sampling
        take = valid & (jnp.log(uniforms[1, t.depth]) < sub.log_weight - t.log_weight)
        x = _select(forward, t.ends, reverse(t.ends))  # the old tree, oriented to grow
        merged = merge(x, sub.ends)
        turning = sub.turning | (valid & is_turning(x, sub.ends, fns.velocity))
        new = _Tree(
            _select(forward, t.left, sub.edge),
            _select(forward, sub.edge, t.right),
            _select(forward, merged, reverse(merged)),
            _select(take, sub.proposal, t.proposal),
            jnp.where(take, fns.energy(sub.proposal), t.proposal_energy),
            jnp.logaddexp(t.log_weight, sub.log_weight),
            t.depth + valid.astype(t.depth.dtype),
            t.num_steps + sub.count,
            t.sum_accept + jnp.where(failed, 0.0, sub.sum_accept),
            turning,
            sub.divergent,
            sub.failures,
        )
        return _select(active, new, t)

    t = masked_while_loop(cond, body, init)
    accept = t.sum_accept / jnp.maximum(t.num_steps, 1).astype(t.sum_accept.dtype)
    info = TreeInfo(
        accept, t.depth, t.num_steps, t.divergent, t.failures, t.proposal_energy - energy0,
        t.turning,
    )  # fmt: skip
    return t.proposal, info


def check_max_depth(max_depth: Any) -> int:
    """``max_depth`` as a Python int ≥ 1; ``ValueError`` otherwise."""
    if not is_int(max_depth) or max_depth < 1:
        raise ValueError(f"`max_depth` must be an int >= 1; got {max_depth!r}")
    return int(max_depth)


def depth_and_capacity(max_depth: Any, bound: int) -> tuple[Any, int | None]:
    """``(max_depth, capacity)`` for :func:`sample_trajectory`: a traced depth gets the U-turn
    stack size ``bound``; a Python int is checked and sizes the stack itself (``None``)."""
    if isinstance(max_depth, jax.Array):
        return max_depth, bound
    return check_max_depth(max_depth), None
