"""NUTS: the U-turn criterion, exact-moment z-tests, diagnostic floors, planted bugs.

Target: the correlated 2-d Gaussian of test_hmc.py (sds 1 and 0.3, correlation 0.7), with
a diagonal metric at step size 0.9, near the top of its stable range (1.1), so that energy
errors are large and a sampler that ignores them is visibly biased.

Calibration: ``pytest -m calibration tests/inference/test_nuts.py`` runs the moment test on
50 seeds (1000-1049); with the correct kernel the worst z was 2.62, the lowest ESS 2751
and the mean acceptance statistic 0.706-0.722.
Power (test_planted_bugs_are_caught, slow; seed 2026): uniform instead of multinomial
weights over the trajectory fails the variance z-tests (worst z 14.5); a U-turn criterion
with its sign flipped stops every tree after one step and fails the ESS floor (ESS 980 <
2000; its z stays below 1: the sampler is still correct, only slow).
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference import dynamic
from dgm.inference.base import ChainRunner
from dgm.inference.dynamic import Ends, is_turning
from dgm.inference.nuts import NUTSParams, build_kernel, init, nuts
from tests.stats import z_scores

MEAN = np.array([0.5, -1.0])
SD = np.array([1.0, 0.3])
CORR = 0.7
COV = np.array([[SD[0] ** 2, CORR * SD[0] * SD[1]], [CORR * SD[0] * SD[1], SD[1] ** 2]])
PREC = np.linalg.inv(COV)
NUM_CHAINS, NUM_DRAWS = 8, 1000
STEP_SIZE = 0.9
Z_MAX = 4.5
ESS_FLOOR = 2000.0
ACCEPT_BAND = (0.68, 0.75)


def gaussian_log_density(x):
    d = x - jnp.asarray(MEAN)
    return -0.5 * d @ (jnp.asarray(PREC) @ d)


@pytest.fixture(scope="module", autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


def _runner() -> ChainRunner:
    # lax.map over the chains: it compiles faster than vmap (no batched while loops; the
    # NUTS chunk took 12 s under vmap against about 5 s for one unbatched step, under load)
    return ChainRunner(build_kernel(gaussian_log_density), chunk_size=NUM_DRAWS, chain_map="map")


_RUNNER = _runner()  # shared by the fixture, the recompilation test and the calibration


def run_chains(seed: int, runner: ChainRunner | None = None):
    """8 chains of NUTS started from exact draws."""
    runner = runner or _runner()  # a new runner traces the (possibly patched) code afresh
    key_init, key_run = jax.random.split(jax.random.key(seed))
    chol = np.linalg.cholesky(COV)
    z = jax.random.normal(key_init, (NUM_CHAINS, 2), jnp.float64)
    states = jax.vmap(lambda x: init(x, gaussian_log_density))(
        jnp.asarray(MEAN)[None, :] + z @ chol.T
    )
    params = NUTSParams(jnp.asarray(STEP_SIZE), jnp.asarray(np.diag(COV)), 10)
    return runner.run(jax.random.split(key_run, NUM_CHAINS), states, params, NUM_DRAWS)


def moment_z_scores(draws):
    stats = np.concatenate([draws, (draws - MEAN) ** 2], axis=-1)
    return z_scores(stats, np.concatenate([MEAN, SD**2]))


@pytest.fixture(scope="module")
def chains():
    return run_chains(seed=2026, runner=_RUNNER)


def test_u_turn_criterion_on_hand_made_halves():
    """Halves moving apart continue; a reversal, or one end turning back, is a U-turn."""
    e = jnp.array([1.0, 0.0])
    unit = lambda p: p  # noqa: E731  (identity mass: v = p)

    def ends(p_first, p_last):
        p_first, p_last = jnp.asarray(p_first), jnp.asarray(p_last)
        return Ends(p_first + p_last, p_first, p_last)

    straight = ends(e, e)
    assert not bool(is_turning(straight, straight, unit))
    assert bool(is_turning(straight, ends(-e, -e), unit))  # the second half came back
    # Stan's extra check: the whole is fine (ρ = (2.6, 0): both ends move along it) but
    # the first half extended by the second half's first leaf has an end moving against it.
    x = ends([1.0, 0.0], [1.0, 0.0])
    y = ends([-1.4, 0.0], [2.0, 0.0])
    rho = x.rho + y.rho
    assert bool(jnp.dot(x.p_first, rho) > 0) and bool(jnp.dot(y.p_last, rho) > 0)
    assert bool(is_turning(x, y, unit))
    # the velocity, not the momentum, enters: a metric that flips the sign of the
    # criterion flips the answer
    assert bool(is_turning(straight, straight, lambda p: -p))


def test_moments_match_exact(chains):
    """z < 4.5 for means and variances; multi-chain ESS ≥ 3000 (calibration: module doc)."""
    zs, esss = moment_z_scores(chains.draws)
    assert np.all(zs < Z_MAX), zs
    assert np.all(esss >= ESS_FLOOR), esss


def test_diagnostic_floors(chains):
    infos = chains.infos
    accept = float(infos.accept_prob.mean())
    assert ACCEPT_BAND[0] < accept < ACCEPT_BAND[1], accept
    assert not infos.is_divergent.any()
    depth, steps = np.asarray(infos.tree_depth), np.asarray(infos.num_steps)
    assert depth.min() >= 1 and depth.max() <= 10
    assert np.all(steps >= 2**depth - 1) and np.all(steps < 2 ** (depth + 1))
    # H(new) − H(start) and the reported energy agree in shape and are finite
    assert np.all(np.isfinite(infos.energy)) and np.all(np.isfinite(infos.energy_error))


def test_chains_with_different_keys_differ(chains):
    assert not np.allclose(chains.draws[0], chains.draws[1])


def test_second_run_with_same_shapes_compiles_nothing(chains):
    compiled = _RUNNER.num_compiles  # one executable per host device
    again = run_chains(seed=7, runner=_RUNNER)
    assert _RUNNER.num_compiles == compiled and again.compile_s == 0.0


def test_max_depth_bounds_the_trajectory():
    """At a tiny step nothing turns: the tree stops at max_depth (2^d − 1 steps). Under
    jax.jit(step) the depth arrives traced, and the builder's bound caps it."""
    step = jax.jit(build_kernel(gaussian_log_density, max_depth_bound=3))
    state = init(jnp.asarray(MEAN), gaussian_log_density)
    for depth, expected in ((1, 1), (2, 2), (10, 3)):
        params = NUTSParams(jnp.asarray(0.01), jnp.ones(2), depth)
        _, info = step(jax.random.key(1), state, params)
        assert int(info.tree_depth) == expected, (depth, info)
        assert int(info.num_steps) == 2**expected - 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_depth": 0}, "`max_depth` must be an int >= 1; got 0"),
        ({"max_depth": 2.5}, "`max_depth` must be an int >= 1"),
        ({"step_size": -1.0}, "`step_size` must be a positive scalar"),
        ({"inverse_mass_matrix": np.ones((2, 2, 2))}, "`inverse_mass_matrix` must have 1"),
    ],
)
def test_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nuts(gaussian_log_density, **kwargs)


