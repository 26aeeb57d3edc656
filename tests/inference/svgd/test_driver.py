"""SVGDRunner: a Gaussian accuracy check, KSD, one compilation, stopping, NaN, Ctrl-C."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm.inference import svgd
from dgm.inference.svgd import SVGDRunner, to_inference_data
from tests.inference.svgd.targets import (
    CORR_TOL,
    MEAN_TOL,
    SD_TOL,
    gauss_logp,
    is_accurate,
    moment_errors,
)


@pytest.fixture(scope="module")
def gaussian_run():
    """200 particles, 1500 steps of the original rule on the correlated Gaussian."""
    with jax.enable_x64(True):
        x0 = jax.random.normal(jax.random.key(0), (200, 2), jnp.float64)
        runner = SVGDRunner(svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp)), 500)
        result = runner.run(svgd.init(x0), 1500, step_size=0.05)
        scores = jax.vmap(jax.grad(gauss_logp))
        return x0, result, float(svgd.ksd(x0, scores(x0))), runner


def test_gaussian_moments_within_fraction_of_sd(gaussian_run):
    """Mean within 0.1 sd, sds within 5 %, correlation within 0.02 (200 particles).

    Calibration (``test_gaussian_moments_calibration``, seeds 0-49, correct code): worst
    mean error 0.051 sd, worst sd error 1.0 %, worst correlation error 0.0015. The planted
    bugs of ``test_core.test_planted_bugs_are_caught`` (no repulsive term, its sign
    flipped, bandwidth / 100) fail it.
    """
    _, result, _, _ = gaussian_run
    assert result.status == "completed" and result.num_iterations == 1500
    mean_err, sd_err, corr_err = moment_errors(result.particles)
    assert np.all(mean_err < MEAN_TOL), mean_err
    assert np.all(sd_err < SD_TOL), sd_err
    assert corr_err < CORR_TOL, corr_err


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_gaussian_moments_calibration(seed, gaussian_run, x64):
    _, _, _, runner = gaussian_run
    x0 = jax.random.normal(jax.random.key(seed), (200, 2), jnp.float64)
    assert is_accurate(runner.run(svgd.init(x0), 1500, 0.05).particles)


def test_ksd_falls_by_factor_10(gaussian_run, x64):
    x0, result, ksd0, _ = gaussian_run
    scores = jax.vmap(jax.grad(gauss_logp))
    final = float(svgd.ksd(result.state.particles, scores(result.state.particles)))
    assert final < ksd0 / 10, (ksd0, final)
    np.testing.assert_allclose(result.trace["ksd"][0], ksd0, rtol=1e-10)
    assert result.trace["ksd"].shape == (1500,)


def test_runner_compiles_once(gaussian_run, x64):
    _, _, _, runner = gaussian_run
    x1 = jax.random.normal(jax.random.key(1), (200, 2), jnp.float64)
    runner.run(svgd.init(x1), 700, step_size=0.01)
    runner.run(svgd.init(x1), 20, step_size=jnp.asarray(0.2))
    assert runner.num_traces == 1
    assert runner.num_compiles == 1


def test_stopping_rule_and_arviz():
    x0 = jax.random.normal(jax.random.key(5), (40, 2))
    # plain gradient steps: the move vanishes at the fixed point (the original rule's
    # normalised steps keep a move of about the step size)
    sgd = optax.sgd(0.2)
    step = svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp), optimizer=sgd)
    result = SVGDRunner(step, 100).run(svgd.init(x0, sgd), 5000, update_tol=1e-3)
    assert result.status == "converged"
    assert result.message == f"stopping rule met at iteration {result.num_iterations}"
    assert result.num_iterations < 5000
    assert result.trace["update_norm"][-1] < 1e-3
    assert np.all(result.trace["update_norm"][:-1] >= 1e-3)
    idata = to_inference_data(result)
    assert idata.posterior["x"].shape == (1, 40, 2)
    assert idata.svgd_trace["ksd"].shape == (1, result.num_iterations)


def test_nan_stops_with_iteration_and_keeps_finite_particles():
    def grad(x):  # the gradient turns NaN once any particle passes 3
        g = 5.0 - x
        return jnp.where(jnp.any(x > 3.0), jnp.nan, 1.0) * g

    x0 = jnp.zeros((5, 1)) + jnp.arange(5.0)[:, None] * 0.1
    runner = SVGDRunner(svgd.build_step(svgd.make_score_fn(grad_log_density_fn=grad)), 16)
    result = runner.run(svgd.init(x0), 500, step_size=0.1)
    assert result.status == "non-finite"
    n = result.num_iterations
    assert 0 < n < 500
    assert f"non-finite particles at iteration {n + 1}" in result.message
    assert result.trace["ksd"].shape == (n,)
    assert np.all(np.isfinite(result.particles)) and np.any(result.particles > 3.0)


def test_ctrl_c_keeps_the_finished_chunks(monkeypatch):
    """A KeyboardInterrupt during the third chunk: the state and traces of two chunks."""
    step = svgd.build_step(svgd.make_score_fn(grad_log_density_fn=lambda v: -v))
    runner = SVGDRunner(step, 10)
    x0 = jax.random.normal(jax.random.key(6), (8, 2))
    full = runner.run(svgd.init(x0), 20, step_size=0.1)
    calls = []
    block = jax.block_until_ready

    def interrupting(tree):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return block(tree)

    monkeypatch.setattr(jax, "block_until_ready", interrupting)
    result = runner.run(svgd.init(x0), 100, step_size=0.1)
    assert result.status == "interrupted"
    assert result.message == "interrupted after 20 iterations"
    assert result.num_iterations == 20 and result.trace["ksd"].shape == (20,)
    np.testing.assert_array_equal(result.particles, full.particles)


def test_bad_input_errors():
    runner = SVGDRunner(svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp)))
    state = svgd.init(jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="`step_size` must be positive; got -0.1"):
        runner.run(state, 10, step_size=-0.1)
    with pytest.raises(ValueError, match="`num_iterations` must be a positive int; got 0"):
        runner.run(state, 0)
    with pytest.raises(ValueError, match="`ksd_tol` must be positive or None; got 0.0"):
        runner.run(state, 10, ksd_tol=0.0)
    untracked = svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp), track_ksd=False)
    with pytest.raises(ValueError, match="`ksd_tol` needs the KSD: build the step with track"):
        SVGDRunner(untracked).run(state, 10, ksd_tol=0.1)  # it stopped after one step
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int; got 0"):
        SVGDRunner(lambda *a: a, chunk_size=0)


def test_a_run_is_its_steps_one_by_one_across_a_partial_last_chunk():
    """7 iterations in chunks of 4: the last chunk runs 3 steps, no more."""
    step = svgd.build_step(svgd.make_score_fn(grad_log_density_fn=lambda v: -v))
    x0 = jax.random.normal(jax.random.key(7), (6, 2))
    result = SVGDRunner(step, 4).run(svgd.init(x0), 7, step_size=0.1)
    one = jax.jit(lambda s: step(s, jnp.asarray(0.1, s.particles.dtype), None))
    state, ksd = svgd.init(x0), []
    for _ in range(7):
        state, info = one(state)
        ksd.append(float(info.ksd))
    assert result.num_iterations == 7 and result.status == "completed"
    np.testing.assert_allclose(result.particles, state.particles, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.trace["ksd"], ksd, rtol=1e-4, atol=1e-6)


def test_the_ksd_stopping_rule_reads_the_v_statistic():
    """The U-statistic falls to 0 within 6 steps here; the V-statistic passes 0.3 at 25."""
    x0 = jax.random.normal(jax.random.key(5), (20, 2))
    sgd = optax.sgd(0.2)
    step = svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp), optimizer=sgd)
    result = SVGDRunner(step, 100).run(svgd.init(x0, sgd), 300, ksd_tol=0.3)
    v = result.trace["ksd_v"]
    assert result.status == "converged" and v[-1] < 0.3 and np.all(v[:-1] >= 0.3)
    assert result.num_iterations > 10
