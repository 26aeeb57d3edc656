"""SVGD's pure step: exact invariants, minibatch scores, blocks and shards, bad input,
and the planted bugs that the Gaussian accuracy test must catch."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm.inference import svgd
from tests.inference.svgd.targets import gauss_grad, gauss_logp, is_accurate

kernel_module = importlib.import_module("dgm.inference.svgd.kernel")


def test_one_particle_is_gradient_ascent(x64):
    x0 = jnp.array([[2.0, 1.0]])
    lr = 0.3
    # optax minimises: it is given -phi, so sgd(lr) moves by +lr * phi = lr * grad log p
    step = jax.jit(
        svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp), optimizer=optax.sgd(lr))
    )
    state = svgd.init(x0, optax.sgd(lr))
    x = np.asarray(x0[0])
    for _ in range(30):
        state, info = step(state, 0.0)
        x = x + lr * np.asarray(gauss_grad(jnp.asarray(x)))
        np.testing.assert_allclose(np.asarray(state.particles[0]), x, rtol=1e-13, atol=1e-13)
    # the original rule with one particle: elementwise RMSProp-style ascent on log p
    state = svgd.init(x0)
    step = jax.jit(svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp)))
    x, hist = np.asarray(x0[0]), None
    for it in range(30):
        state, _ = step(state, 0.1)
        g = np.asarray(gauss_grad(jnp.asarray(x)))
        hist = g**2 if it == 0 else 0.9 * hist + 0.1 * g**2
        x = x + 0.1 * g / (1e-6 + np.sqrt(hist))
        np.testing.assert_allclose(np.asarray(state.particles[0]), x, rtol=1e-13, atol=1e-13)


def test_minibatch_gradient_is_rescaled(x64):
    data = jnp.arange(10.0, dtype=jnp.float64)[:, None] * jnp.ones((1, 2), jnp.float64)

    def loglik(x, batch):
        return -0.5 * jnp.sum((batch - x[None, :]) ** 2)

    def prior(x):
        return -0.05 * jnp.sum(x**2)

    score = svgd.make_score_fn(log_prior_fn=prior, log_likelihood_fn=loglik, batch_size=4)
    x = jnp.array([[0.5, -1.0]])
    for it, rows in [(0, [0, 1, 2, 3]), (2, [8, 9, 0, 1])]:
        got = score(x, jnp.asarray(it), data)
        expected = -0.1 * x + 10 / 4 * jnp.sum(data[jnp.array(rows)] - x, axis=0, keepdims=True)
        np.testing.assert_allclose(got, expected, rtol=1e-14)


def test_minibatch_window_past_two_to_the_31_rows():
    """The cyclic window at iteration 2^31 // 4 + 5 (int32 iteration counter, batch 4 of 10
    rows): rows (it·4 + k) mod 10 in Python's integers (``it * 4`` overflowed int32)."""
    data = jnp.arange(10.0)[:, None]
    score = svgd.make_score_fn(log_likelihood_fn=lambda x, b: jnp.sum(b) * x[0], batch_size=4)
    it = 2**31 // 4 + 5
    rows = [(it * 4 + k) % 10 for k in range(4)]
    got = score(jnp.zeros((1, 1)), jnp.asarray(it, jnp.int32), data)
    np.testing.assert_allclose(got, [[10 / 4 * sum(rows)]], rtol=1e-6)


def test_init_keeps_the_dtype_and_floats_integers():
    assert svgd.init(np.zeros((3, 2), np.float32)).particles.dtype == jnp.float32
    assert jnp.issubdtype(svgd.init(np.zeros((3, 2), np.int32)).particles.dtype, jnp.floating)


def test_bad_input_errors():
    with pytest.raises(
        ValueError, match=r"`particles` must be a 2-d array .* got shape \(2, 3, 4\)"
    ):
        svgd.init(np.zeros((2, 3, 4)))
    with pytest.raises(ValueError, match="`particles` needs at least one particle"):
        svgd.init(np.zeros((0, 3)))
    score = svgd.make_score_fn(log_density_fn=gauss_logp)
    with pytest.raises(ValueError, match="`bandwidth` must be positive; got -1.0"):
        svgd.build_step(score, bandwidth=-1.0)
    with pytest.raises(ValueError, match=r"`bandwidth` must be one of .* got 'mean'"):
        svgd.build_step(score, bandwidth="mean")
    with pytest.raises(ValueError, match=r"`kernel` must be one of"):
        svgd.build_step(score, kernel="linear")
    with pytest.raises(ValueError, match=r"`alpha` must lie in \[0, 1\); got 1.0"):
        svgd.build_step(score, alpha=1.0)
    with pytest.raises(ValueError, match="`block_size` must be a positive int or None; got 0"):
        svgd.build_step(score, block_size=0)
    with pytest.raises(ValueError, match="give exactly one target"):
        svgd.make_score_fn(log_density_fn=gauss_logp, grad_log_density_fn=gauss_grad)
    with pytest.raises(ValueError, match="`batch_size` must be a positive int or None; got 0"):
        svgd.make_score_fn(log_likelihood_fn=lambda x, b: 0.0, batch_size=0)
    step = jax.jit(svgd.build_step(svgd.make_score_fn(grad_log_density_fn=lambda x: x[:, 0])))
    with pytest.raises(ValueError, match=r"particles' shape \(3, 2\); got \(3,\)"):
        step(svgd.init(jnp.zeros((3, 2))), 0.1)