@pytest.mark.slow
def test_planted_bugs_are_caught(plant):
    """Each broken tree builder fails the moment test or the ESS floor (about 30 s)."""
    with plant() as m:  # no multinomial re-weighting: uniform over leaves
        m.setattr(dynamic, "leaf_log_weight", lambda energy_error: jnp.zeros_like(energy_error))
        zs, esss = moment_z_scores(run_chains(seed=2026).draws)
        print("uniform weights: worst z", zs.max(), "min ESS", esss.min())
        assert np.max(zs) > Z_MAX, zs
    with plant() as m:  # the U-turn sign flipped
        m.setattr(
            dynamic,
            "no_turn",
            lambda a, b, rho: (jnp.sum(a * rho, -1) < 0) & (jnp.sum(b * rho, -1) < 0),
        )
        zs, esss = moment_z_scores(run_chains(seed=2026).draws)
        print("flipped U-turn: worst z", zs.max(), "min ESS", esss.min())
        assert np.max(zs) > Z_MAX or np.min(esss) < ESS_FLOOR, (zs, esss)


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_moments_calibration(seed):
    result = run_chains(seed=1000 + seed, runner=_RUNNER)
    zs, esss = moment_z_scores(result.draws)
    accept = float(result.infos.accept_prob.mean())
    print(f"CALIB {seed} max_z={zs.max():.3f} min_ess={esss.min():.0f} acc={accept:.3f}")
    assert np.all(zs < Z_MAX) and np.all(esss >= ESS_FLOOR)


def test_leaf_uniforms_are_never_zero_or_one(monkeypatch):
    """The in-subtree uniform at the extreme Threefry outputs: strictly inside (0, 1), so
    ``log u`` is finite and a leaf is taken only with its weight (u = 0 took any leaf)."""
    seed = jnp.zeros(2, jnp.uint32)
    for bits in (0, 0xFFFFFFFF):
        out = (jnp.uint32(bits), jnp.uint32(bits))
        monkeypatch.setattr(dynamic, "threefry_2x32_unrolled", lambda *a, out=out: out)
        u = float(dynamic._leaf_uniform(seed, 0, 0))
        assert 0.0 < u < 1.0, (bits, u)


