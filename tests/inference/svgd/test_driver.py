"""Tests for SVGD: exact invariants, a Gaussian moment check, KSD, parity, errors."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dgm
from dgm.inference import _select, svgd, svgd_kernel
from dgm.inference._select import select_pair
from dgm.inference.svgd_driver import SVGDRunner, to_inference_data

# 2-d correlated Gaussian with unequal scales (sds 3 and 0.5, correlation 0.8)
SD = np.array([3.0, 0.5])
RHO = 0.8
COV = np.array([[SD[0] ** 2, RHO * SD[0] * SD[1]], [RHO * SD[0] * SD[1], SD[1] ** 2]])
MU = np.array([1.0, -2.0])
PREC = np.linalg.inv(COV)


def gauss_logp(x):
    z = x - jnp.asarray(MU)
    return -0.5 * z @ jnp.asarray(PREC) @ z


def gauss_grad(x):
    return -(x - jnp.asarray(MU)) @ jnp.asarray(PREC)


def numpy_original(x0, dlnprob, n_iter, stepsize, alpha=0.9):
    """The published update (python/svgd.py), restated in NumPy."""
    from scipy.spatial.distance import pdist, squareform

    theta = np.copy(x0)
    fudge = 1e-6
    hist = 0.0
    for it in range(n_iter):
        lnpgrad = dlnprob(theta)
        pairwise = squareform(pdist(theta)) ** 2
        h = np.median(pairwise)
        h = np.sqrt(0.5 * h / np.log(theta.shape[0] + 1))
        kxy = np.exp(-pairwise / h**2 / 2)
        dxkxy = -np.matmul(kxy, theta)
        sumkxy = np.sum(kxy, axis=1)
        for i in range(theta.shape[1]):
            dxkxy[:, i] = dxkxy[:, i] + np.multiply(theta[:, i], sumkxy)
        dxkxy = dxkxy / (h**2)
        grad_theta = (np.matmul(kxy, lnpgrad) + dxkxy) / x0.shape[0]
        if it == 0:
            hist = hist + grad_theta**2
        else:
            hist = alpha * hist + (1 - alpha) * (grad_theta**2)
        theta = theta + stepsize * grad_theta / (fudge + np.sqrt(hist))
    return theta


@pytest.fixture(scope="module")
def gaussian_run():
    """200 particles, 1500 steps of the original rule on the correlated Gaussian."""
    x0 = jax.random.normal(jax.random.key(0), (200, 2), jnp.float64)
    runner = SVGDRunner(svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp)), 500)
    result = runner.run(svgd.init(x0), 1500, step_size=0.05)
    scores = jax.vmap(jax.grad(gauss_logp))
    return x0, result, float(svgd.ksd(x0, scores(x0))), runner


def test_one_particle_is_gradient_ascent():
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


def _moment_errors(x):
    mean_err = np.abs(x.mean(0) - MU) / SD
    sd_err = np.abs(x.std(0, ddof=1) - SD) / SD
    corr_err = abs(np.corrcoef(x.T)[0, 1] - RHO)
    return mean_err, sd_err, corr_err


def test_gaussian_moments_within_fraction_of_sd(gaussian_run):
    """Mean within 0.1 sd, sds within 5 %, correlation within 0.02 (200 particles).

    Calibration (``test_gaussian_moments_calibration``, seeds 0-49, correct code): worst
    mean error 0.051 sd, worst sd error 1.0 %, worst correlation error 0.0015. Dropping
    the repulsive term fails this test (particles collapse to the mode).
    """
    _, result, _, _ = gaussian_run
    assert result.status == "completed" and result.num_iterations == 1500
    mean_err, sd_err, corr_err = _moment_errors(result.particles)
    assert np.all(mean_err < 0.1), mean_err
    assert np.all(sd_err < 0.05), sd_err
    assert corr_err < 0.02, corr_err


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_gaussian_moments_calibration(seed, gaussian_run):
    _, _, _, runner = gaussian_run
    x0 = jax.random.normal(jax.random.key(seed), (200, 2), jnp.float64)
    mean_err, sd_err, corr_err = _moment_errors(runner.run(svgd.init(x0), 1500, 0.05).particles)
    assert np.all(mean_err < 0.1) and np.all(sd_err < 0.05) and corr_err < 0.02


def test_ksd_falls_by_factor_10(gaussian_run):
    x0, result, ksd0, _ = gaussian_run
    scores = jax.vmap(jax.grad(gauss_logp))
    final = float(svgd.ksd(result.state.particles, scores(result.state.particles)))
    assert final < ksd0 / 10, (ksd0, final)
    np.testing.assert_allclose(result.trace["ksd"][0], ksd0, rtol=1e-10)
    assert result.trace["ksd"].shape == (1500,)


def test_runner_compiles_once(gaussian_run):
    _, _, _, runner = gaussian_run
    x1 = jax.random.normal(jax.random.key(1), (200, 2), jnp.float64)
    runner.run(svgd.init(x1), 700, step_size=0.01)
    runner.run(svgd.init(x1), 20, step_size=jnp.asarray(0.2))
    assert runner.num_traces == 1


def test_parity_with_published_update():
    rng = np.random.default_rng(3)
    x0 = rng.normal(size=(30, 2))
    A = np.array([[0.2260, 0.1652], [0.1652, 0.6779]])
    mu = np.array([-0.6871, 0.8010])

    def dlnprob(theta):  # NumPy only: runs through the per-iteration path
        return -np.matmul(theta - mu, A)

    expected = numpy_original(x0, dlnprob, 100, 0.05)
    x0_copy = x0.copy()
    got = dgm.SVGD().update(x0, dlnprob, n_iter=100, stepsize=0.05)
    np.testing.assert_array_equal(x0, x0_copy)
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    got_jax = dgm.SVGD().update(x0, lambda t: -(t - mu) @ A, n_iter=100, stepsize=0.05)
    np.testing.assert_allclose(got_jax, expected, atol=1e-6, rtol=0)
    assert np.abs(expected - x0).max() > 0.1  # the comparison is not vacuous


@pytest.mark.parametrize("m", [1, 2, 7, 64, 99, 100])
def test_exact_median_matches_numpy(m):
    x = np.round(np.random.default_rng(m).exponential(size=m), 1)  # ties included
    x[: m // 3] = 0.0
    assert float(jax.jit(svgd.median)(jnp.asarray(x))) == np.median(x)


@pytest.mark.parametrize("n", [2, 3, 200, 1000])
def test_exact_median_of_pairwise_distances(n):
    """The median trick's median over all n^2 entries (zeros, symmetric duplicates)."""
    x = np.random.default_rng(n).normal(size=(n, 2)) * np.array([0.3, 2.0])
    d = svgd.squared_distances(jnp.asarray(x))
    assert float(jax.jit(svgd.median)(d.reshape(-1))) == np.median(np.asarray(d))
    d32 = d.astype(jnp.float32)
    assert float(jax.jit(svgd.median)(d32.reshape(-1))) == np.median(np.asarray(d32))
    if n == 1000:  # speed guard, deterministic: plain bisection on the bits took 17
        _, _, passes = jax.jit(select_pair, static_argnums=1)(d.reshape(-1), n * n // 2)
        assert int(passes) <= 10
        # and on the fold, which the default "median" bandwidth counts over
        fold_select = jax.jit(_select.select_pair_folded, static_argnums=(1, 2))
        _, _, passes = fold_select(
            svgd_kernel._fold(d), svgd_kernel._fold_extra_zeros(n), n * n // 2
        )
        assert int(passes) <= 10


@pytest.mark.parametrize("n", [2, 3, 4, 7, 10, 51, 1001])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_folded_selection_equals_full(n, dtype, monkeypatch):
    """Order statistics of all n^2 distances from the folded upper triangle (odd and
    even n, ties, coinciding particles; float64 at 1001 particles takes the float32
    guess): the same values as sorting the whole matrix."""
    if n == 1001:
        monkeypatch.setattr(_select, "_FOLDED_GUESS_MIN_SIZE", 2**18)

    def fold_select(d, k):
        zeros = svgd_kernel._fold_extra_zeros(d.shape[0])
        return _select.select_pair_folded(svgd_kernel._fold(d), zeros, k)[:2]

    fold_select = jax.jit(fold_select)
    m = n * n
    ks = [1, n, n + 1, (m + 1) // 2, m // 2 + 1, m]
    for case in ("distinct", "ties", "coinciding"):
        x = np.random.default_rng(n).normal(size=(n, 2))
        if case == "ties":
            x = np.round(x, 1)
        elif case == "coinciding":
            x[: n // 2] = x[0]
        d = svgd.squared_distances(jnp.asarray(x, dtype))
        srt = np.sort(np.asarray(d).reshape(-1))
        for k in ks if n > 10 else range(1, m + 1):
            a, b = fold_select(d, jnp.asarray(k, jnp.int32))
            assert (float(a), float(b)) == (srt[k - 1], srt[min(k, m - 1)]), (case, k)


@pytest.mark.parametrize("dim", [2, 55])
def test_squared_distances_symmetric_with_zero_diagonal(dim):
    """The folded median counts each pair once: it needs D == D^T bit for bit, from
    coordinate differences (few dims) and from the Gram product (many)."""
    for dtype in (jnp.float32, jnp.float64):
        x = jnp.asarray(np.random.default_rng(dim).normal(size=(300, dim)), dtype)
        d = np.asarray(jax.jit(svgd.squared_distances)(x))
        assert np.array_equal(d, d.T)
        assert (np.diag(d) == 0).all() and (d >= 0).all()
        ref = np.sum((np.asarray(x, np.float64)[:, None] - np.asarray(x, np.float64)) ** 2, -1)
        np.testing.assert_allclose(d, ref, rtol=1e-5 if dtype == jnp.float32 else 1e-12, atol=1e-4)


def test_order_statistics_every_rank_with_ties():
    x = np.round(np.random.default_rng(3).exponential(size=40), 1)
    x[:7] = 0.0
    srt = np.sort(x)
    pair = jax.jit(select_pair)  # k traced: one compilation for every rank
    for k in range(1, 41):
        a, b, _ = pair(jnp.asarray(x), jnp.asarray(k))
        assert float(a) == srt[k - 1]
        assert float(b) == srt[min(k, 39)]
    same = jnp.full((9,), 2.5)
    assert float(svgd.median(same)) == 2.5
    # distinct values: the early stops (k is the bracket's last rank, or the bracket
    # holds exactly ranks k and k+1) give the same pair
    y = np.random.default_rng(4).exponential(size=33)
    srt = np.sort(y)
    for k in range(1, 34):
        a, b, _ = pair(jnp.asarray(y), jnp.asarray(k))
        assert (float(a), float(b)) == (srt[k - 1], srt[min(k, 32)])


@pytest.mark.parametrize("case", ["float32-ties", "beyond-float32", "zeros"])
def test_float64_selection_from_a_float32_guess_stays_exact(case, monkeypatch):
    """Large float64 inputs start from the k-th of their float32 rounding: values that
    float32 cannot tell apart, overflow it, or are zero must not change the result."""
    monkeypatch.setattr(_select, "_GUESS_MIN_SIZE", 1000)
    rng = np.random.default_rng(5)
    m = 6001
    if case == "float32-ties":
        x = 1.0 + rng.permutation(m) * 1e-13  # all round to 1.0 in float32
    elif case == "beyond-float32":
        x = rng.exponential(size=m) * 1e39
    else:
        x = rng.exponential(size=m)
        x[: m // 2 + 10] = 0.0
    srt = np.sort(x)
    pair = jax.jit(select_pair)
    for k in (1, m // 2, m // 2 + 1, m // 2 + 11, m - 1, m):
        a, b, _ = pair(jnp.asarray(x), jnp.asarray(k))
        assert (float(a), float(b)) == (srt[k - 1], srt[min(k, m - 1)])
    assert float(jax.jit(svgd.median)(jnp.asarray(x))) == np.median(x)


def test_bandwidth_variants():
    x = jax.random.normal(jax.random.key(2), (9, 3), jnp.float64)
    d = np.asarray(svgd.squared_distances(x))
    bandwidth_from = jax.jit(svgd.bandwidth_from, static_argnums=1)
    h = float(bandwidth_from(jnp.asarray(d), "median"))
    np.testing.assert_allclose(h, np.median(d) / np.log(10.0), rtol=1e-14)
    iu = np.triu_indices(9, 1)
    hp = float(bandwidth_from(jnp.asarray(d), "median-paper"))
    np.testing.assert_allclose(hp, np.median(np.sqrt(d[iu])) ** 2 / np.log(9.0), rtol=1e-12)
    same = jnp.zeros((4, 2), jnp.float64)
    assert float(svgd.bandwidth_from(svgd.squared_distances(same), "median")) == 1.0


@pytest.mark.parametrize(("kernel", "bandwidth"), [("imq", "median"), ("rbf", "median-paper")])
def test_other_kernels_reduce_ksd(kernel, bandwidth):
    x0 = jax.random.normal(jax.random.key(4), (50, 2), jnp.float64)
    step = svgd.build_step(
        svgd.make_score_fn(grad_log_density_fn=jax.vmap(gauss_grad)),
        kernel=kernel,
        bandwidth=bandwidth,
        optimizer=optax.adam(0.05),
    )
    result = SVGDRunner(step, 200).run(svgd.init(x0, optax.adam(0.05)), 400)
    assert result.trace["ksd"][-1] < result.trace["ksd"][0] / 5


def test_minibatch_gradient_is_rescaled():
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


def test_stopping_rule_and_arviz():
    x0 = jax.random.normal(jax.random.key(5), (40, 2), jnp.float64)
    # plain gradient steps: the move vanishes at the fixed point (the original rule's
    # normalised steps keep a move of about the step size)
    sgd = optax.sgd(0.2)
    step = svgd.build_step(svgd.make_score_fn(log_density_fn=gauss_logp), optimizer=sgd)
    result = SVGDRunner(step, 100).run(svgd.init(x0, sgd), 5000, update_tol=1e-3)
    assert result.status == "converged"
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

    x0 = jnp.zeros((5, 1), jnp.float64) + jnp.arange(5.0, dtype=jnp.float64)[:, None] * 0.1
    runner = SVGDRunner(svgd.build_step(svgd.make_score_fn(grad_log_density_fn=grad)), 16)
    result = runner.run(svgd.init(x0), 500, step_size=0.1)
    assert result.status == "non-finite"
    n = result.num_iterations
    assert 0 < n < 500
    assert f"non-finite particles at iteration {n + 1}" in result.message
    assert np.all(np.isfinite(result.particles)) and np.any(result.particles > 3.0)
    with pytest.warns(RuntimeWarning, match=r"non-finite particles at iteration \d+"):
        out = dgm.SVGD().update(np.asarray(x0), grad, n_iter=500, stepsize=0.1)
    assert np.all(np.isfinite(out))


def test_compat_runner_chunk_follows_n_iter():
    """A short first call must not fix the chunk size of later, longer runs."""
    parity = dgm.SVGD()
    x0 = np.random.default_rng(0).normal(size=(5, 2))
    grad = lambda x: -x  # noqa: E731
    parity.update(x0, grad, n_iter=3)
    parity.update(x0, grad, n_iter=2000)
    assert sorted(r.chunk_size for r in parity._runners.values()) == [3, 1000]


def test_bad_input_errors():
    parity = dgm.SVGD()
    with pytest.raises(ValueError, match=r"`x0` must be a 2-d array .* got shape \(3,\)"):
        parity.update(np.zeros(3), lambda x: -x, n_iter=2)
    with pytest.raises(ValueError, match=r"particles' shape \(4, 2\); got \(4,\)"):
        parity.update(np.ones((4, 2)), lambda x: -x[:, 0], n_iter=2)
    with pytest.raises(ValueError, match=r"particles' shape \(4, 2\); got \(2,\)"):
        parity.update(np.ones((4, 2)), lambda x: -np.sum(x, 0), n_iter=2)
    with pytest.raises(ValueError, match="`stepsize` must be positive; got 0"):
        parity.update(np.ones((4, 2)), lambda x: -x, stepsize=0.0)
    with pytest.raises(ValueError, match="`bandwidth` must be positive"):
        parity.update(np.ones((4, 2)), lambda x: -x, bandwidth=0)
    with pytest.raises(ValueError, match="at least one particle"):
        parity.update(np.ones((0, 2)), lambda x: -x)
    with pytest.raises(ValueError, match="`n_iter` must be a positive int; got 0"):
        parity.update(np.ones((4, 2)), lambda x: -x, n_iter=0)
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
    with pytest.raises(ValueError, match="give exactly one target"):
        svgd.make_score_fn(log_density_fn=gauss_logp, grad_log_density_fn=gauss_grad)
    runner = SVGDRunner(svgd.build_step(score))
    state = svgd.init(jnp.zeros((3, 2), jnp.float64))
    with pytest.raises(ValueError, match="`step_size` must be positive; got -0.1"):
        runner.run(state, 10, step_size=-0.1)
    with pytest.raises(ValueError, match="`num_iterations` must be a positive int; got 0"):
        runner.run(state, 0)


def test_import_creates_no_jax_state():
    code = "import sys, dgm; assert 'jax' not in sys.modules; print(dgm.SVGD.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SVGD"


@pytest.mark.parametrize(("kernel", "bandwidth"), [("rbf", "median"), ("imq", "median-paper")])
def test_blocked_step_equals_dense(kernel, bandwidth):
    """Row blocks (51 particles in blocks of 16, padded) give the dense step to rounding."""
    x = jax.random.normal(jax.random.key(11), (51, 3))
    scales = jnp.arange(1.0, 4.0)
    score = svgd.make_score_fn(log_density_fn=lambda v: -0.5 * jnp.sum(v**2 * scales))
    dense = jax.jit(svgd.build_step(score, kernel=kernel, bandwidth=bandwidth))
    blocked = jax.jit(svgd.build_step(score, kernel=kernel, bandwidth=bandwidth, block_size=16))
    s_dense, s_blocked = svgd.init(x), svgd.init(x)
    for _ in range(5):
        # from the same particles the exact median is the same number; the particles
        # themselves drift apart by rounding (the kernel sums run in another order)
        _, i_same = blocked(s_dense, 0.1)
        s_dense, i_dense = dense(s_dense, 0.1)
        s_blocked, i_blocked = blocked(s_blocked, 0.1)
        assert float(i_same.bandwidth) == float(i_dense.bandwidth)  # exact median
        np.testing.assert_allclose(i_blocked.ksd, i_dense.ksd, rtol=1e-10)
    np.testing.assert_allclose(s_blocked.particles, s_dense.particles, rtol=0, atol=1e-12)
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
    np.testing.assert_allclose(sharded.particles, plain.particles, rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="multiple of the number of devices"):
        svgd.shard(svgd.init(x[:63]))
