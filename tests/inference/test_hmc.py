"""HMC: Metropolis correctness, moments, diagnostics, keys, API errors.

The leapfrog integrator has its own tests (test_integrators.py).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference import hmc as hmc_module
from dgm.inference.base import ChainRunner
from dgm.inference.hmc import HMCParams, build_kernel, hmc, init
from dgm.inference.integrators import IntegratorState
from dgm.inference.metrics import velocity
from tests.stats import z_scores

# Correlated 2-D Gaussian with unequal scales (sd 1 and 0.3, correlation 0.7).
MEAN = np.array([0.5, -1.0])
SD = np.array([1.0, 0.3])
CORR = 0.7
COV = np.array([[SD[0] ** 2, CORR * SD[0] * SD[1]], [CORR * SD[0] * SD[1], SD[1] ** 2]])
PREC = np.linalg.inv(COV)
NUM_CHAINS, NUM_DRAWS = 8, 1000
# Step sizes near the top of each metric's stable range (2 / largest frequency): with the
# dense metric the target is N(0, I) in whitened coordinates (limit 2); with the diagonal
# metric the whitened correlation matrix has eigenvalues 1.7 and 0.3 (limit 2 sqrt(0.3) = 1.1).
SETTINGS = {"dense": (jnp.asarray(COV), 1.3), "diagonal": (jnp.asarray(np.diag(COV)), 0.9)}
NUM_STEPS = (2, 6)
Z_MAX = 4.5
ESS_FLOOR = 1500.0
# Calibrated on 40 seeds: mean acceptance 0.815-0.824 (dense), 0.763-0.774 (diagonal);
# the worst ESS of any statistic was 2325.
ACCEPT_BAND = {"dense": (0.78, 0.86), "diagonal": (0.73, 0.81)}


def gaussian_log_density(x):
    d = x - jnp.asarray(MEAN)
    return -0.5 * d @ (jnp.asarray(PREC) @ d)


_STEP = build_kernel(gaussian_log_density)
_RUNNER = ChainRunner(_STEP, chunk_size=NUM_DRAWS)


def _params(step_size, imm) -> HMCParams:
    return HMCParams(jnp.asarray(step_size), imm, *NUM_STEPS)


def run_chains(metric: str, seed: int):
    """8 chains of ``NUM_DRAWS`` draws started from exact draws (no burn-in needed)."""
    imm, step_size = SETTINGS[metric]
    key_init, key_run = jax.random.split(jax.random.key(seed))
    chol = jnp.linalg.cholesky(jnp.asarray(COV))
    z = jax.random.normal(key_init, (NUM_CHAINS, 2), jnp.float64)
    positions = jnp.asarray(MEAN)[None, :] + z @ chol.T
    states = jax.vmap(lambda x: init(x, gaussian_log_density))(positions)
    params = _params(step_size, imm)
    keys = jax.random.split(key_run, NUM_CHAINS)
    return _RUNNER.run(keys, states, params, NUM_DRAWS)


def moment_z_scores(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """z and multi-chain bulk ESS for f = x_i and f = (x_i - mu_i)^2, i = 1, 2."""
    stats = np.concatenate([draws, (draws - MEAN) ** 2], axis=-1)  # (chains, draws, 4)
    return z_scores(stats, np.concatenate([MEAN, SD**2]))


@pytest.fixture(scope="module", autouse=True)
def _x64():
    """Float64 draws: the z-tests and the map = vmap check compare at 1e-12."""
    with jax.enable_x64(True):
        yield


@pytest.fixture(scope="module", params=["dense", "diagonal"])
def chains(request):
    return request.param, run_chains(request.param, seed=20260)


# ---------------------------------------------------------------- 2. Metropolis correctness


def test_accept_probability_matches_closed_form():
    """One leapfrog step on N(0, 1): ΔH has a closed form given the momentum drawn.

    The momentum is the kernel's first subkey (``split(key, 3)[0]``) drawn as N(0, 1).
    """
    logp_fn = lambda q: -0.5 * jnp.sum(q**2)  # noqa: E731
    raw = build_kernel(logp_fn)
    step = jax.jit(lambda key, state: raw(key, state, HMCParams(1.5, jnp.ones(1), 1, 1)))
    h, q0 = 1.5, 0.8
    for seed in range(5):
        key = jax.random.key(seed)
        p0 = float(jax.random.normal(jax.random.split(key, 3)[0], (1,), jnp.float64)[0])
        state = init(jnp.array([q0]), logp_fn)
        _, info = step(key, state)
        p_half = p0 - 0.5 * h * q0
        q1 = q0 + h * p_half
        p1 = p_half - 0.5 * h * q1
        delta_h = 0.5 * (q1**2 + p1**2) - 0.5 * (q0**2 + p0**2)
        np.testing.assert_allclose(info.energy_error, delta_h, rtol=1e-12)
        np.testing.assert_allclose(info.accept_prob, min(1.0, np.exp(-delta_h)), rtol=1e-12)


def test_energy_is_the_kept_states_hamiltonian():
    """``info.energy`` (ArviZ's ``energy``, read by E-BFMI) is H of the state kept: the
    proposal's H when accepted, the start's when rejected (closed form as above). Over 20
    keys both branches occur (a swapped ``where`` reports the other H)."""
    logp_fn = lambda q: -0.5 * jnp.sum(q**2)  # noqa: E731
    raw = build_kernel(logp_fn)
    step = jax.jit(lambda key, state: raw(key, state, HMCParams(1.9, jnp.ones(1), 1, 1)))
    h, q0 = 1.9, 1.2
    state = init(jnp.array([q0]), logp_fn)
    accepted = []
    for seed in range(20):
        key = jax.random.key(seed)
        p0 = float(jax.random.normal(jax.random.split(key, 3)[0], (1,), jnp.float64)[0])
        _, info = step(key, state)
        q1 = q0 + h * (p0 - 0.5 * h * q0)
        p1 = p0 - 0.5 * h * q0 - 0.5 * h * q1
        h0, h1 = 0.5 * (q0**2 + p0**2), 0.5 * (q1**2 + p1**2)
        assert abs(h1 - h0) > 1e-3  # the two candidates differ
        expected = h1 if bool(info.is_accepted) else h0
        np.testing.assert_allclose(info.energy, expected, rtol=1e-12)
        accepted.append(bool(info.is_accepted))
    assert any(accepted) and not all(accepted)


def test_a_nan_energy_error_is_a_rejected_divergence():
    """A log density that is NaN where the trajectory ends (|x| > 3, where a step of 5
    lands) gives a NaN energy error: the proposal is rejected and flagged divergent (a
    NaN compares False against the threshold, so the flag must test finiteness itself)."""
    logp_fn = lambda q: jnp.where(jnp.abs(q[0]) < 3.0, -0.5 * jnp.sum(q**2), jnp.nan)  # noqa: E731
    state = init(jnp.array([0.9]), logp_fn)
    step = jax.jit(lambda key: build_kernel(logp_fn)(key, state, HMCParams(5.0, jnp.ones(1), 1, 1)))
    outcomes = []
    for seed in range(6):
        new, info = step(jax.random.key(seed))
        if np.isnan(float(info.energy_error)):
            assert bool(info.is_divergent) and not bool(info.is_accepted), seed
            assert float(info.accept_prob) == 0.0
            np.testing.assert_array_equal(new.position, state.position)
        outcomes.append(np.isnan(float(info.energy_error)))
    assert any(outcomes)


# ---------------------------------------------------------------- 3. moments, 4. floors


def test_moments_match_exact(chains):
    """z < 4.5 for the means and variances of both coordinates, multi-chain ESS ≥ 1500.

    Calibration (``test_moments_calibration``, 40 seeds x 2 metrics, correct code):
    worst z = 3.95 (dense), 2.51 (diagonal); worst ESS 2325.
    Power, checked by planting bugs: dropping the Metropolis step (always accept) fails
    the variance z-tests (z = 16.6 dense, 13.8 diagonal); flipping the sign of both
    kicks fails every z-test (z 9-12), the acceptance floor (acceptance 0.002-0.005)
    and the deterministic integrator tests.
    """
    metric, result = chains
    zs, esss = moment_z_scores(result.draws)
    assert np.all(zs < Z_MAX), (metric, zs)
    assert np.all(esss >= ESS_FLOOR), (metric, esss)


def test_diagnostic_floors(chains):
    metric, result = chains
    assert result.draws.shape == (NUM_CHAINS, NUM_DRAWS, 2)
    lo, hi = ACCEPT_BAND[metric]
    accept = result.infos.accept_prob.mean()
    assert lo < accept < hi, (metric, accept)
    assert not result.infos.is_divergent.any()
    assert np.all(np.isfinite(result.draws))


def test_random_step_count_covers_inclusive_range(chains):
    _, result = chains
    counts = np.unique(result.infos.num_steps)
    np.testing.assert_array_equal(counts, np.arange(NUM_STEPS[0], NUM_STEPS[1] + 1))


@pytest.mark.calibration
@pytest.mark.parametrize("metric", ["dense", "diagonal"])
@pytest.mark.parametrize("seed", range(40))
def test_moments_calibration(metric, seed):
    result = run_chains(metric, seed=1000 + seed)
    zs, esss = moment_z_scores(result.draws)
    accept = result.infos.accept_prob.mean()
    print(f"CALIB {metric} {seed} max_z={zs.max():.3f} min_ess={esss.min():.0f} acc={accept:.3f}")
    assert np.all(zs < Z_MAX)
    assert np.all(esss >= ESS_FLOOR)


# ---------------------------------------------------------------- keys, API, compilation


def test_runner_map_matches_vmap():
    """``chain_map="map"`` runs the chains one after another and gives the same draws."""
    states = jax.vmap(lambda x: init(x, gaussian_log_density))(jnp.zeros((3, 2)) + 0.1)
    params = _params(0.3, jnp.ones(2))
    keys = jax.random.split(jax.random.key(5), 3)
    out = {
        how: ChainRunner(_STEP, chunk_size=7, chain_map=how).run(keys, states, params, 10)
        for how in ("vmap", "map")
    }
    np.testing.assert_allclose(out["map"].draws, out["vmap"].draws, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="`chain_map` must be one of"):
        ChainRunner(_STEP, chain_map="pmap")


def test_same_start_different_keys_differ():
    kernel = hmc(gaussian_log_density, 0.5, num_steps=3)
    state = kernel.init(jnp.asarray(MEAN))
    keys = jax.random.split(jax.random.key(7), 2)
    step = jax.jit(jax.vmap(lambda k, s: kernel.step(k, s, kernel.params), in_axes=(0, None)))
    new, _ = step(keys, state)
    assert not np.allclose(new.position[0], new.position[1])
    again, _ = step(keys, state)
    np.testing.assert_array_equal(again.position, new.position)  # and same key, same draw


def test_runner_chains_from_one_start_differ():
    """The driver gives every chain its own key stream (no key reuse across chains)."""
    imm, step_size = SETTINGS["diagonal"]
    states = jax.vmap(lambda x: init(x, gaussian_log_density))(
        jnp.tile(jnp.asarray(MEAN)[None, :], (NUM_CHAINS, 1))
    )
    keys = jax.random.split(jax.random.key(9), NUM_CHAINS)
    params = _params(step_size, imm)
    draws = _RUNNER.run(keys, states, params, NUM_DRAWS).draws
    first = draws[:, 0, :]
    assert len(np.unique(first[:, 0])) == NUM_CHAINS, first


def test_bound_kernel_runs_with_dense_and_diagonal_metric():
    for imm in (jnp.asarray(np.diag(COV)), jnp.asarray(COV), None):
        kernel = hmc(gaussian_log_density, 0.3, inverse_mass_matrix=imm, num_steps=(2, 4))
        state = kernel.init(jnp.asarray(MEAN))
        state, info = kernel.step(jax.random.key(3), state, kernel.params)
        assert state.position.shape == (2,)
        assert 2 <= int(info.num_steps) <= 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_size": 0.0}, "`step_size` must be a positive"),
        ({"step_size": -0.1}, "`step_size` must be a positive"),
        ({"inverse_mass_matrix": jnp.ones((2, 2, 2))}, r"1 \(diagonal\) or 2 \(dense\)"),
        ({"inverse_mass_matrix": jnp.asarray(1.0)}, r"1 \(diagonal\) or 2 \(dense\)"),
        ({"inverse_mass_matrix": jnp.ones((2, 3))}, "must have size 2 along each axis"),
        ({"num_steps": 0}, "1 <= low <= high"),
        ({"num_steps": (5, 3)}, "1 <= low <= high"),
        ({"num_steps": "ten"}, "an int or a"),
    ],
)
def test_bad_input_errors(kwargs, match):
    args = {"step_size": 0.1} | kwargs
    with pytest.raises(ValueError, match=match):
        hmc(gaussian_log_density, **args)


def test_inverse_mass_matrix_size_checked_at_init():
    kernel = hmc(gaussian_log_density, 0.1, inverse_mass_matrix=jnp.ones(3))
    with pytest.raises(ValueError, match="must have size 2 along each axis"):
        kernel.init(jnp.zeros(2))
    with pytest.raises(ValueError, match="`position` must be a vector"):
        kernel.init(jnp.zeros((2, 2)))


def test_compiles_once_for_new_step_size():
    """A new step size or inverse mass matrix (same shapes) reuses the compiled chunk."""
    first = run_chains("diagonal", seed=5)  # compiles unless a fixture already did
    num_compiles = _RUNNER.num_compiles
    assert 1 <= num_compiles <= 2 * len(jax.local_devices())  # per metric and device group
    old = SETTINGS["diagonal"]
    try:
        SETTINGS["diagonal"] = (old[0] * 1.1, 0.5)
        second = run_chains("diagonal", seed=5)
    finally:
        SETTINGS["diagonal"] = old
    assert _RUNNER.num_compiles == num_compiles
    assert second.compile_s == 0.0
    assert not np.allclose(first.draws, second.draws)


# ---------------------------------------------------------------- planted bugs


def _flipped_kicks_leapfrog(state, step_size, log_density_fn, inverse_mass_matrix):
    """Leapfrog with the sign of both kicks flipped (a planted bug)."""
    p = state.momentum - 0.5 * step_size * state.log_density_grad
    q = state.position + step_size * velocity(p, inverse_mass_matrix)
    logp, grad = jax.value_and_grad(log_density_fn)(q)
    p = p - 0.5 * step_size * grad
    return IntegratorState(q, p, logp, grad)


def _moment_test_passes(metric: str, seed: int = 20260) -> bool:
    """``test_moments_match_exact``'s verdict on a kernel built now (so a monkeypatch
    takes effect)."""
    imm, step_size = SETTINGS[metric]
    chol = jnp.linalg.cholesky(jnp.asarray(COV))
    key_init, key_run = jax.random.split(jax.random.key(seed))
    z = jax.random.normal(key_init, (NUM_CHAINS, 2), jnp.float64)
    states = jax.vmap(lambda x: init(x, gaussian_log_density))(
        jnp.asarray(MEAN)[None, :] + z @ chol.T
    )
    runner = ChainRunner(build_kernel(gaussian_log_density), chunk_size=NUM_DRAWS)
    keys = jax.random.split(key_run, NUM_CHAINS)
    result = runner.run(keys, states, _params(step_size, imm), NUM_DRAWS)
    zs, esss = moment_z_scores(result.draws)
    return bool(np.all(zs < Z_MAX) and np.all(esss >= ESS_FLOOR))


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["dense", "diagonal"])
def test_planted_bugs_are_caught(metric, plant):
    """The moment test passes on the correct kernel and fails under each planted bug:
    no Metropolis step (``metropolis`` always accepts) and flipped kick signs."""
    assert _moment_test_passes(metric)

    def always_accept(key, log_ratio, proposal, state):
        return proposal, jnp.ones_like(log_ratio), jnp.ones((), bool)

    with plant() as m:
        m.setattr(hmc_module, "metropolis", always_accept)
        assert not _moment_test_passes(metric)
    with plant() as m:
        m.setattr(hmc_module, "leapfrog", _flipped_kicks_leapfrog)
        assert not _moment_test_passes(metric)