@pytest.mark.parametrize(("kernel", "bandwidth"), [("rbf", "median"), ("imq", "median-paper")])
def test_blocked_step_equals_dense(kernel, bandwidth):
    """Row blocks (51 particles in blocks of 16, padded) give the dense step to rounding."""
    x = jax.random.normal(jax.random.key(11), (51, 3))
    scales = jnp.arange(1.0, 4.0)
    score = svgd.make_score_fn(log_density_fn=lambda v: -0.5 * jnp.sum(v**2 * scales))
    dense = jax.jit(svgd.build_step(score, kernel=kernel, bandwidth=bandwidth))
    blocked = jax.jit(svgd.build_step(score, kernel=kernel, bandwidth=bandwidth, block_size=16))
    s_dense, s_blocked = svgd.init(x), svgd.init(x)
    rtol, atol = (1e-10, 1e-12) if x.dtype == jnp.float64 else (1e-4, 1e-5)
    for _ in range(5):
        # from the same particles the exact median is the same number; the particles
        # themselves drift apart by rounding (the kernel sums run in another order)
        _, i_same = blocked(s_dense, 0.1)
        s_dense, i_dense = dense(s_dense, 0.1)
        s_blocked, i_blocked = blocked(s_blocked, 0.1)
        assert float(i_same.bandwidth) == float(i_dense.bandwidth)  # exact median
        np.testing.assert_allclose(i_blocked.ksd, i_dense.ksd, rtol=rtol)
    np.testing.assert_allclose(s_blocked.particles, s_dense.particles, rtol=0, atol=atol)
    with pytest.raises(ValueError, match="`block_size` must be a positive int"):
        svgd.build_step(score, block_size=0)


def test_sharded_step_equals_unsharded():
    """Particles split over the 2 host CPU devices of conftest: same result, still split."""
    devices = jax.devices()
    assert len(devices) == 2
    x = jax.random.normal(jax.random.key(12), (64, 2))
    step = jax.jit(svgd.build_step(svgd.make_score_fn(grad_log_density_fn=lambda v: -v)))
    plain, sharded = svgd.init(x), svgd.shard(svgd.init(x))
    assert len(sharded.particles.sharding.device_set) == 2
    for _ in range(3):
        plain, _ = step(plain, 0.05)
        sharded, _ = step(sharded, 0.05)
    assert len(sharded.particles.sharding.device_set) == 2
    atol = 1e-12 if x.dtype == jnp.float64 else 1e-5
    np.testing.assert_allclose(sharded.particles, plain.particles, rtol=0, atol=atol)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        svgd.shard(svgd.init(x[:63]))


def _gaussian_particles():
    """The accuracy test's run (test_driver): 200 particles, 1500 steps at 0.05."""
    x0 = jax.random.normal(jax.random.key(0), (200, 2), jnp.float64)
    runner = svgd.SVGDRunner(svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp)), 500)
    return runner.run(svgd.init(x0), 1500, step_size=0.05).particles


def _without_repulsion(products, sign):
    """``_kernel_products`` with the repulsive term's pieces (K' x, K' 1) scaled by sign."""

    def planted(*args):
        ks, kpx, kp_rows, kppx, kpp_rows = products(*args)
        return ks, sign * kpx, sign * kp_rows, kppx, kpp_rows

    return planted


@pytest.mark.slow
def test_planted_bugs_are_caught(plant, x64):
    """The Gaussian accuracy test (mean within 0.1 sd, sds within 5 %, correlation within
    0.02) passes on the correct step and fails for each planted bug: the repulsive
    kernel-gradient term dropped, its sign flipped, and the bandwidth divided by 100."""
    assert is_accurate(_gaussian_particles())
    products, bandwidth_from = kernel_module._kernel_products, kernel_module.bandwidth_from
    with plant() as m:  # no repulsive term: particles collapse to the mode
        m.setattr(kernel_module, "_kernel_products", _without_repulsion(products, 0.0))
        assert not is_accurate(_gaussian_particles())
    with plant() as m:  # repulsion turned into attraction
        m.setattr(kernel_module, "_kernel_products", _without_repulsion(products, -1.0))
        assert not is_accurate(_gaussian_particles())
    with plant() as m:  # h -> h / 100
        m.setattr(kernel_module, "bandwidth_from", lambda d, bw: bandwidth_from(d, bw) / 100)
        assert not is_accurate(_gaussian_particles())
