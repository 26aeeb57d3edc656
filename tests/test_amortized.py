"""``dgm.amortize``: an amortized IAF posterior trained by simulation, checked against the
exact posterior of a linear-Gaussian model for observations it never saw."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dgm
from dgm.inference.additive_noise import AdditiveNoise
from dgm.inference.vi import build_train_step, init
from dgm.models.amortized import AmortizedPosterior

A = np.random.default_rng(0).normal(size=(5, 2))
SIGMA = 0.3
NOISE = AdditiveNoise(lambda z: jnp.asarray(A, z.dtype) @ z, 2, 5, SIGMA)


def _exact(y):
    """The exact posterior of z ~ N(0, I), y = A z + σ n: mean and covariance."""
    cov = np.linalg.inv(np.eye(2) + A.T @ A / SIGMA**2)
    return cov @ A.T @ np.asarray(y, np.float64) / SIGMA**2, cov


@pytest.fixture(scope="module")
def trained():
    return dgm.amortize(NOISE.log_joint, NOISE.simulate, 2, key=jax.random.key(0), num_steps=2000)


def test_training_ran_and_the_loss_fell(trained):
    assert trained.status == "completed" and trained.num_steps == 2000
    assert trained.losses.shape == (2000,) and np.all(np.isfinite(trained.losses))
    assert trained.losses[-200:].mean() < trained.losses[:50].mean() - 5
    assert trained.compile_s > 0 and trained.wall_s > 0


@pytest.mark.parametrize("seed", [100, 101, 102])
def test_unseen_observations_get_the_exact_posterior(trained, seed):
    """For a new y: q's own moments are within 0.15 posterior sd of the exact ones, nearly
    every draw counts (Kish ESS), and the importance-weighted mean is within 4 standard
    errors of the exact mean. Calibrated on seeds 100-109: worst offsets 0.08 sd (mean) and
    3 % (sd), ESS ≥ 3,910 of 4,000, worst z 2.8. A q that ignores y (its input scale set
    to 1e9) fails all three: offsets 6.5 sd, ESS 1, z 6.5."""
    y = NOISE.simulate(jax.random.key(seed))
    idata = trained.sample(jax.random.key(seed), y, num_samples=4000)
    z = idata.posterior["z"].values[0].astype(np.float64)
    mean, cov = _exact(y)
    sd = np.sqrt(np.diag(cov))
    assert np.all(np.abs(z.mean(0) - mean) < 0.15 * sd), (z.mean(0), mean, sd)
    assert np.all(np.abs(z.std(0) / sd - 1) < 0.1), (z.std(0), sd)
    log_w = idata.sample_stats["log_weight"].values[0]
    w = np.exp(log_w - log_w.max())
    w /= w.sum()
    ess = idata.posterior.attrs["ess_importance"]
    assert ess > 3000
    is_mean = w @ z
    assert np.all(np.abs(is_mean - mean) < 4 * sd / np.sqrt(ess)), (is_mean, mean)


def test_log_evidence_is_the_marginal_likelihood(trained):
    """log p(y) of the linear-Gaussian model is N(y; 0, A Aᵀ + σ² I): the importance estimate
    from 4000 draws of a good q is within 0.05 nats."""
    y = NOISE.simulate(jax.random.key(7))
    cov = A @ A.T + SIGMA**2 * np.eye(5)
    exact = -0.5 * (y @ np.linalg.solve(cov, y) + np.linalg.slogdet(2 * np.pi * cov)[1])
    est = trained.sample(jax.random.key(8), y, num_samples=4000).posterior.attrs["log_evidence"]
    assert abs(est - exact) < 0.05, (est, exact)


def test_saved_q_loads_and_draws_the_same(trained, tmp_path):
    """save/load round trip: the same draws for the same key; another kind of model file and
    a truncated file are refused with their path."""
    from dgm import amortized

    path = tmp_path / "q.eqx"
    trained.save(path)
    loaded = amortized.load(path, NOISE.log_joint)
    assert loaded.num_steps == 2000 and loaded.options == trained.options
    y = NOISE.simulate(jax.random.key(5))
    a, b = (r.sample(jax.random.key(6), y, num_samples=50) for r in (trained, loaded))
    np.testing.assert_array_equal(a.posterior["z"].values, b.posterior["z"].values)
    np.testing.assert_array_equal(a.sample_stats["log_weight"], b.sample_stats["log_weight"])
    data = path.read_bytes()
    (tmp_path / "short.eqx").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="short.eqx"):
        amortized.load(tmp_path / "short.eqx", NOISE.log_joint)
    (tmp_path / "other.eqx").write_bytes(data.replace(b"amortized-posterior", b"dmm", 1))
    with pytest.raises(ValueError, match="of kind 'dmm'; expected 'amortized-posterior'"):
        amortized.load(tmp_path / "other.eqx", NOISE.log_joint)


def test_refine_fits_one_observation_and_compiles_once():
    """A q trained for 100 steps only, refined on one observation (500 steps at learning
    rate 0.01): the importance ESS rises from under 1,000 to over 3,000 of 4,000 and the
    mean comes within 0.1 sd of the exact one (observations of seeds 11-20: ESS 1-2,355
    before, 3,849-3,993 after, offsets ≤ 0.018 sd); refining for a second observation with
    the same settings compiles nothing. The original q is unchanged."""
    short = dgm.amortize(NOISE.log_joint, NOISE.simulate, 2, key=jax.random.key(4), num_steps=100)
    ys = [NOISE.simulate(jax.random.key(s)) for s in (11, 12)]
    before = short.sample(jax.random.key(0), ys[0], num_samples=4000).posterior
    refined = short.refine(jax.random.key(1), ys[0], num_steps=500, learning_rate=0.01)
    after = refined.sample(jax.random.key(0), ys[0], num_samples=4000).posterior
    assert before.attrs["ess_importance"] < 1000 < 3000 < after.attrs["ess_importance"]
    mean, cov = _exact(ys[0])
    offset = np.abs(after["z"].values[0].mean(0) - mean) / np.sqrt(np.diag(cov))
    assert np.all(offset < 0.1), offset
    assert refined.status == "completed" and refined.num_steps == 500 and refined.compile_s > 0
    again = short.refine(jax.random.key(2), ys[1], num_steps=500, learning_rate=0.01)
    assert again.compile_s == 0 and again.num_steps == 500
    z0 = short.sample(jax.random.key(0), ys[0], num_samples=10).posterior["z"].values
    np.testing.assert_allclose(z0, before["z"].values[:, :10], atol=1e-5)


def test_non_finite_steps_are_skipped_and_ten_in_a_row_stop_training():
    """A log joint that is NaN for z₀ > 2.5 (a few draws of q in a hundred steps): those
    steps are skipped and training completes, saying how many it skipped. One that is NaN
    everywhere: the first ten steps are skipped, training stops there, and q stays as it
    was, finite."""

    def simulate(key):
        return jax.random.normal(key, (2,))

    def rare_nan(z, y):
        lp = -0.5 * jnp.sum(z**2) - 0.5 * jnp.sum((y - z[0]) ** 2)
        return jnp.where(z[0] > 2.5, jnp.nan, lp)

    result = dgm.amortize(rare_nan, simulate, 1, key=jax.random.key(0), num_steps=1000)
    assert result.status == "completed" and result.num_steps == 1000
    skipped = int(np.sum(~np.isfinite(result.losses)))
    assert skipped > 0 and f"; {skipped} non-finite steps skipped" in result.message

    def all_nan(z, y):
        return jnp.nan * jnp.sum(z)

    result = dgm.amortize(all_nan, simulate, 1, key=jax.random.key(0), num_steps=3000)
    assert result.status == "non-finite" and "non-finite loss or parameters" in result.message
    assert result.num_steps == dgm.amortized.MAX_NON_FINITE_IN_A_ROW
    assert "stopped and kept q after step 0" in result.message
    leaves = jax.tree.leaves(jax.tree.map(np.asarray, result.q))
    assert all(np.all(np.isfinite(a)) for a in leaves if np.issubdtype(a.dtype, np.floating))


def test_an_untrained_q_shows_in_its_weights():
    """An untrained q on an observation far from its prior guess: few effective draws and a
    large Pareto k."""
    q = AmortizedPosterior(2, 5, key=jax.random.key(1))
    result = dgm.Amortized(q, NOISE.log_joint, {}, np.zeros(0), 0)
    idata = result.sample(jax.random.key(2), jnp.asarray(A @ np.array([2.0, -2.0])))
    assert idata.posterior.attrs["pareto_k"] > 0.7
    assert idata.posterior.attrs["ess_importance"] < 50


def test_resampled_draws_estimate_the_posterior_where_q_is_off():
    """An untrained q is far from the posterior: its raw mean misses the exact one by
    more than one posterior sd. ``resample=True`` draws q's own draws again in proportion
    to their weights: the same q draws and attributes, and the plain mean of the kept
    draws within 5 standard errors (sd / √ESS) of the exact mean. Keys 0-19: worst |z|
    2.19, ESS 673-747 of 4,000. Planted bug (uniform picks instead of weighted ones):
    the worse coordinate is 34-40 standard errors off on every key."""
    q = AmortizedPosterior(2, 5, key=jax.random.key(1))
    result = dgm.Amortized(q, NOISE.log_joint, {}, np.zeros(0), 0)
    y = jnp.asarray(A @ np.array([0.4, -0.3]))
    kw = dict(num_samples=4000)
    raw = result.sample(jax.random.key(0), y, **kw)
    resampled = result.sample(jax.random.key(0), y, resample=True, **kw)
    for name in ("pareto_k", "ess_importance", "elbo", "log_evidence"):
        assert raw.posterior.attrs[name] == resampled.posterior.attrs[name], name
    z_raw, z = (d.posterior["z"].values[0].astype(np.float64) for d in (raw, resampled))
    assert {tuple(row) for row in z} <= {tuple(row) for row in z_raw}
    mean, cov = _exact(y)
    sd = np.sqrt(np.diag(cov))
    assert np.any(np.abs(z_raw.mean(0) - mean) > sd)
    ess = raw.posterior.attrs["ess_importance"]
    assert np.all(np.abs(z.mean(0) - mean) < 5 * sd / np.sqrt(ess)), (z.mean(0), mean, ess)
    with pytest.raises(ValueError, match="`resample` must be True or False; got 'yes'"):
        result.sample(jax.random.key(0), y, resample="yes")


def _good(**kwargs):
    args = {
        "log_joint_fn": NOISE.log_joint,
        "simulate_fn": NOISE.simulate,
        "latent_dim": 2,
        "key": jax.random.key(0),
        "num_steps": 1,
    }
    return args | kwargs


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_joint_fn": None}, "`log_joint_fn` must be callable"),
        ({"simulate_fn": 1.0}, "`simulate_fn` must be callable"),
        ({"simulate_fn": lambda key: jax.random.normal(key, (2, 2))}, "as a vector"),
        ({"simulate_fn": lambda key: jnp.full(3, jnp.nan)}, "`simulate_fn` returned NaN"),
        ({"log_joint_fn": lambda z, y: z}, r"`log_joint_fn\(z, y\)` must return a scalar"),
        ({"latent_dim": 0}, "`latent_dim`"),
        ({"num_steps": 2.5}, "`num_steps`"),
        ({"num_flows": -1}, "`num_flows` must be an int >= 0"),
        ({"learning_rate": 0.0}, "`learning_rate`"),
        ({"hidden_size": 0}, "`hidden_size`"),
        ({"key": 3}, "key"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        dgm.amortize(**_good(**kwargs))


def test_bad_observation_is_refused(trained):
    with pytest.raises(ValueError, match=r"`y_obs` must be a vector of length 5"):
        trained.sample(jax.random.key(0), jnp.zeros(4))
    with pytest.raises(ValueError, match="`y_obs` must be finite"):
        trained.sample(jax.random.key(0), jnp.full(5, jnp.inf))


def test_additive_noise_log_joint_and_simulator():
    """log_joint = latent_log_density + the Gaussian constants; the simulator's y has the
    model's covariance A Aᵀ + σ² I (4000 draws, every entry within 4 standard errors)."""
    z, y = jnp.array([0.3, -0.2]), jnp.arange(5.0) / 5
    const = -3.5 * np.log(2 * np.pi) - 5 * np.log(SIGMA)
    np.testing.assert_allclose(
        NOISE.log_joint(z, y), NOISE.latent_log_density(z, y) + const, rtol=1e-6
    )
    ys = np.asarray(jax.vmap(NOISE.simulate)(jax.random.split(jax.random.key(3), 4000)), float)
    cov = A @ A.T + SIGMA**2 * np.eye(5)
    se = np.sqrt((cov**2 + np.outer(np.diag(cov), np.diag(cov))) / 4000)
    assert np.all(np.abs(np.cov(ys.T) - cov) < 4 * se)