class _ToyLeaf(NamedTuple):
    """A leaf of the toy integrators below: its momentum and its step index (time)."""

    momentum: jax.Array
    t: jax.Array


def _toy_fns(energy, momentum=lambda t: jnp.ones(1)) -> dynamic.LeafFns:
    """Leaves that only count time: a step moves ``t`` by ±1 (the sign of the step size);
    ``energy(t)`` sets the leaf weights and ``momentum(t)`` the U-turn criterion's input."""

    def step(leaf, eps):
        t = leaf.t + jnp.sign(eps)
        return _ToyLeaf(momentum(t), t)

    return dynamic.LeafFns(
        step=step,
        energy=lambda leaf: energy(leaf.t),
        velocity=lambda p: p,
        failures=lambda leaf: jnp.zeros((0,), bool),
    )


# The drawn leaf's time over independent depth-4 trajectories (15 steps, no U-turn: the
# momentum is constant) with leaf energies 0.1 t², symmetric in t.
_draw_times = jax.jit(
    jax.vmap(
        lambda key: dynamic.sample_trajectory(
            key, _toy_fns(lambda t: 0.1 * t**2), _ToyLeaf(jnp.ones(1), jnp.zeros(())),
            jnp.asarray(1.0), 4,
        )[0].t
    )
)  # fmt: skip


def _kept_times(seed: int, num: int = 4000) -> np.ndarray:
    return np.asarray(_draw_times(jax.random.split(jax.random.key(seed), num)))


def test_drawn_leaf_is_symmetric_in_time():
    """With energies symmetric in time, the drawn leaf lies as often before the start as
    after it: E t = 0 exactly (the directions are fair coins, independent of the draws
    that take a subtree). Over 4000 independent trajectories (iid: z with the plain
    standard error). Calibration (``test_drawn_leaf_symmetry_calibration``, seeds 0-49):
    worst |z| 2.03. Power: drawing the direction from the same uniform as the top-level
    take decision (``uniforms[1]`` for ``uniforms[0]``), which favours forward subtrees,
    gives z = 50 at this seed (46-49 at seeds 0-2); the moment z-tests above missed it."""
    t = _kept_times(7)
    z = abs(t.mean()) / (t.std(ddof=1) / np.sqrt(t.size))
    assert np.abs(t).mean() > 1.0  # the draw does leave the start
    assert z < Z_MAX, z


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_drawn_leaf_symmetry_calibration(seed):
    t = _kept_times(seed)
    z = abs(t.mean()) / (t.std(ddof=1) / np.sqrt(t.size))
    print(f"CALIB {seed} z={z:.3f}")
    assert z < Z_MAX


def test_subtree_u_turn_uses_the_outer_ends_of_its_halves():
    """A depth-2 subtree whose two halves are fine on their own but whose merge turns back
    (the first half extended by the second half's first leaf has that leaf's momentum
    against the sum: Stan's extra check) stops as turning after its 4 leaves. The same
    merge read with the halves swapped (inner ends in place of outer ones) sees no U-turn,
    so the order of ``is_turning``'s arguments in the leaf loop matters."""
    table = jnp.asarray([[0.0, 0.0], [1.5, -0.5], [1.5, 2.0], [-0.5, -1.5], [1.0, -2.0]])
    fns = _toy_fns(lambda t: jnp.zeros(()), lambda t: table[t.astype(jnp.int32)])
    start = _ToyLeaf(table[0], jnp.zeros(()))
    left, right = (Ends(table[i] + table[i + 1], table[i], table[i + 1]) for i in (1, 3))
    assert not bool(is_turning(Ends(table[1], table[1], table[1]), Ends(*[table[2]] * 3), _id))
    assert not bool(is_turning(Ends(table[3], table[3], table[3]), Ends(*[table[4]] * 3), _id))
    assert bool(is_turning(left, right, _id)) and not bool(is_turning(right, left, _id))
    sub = dynamic.build_subtree(
        jnp.zeros(2, jnp.uint32), fns, start, jnp.asarray(1.0), jnp.asarray(2),
        jnp.zeros(()), 3, 1000.0,
    )  # fmt: skip
    assert int(sub.count) == 4 and bool(sub.turning)


def _id(p):
    return p