def test_failed_simulations_are_left_out():
    """A simulator that fails (returns NaN) for 5 % of its draws, independently of z: the
    model given success is the same, so q trains to the end and still matches the exact
    posterior. Without leaving failures out, most steps (64 draws each) hold a failed one,
    are skipped, and ten in a row stop training."""

    def flaky(key):
        key_y, key_fail = jax.random.split(key)
        y = NOISE.simulate(key_y)
        return jnp.where(jax.random.uniform(key_fail) < 0.05, jnp.nan, y)

    result = dgm.amortize(NOISE.log_joint, flaky, 2, key=jax.random.key(0), num_steps=2000)
    assert result.status == "completed" and result.num_steps == 2000
    y = A @ np.array([0.7, -0.4]) + SIGMA * np.random.default_rng(5).normal(size=5)
    mean, cov = _exact(y)
    z = result.sample(jax.random.key(1), jnp.asarray(y), num_samples=4000).posterior["z"]
    offset = np.abs(z.values.reshape(-1, 2).mean(0) - mean) / np.sqrt(np.diag(cov))
    assert np.all(offset < 0.1), offset


class _PointQ(eqx.Module):
    """A q that puts all its mass at ``mu`` (log q = 0): the ELBO is log p(mu, y)."""

    mu: jax.Array

    def sample_and_log_prob(self, y, *, key):
        return self.mu, jnp.zeros((), self.mu.dtype)


def test_vi_loss_and_gradient_are_means_over_the_finite_rows():
    """``build_train_step``'s loss is the negative ELBO averaged over the finite rows of the
    batch only, and so is its gradient: with a point-mass q and log p = −½|y − z|², two
    finite rows and one failed (NaN) row give loss ½ mean|y − mu|² over the two, and one
    SGD step (rate 1) moves mu to their mean. Dividing by all three rows scales both by
    2/3 (the failure-rate test above cannot see this: Adam is invariant to the scale)."""
    q = _PointQ(jnp.asarray([0.5, -0.5]))
    ys = jnp.asarray([[1.0, 2.0], [jnp.nan, 0.0], [3.0, -1.0]])
    optimizer = optax.sgd(1.0)
    step = build_train_step(lambda z, y: -0.5 * jnp.sum((y - z) ** 2), optimizer)
    new_q, _, info = step(q, init(q, optimizer), ys, jax.random.key(0))
    good = np.asarray(ys)[[0, 2]]
    expected = 0.5 * np.mean(np.sum((good - np.asarray(q.mu)) ** 2, axis=1))
    np.testing.assert_allclose(float(info.loss), expected, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(new_q.mu), good.mean(0), rtol=1e-6)