def test_discarded_subtree_leaves_count_zero_in_the_acceptance_statistic():
    """Leaves at |t| >= 3 diverge (energy 1e4), the rest have energy 0 (acceptance 1):
    every trajectory ends on a divergent subtree, and the acceptance statistic is the
    kept tree's 2^depth − 1 leaves over all steps taken, the discarded subtree's leaves
    counting 0 even before its divergent one (Stan; dual averaging then shrinks the step).
    Over 64 keys some discarded subtrees hold good leaves, so counting them changes it."""
    fns = _toy_fns(lambda t: jnp.where(jnp.abs(t) >= 3, 1e4, 0.0))
    start = _ToyLeaf(jnp.ones(1), jnp.zeros(()))
    run = jax.jit(
        jax.vmap(lambda k: dynamic.sample_trajectory(k, fns, start, jnp.asarray(1.0), 6)[1])
    )
    info = run(jax.random.split(jax.random.key(3), 64))
    assert np.all(np.asarray(info.is_divergent))
    kept = 2.0 ** np.asarray(info.tree_depth) - 1.0
    steps = np.asarray(info.num_steps)
    assert np.any(steps - kept > 1)  # some discarded subtree had leaves before its divergence
    np.testing.assert_allclose(np.asarray(info.accept_prob), kept / steps, rtol=1e-6)


def test_one_leaf_tree_accept_probability_matches_closed_form():
    """NUTS with ``max_depth=1`` on N(0, 1): one leapfrog step, forwards or backwards (a
    step backwards is a step forwards from momentum −p₀), then the leaf replaces the start
    with probability min(1, exp(−ΔH)); the acceptance statistic is that probability, and
    the energy error is ΔH if the leaf was taken, else 0. The momentum is the kernel's
    first subkey (``split(key)[0]``) drawn as N(0, 1). Over 16 keys both outcomes occur."""
    logp_fn = lambda q: -0.5 * jnp.sum(q**2)  # noqa: E731
    step = jax.jit(lambda key, state: build_kernel(logp_fn)(key, state, NUTSParams(1.9, 1.0, 1)))
    h, q0 = 1.9, 1.2
    state = init(jnp.array([q0]), logp_fn)

    def delta_h(p0):
        p_half = p0 - 0.5 * h * q0
        q1 = q0 + h * p_half
        p1 = p_half - 0.5 * h * q1
        return 0.5 * (q1**2 + p1**2) - 0.5 * (q0**2 + p0**2)

    outcomes = set()
    for seed in range(16):
        key = jax.random.key(seed)
        p0 = float(jax.random.normal(jax.random.split(key)[0], (1,), jnp.float64)[0])
        new, info = step(key, state)
        candidates = np.array([delta_h(p0), delta_h(-p0)])  # forwards, backwards
        accept = np.minimum(1.0, np.exp(-candidates))
        direction = np.isclose(float(info.accept_prob), accept, rtol=1e-12)
        assert direction.any() and int(info.num_steps) == 1, seed
        taken = bool(new.position[0] != q0)
        outcomes.add(taken)
        if taken:  # the ΔH of a direction whose acceptance matches (both, if both are 1)
            assert np.isclose(float(info.energy_error), candidates[direction], rtol=1e-12).any()
        else:
            assert float(info.energy_error) == 0.0, seed
    assert outcomes == {True, False}


def test_batched_trajectories_equal_the_unbatched_ones():
    """``vmap`` over trajectories (a finished row idles while others build) gives what each
    built alone gives: toy leaves whose momentum turns faster and faster (angle
    0.05 t + 0.004 t³), so subtrees U-turn inside after different numbers of leaves, by
    where the trajectory started (the masked loops must leave a finished row untouched:
    stepping it on changed 9 of these 64 step counts)."""
    angle = lambda t: 0.05 * t + 0.004 * t**3  # noqa: E731
    fns = _toy_fns(
        lambda t: 0.02 * t**2, lambda t: jnp.stack([jnp.cos(angle(t)), jnp.sin(angle(t))])
    )
    start = _ToyLeaf(jnp.asarray([1.0, 0.0]), jnp.zeros(()))

    def one(key):
        leaf, info = dynamic.sample_trajectory(key, fns, start, jnp.asarray(1.0), 7)
        return leaf.t, info.num_steps, info.accept_prob, info.tree_depth

    keys = jax.random.split(jax.random.key(5), 64)
    batched = jax.jit(jax.vmap(one))(keys)
    looped = jax.jit(lambda ks: jax.lax.map(one, ks))(keys)
    assert len(np.unique(np.asarray(looped[1]))) == 2  # the trees differ in length
    for b, s in zip(batched, looped, strict=True):
        np.testing.assert_array_equal(np.asarray(b), np.asarray(s))
