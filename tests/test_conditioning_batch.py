"""Many observations, one compiled program: ``posterior.sample(..., y_obs=...)``.

A new observation of the same shape, and the same generator conditioned again, reuse the
compiled sampler (no new executable, ``compile_s == 0``); a ``(num_obs, N)`` batch runs as
one job whose per-observation draws equal separate calls with the split keys, bit for bit;
bad batches and a rank-deficient generator are refused with clear errors.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.inference import chmc_driver

KW = dict(num_chains=2, num_samples=6, step_size=0.5, num_steps=(1, 3), progress_bar=False)
Y = np.array([[1.0], [2.0], [0.5]])


def ring(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


@pytest.fixture(scope="module")
def posterior():
    return dgm.condition(ring, [1.0], 3)


@pytest.fixture(scope="module")
def batch(posterior):
    return posterior.sample(jax.random.key(1), y_obs=Y, **KW)


def test_batch_has_an_obs_dimension(batch):
    assert batch.posterior["u"].dims == ("chain", "draw", "obs", "u_dim")
    assert batch.posterior["u"].shape == (2, 6, 3, 3)
    assert batch.sample_stats["acceptance_rate"].dims == ("chain", "draw", "obs")
    assert batch.observed_data["y"].dims == ("obs", "y_dim")
    np.testing.assert_array_equal(batch.observed_data["y"].values, Y)
    radius = np.linalg.norm(batch.posterior["u"].values, axis=-1)  # each on its own sphere
    np.testing.assert_allclose(radius, np.broadcast_to(Y[:, 0], radius.shape), atol=1e-7)


def test_named_axes_of_a_derived_quantity_follow_the_obs_dimension():
    posterior = dgm.condition(
        ring, [1.0], 3, derived={"sq": lambda u: u * u, "r": ring}, dims={"sq": "axis"}
    )
    one = posterior.sample(jax.random.key(1), **KW)
    assert one.posterior["sq"].dims == ("chain", "draw", "axis")
    assert one.posterior["r"].dims == ("chain", "draw", "r_dim_0")  # ArviZ's default name
    many = posterior.sample(jax.random.key(1), y_obs=Y, **KW)
    assert many.posterior["sq"].dims == ("chain", "draw", "obs", "axis")
    np.testing.assert_allclose(many.posterior["sq"].values.sum(-1), np.broadcast_to(
        Y[:, 0] ** 2, (2, 6, 3)), rtol=1e-6)  # fmt: skip


def test_batch_equals_separate_calls_with_the_split_keys(posterior, batch, full_optimization):
    """Bit for bit as users' programs are compiled (``DGM_TEST_FULL_OPTIMIZATION=1``); the
    suite's fast-compile flags (conftest) round the batched program differently, in the 13th
    digit (a wrong key or observation would move the draws by O(1))."""
    keys = jax.random.split(jax.random.key(1), len(Y))
    for i, key in enumerate(keys):
        one = posterior.sample(key, y_obs=Y[i], **KW)
        np.testing.assert_allclose(
            one.posterior["u"].values, batch.posterior["u"].values[:, :, i],
            rtol=0 if full_optimization else 1e-12, atol=0,
        )  # fmt: skip
        if i > 0:  # 2 chains, not the batch's 6, compiled once; a new observation: nothing
            assert one.posterior.attrs["compile_s"] == 0.0


def test_conditioning_again_does_not_recompile(posterior, batch):
    del batch  # compiled the fixed-step runner first
    posterior.sample(jax.random.key(0), **KW)
    runners = posterior._runners
    compiles = sum(r.num_compiles for r in runners.values())
    again = dgm.condition(ring, [1.7], 3)  # same generator, another observation
    idata = again.sample(jax.random.key(2), **KW)
    assert again._runners.keys() == runners.keys()
    assert sum(r.num_compiles for r in again._runners.values()) == compiles
    assert idata.posterior.attrs["compile_s"] == 0.0
    other = dgm.condition(lambda u: ring(u), [1.0], 3)  # another function: its own runner
    assert not other._runners


@pytest.mark.parametrize(
    "y_obs, match",
    [
        (np.ones((3, 2)), r"`y_obs` must have shape \(1,\) or \(num_obs, 1\).*got \(3, 2\)"),
        (np.ones((2, 1, 1)), r"`y_obs` must have shape .*got \(2, 1, 1\)"),
        (np.array([[1.0], [np.nan], [2.0]]), r"`y_obs` must be finite; row 1 contains NaN"),
        (np.array([np.inf]), r"`y_obs` must be finite; contains NaN or inf"),
    ],
)
def test_bad_observation_batches(posterior, y_obs, match):
    with pytest.raises(ValueError, match=match):
        posterior.sample(jax.random.key(0), y_obs=y_obs, **KW)


def test_batch_init_of_the_wrong_shape(posterior):
    with pytest.raises(ValueError, match=r"`init` must have shape \(3, 2, 3\)"):
        posterior.sample(jax.random.key(0), y_obs=Y, init=np.ones((2, 3)), **KW)


def test_rank_deficient_jacobian_names_the_rank():
    def twice(u):  # the second output is a function of the first: rank 1 < 2
        s = jnp.sum(u)
        return jnp.stack([s, 2.0 * s])

    posterior = dgm.condition(twice, [1.0, 2.0], 3)
    with pytest.raises(ValueError, match=r"Jacobian at a prior draw \(chain \d\) has rank 1 < 2"):
        posterior.sample(jax.random.key(0), **KW)


def test_runner_cache_is_bounded():
    assert len(chmc_driver._RUNNERS) <= chmc_driver.MAX_CACHED_RUNNERS


def parabola(u):  # J = [1, 2u₂, 0]: ½ log det(J Jᵀ) = ½ log(1 + 4 u₂²) varies on the manifold
    return (u[0] + u[1] ** 2)[None]


def parabola_half_log_det(u, y):
    """½ log det(J Jᵀ) written through the observation (u₂² = y − u₁): exact on G(u) = y only."""
    return 0.5 * jnp.log1p(4.0 * (jnp.asarray(y, u.dtype)[0] - u[0]))


def test_observation_aware_half_log_det_serves_a_batch():
    """``half_log_det_fn(u, y_obs)`` is bound to each observation of a batch: the draws equal
    separate conditionings whose one-argument term closes over their own observation."""
    ys = np.array([[1.0], [2.5]])
    kw = KW | dict(num_steps=(2, 3), step_size=0.3)
    batch = dgm.condition(parabola, ys[0], 3, half_log_det_fn=parabola_half_log_det).sample(
        jax.random.key(4), y_obs=ys, **kw
    )
    for i, key in enumerate(jax.random.split(jax.random.key(4), len(ys))):
        fixed = functools.partial(parabola_half_log_det, y=jnp.asarray(ys[i]))  # u only
        one = dgm.condition(parabola, ys[i], 3, half_log_det_fn=fixed).sample(key, **kw)
        np.testing.assert_allclose(
            one.posterior["u"].values, batch.posterior["u"].values[:, :, i], atol=1e-9
        )


@pytest.mark.filterwarnings("ignore::dgm.diagnostics.StuckChainWarning")  # the wrong term's
def test_planted_bug_unbound_observation_changes_the_draws():
    """The check above can fail: the second observation sampled with the first one's term
    (what a one-argument term would do) gives other draws."""
    ys = np.array([[1.0], [2.5]])
    kw = KW | dict(num_steps=(2, 3), step_size=0.3)
    key = jax.random.split(jax.random.key(4), 2)[1]
    wrong = lambda u: parabola_half_log_det(u, jnp.asarray(ys[0]))  # noqa: E731
    right = lambda u: parabola_half_log_det(u, jnp.asarray(ys[1]))  # noqa: E731
    draws = [
        dgm.condition(parabola, ys[1], 3, half_log_det_fn=fn).sample(key, **kw).posterior["u"]
        for fn in (wrong, right)
    ]
    assert np.max(np.abs(draws[0].values - draws[1].values)) > 1e-3


def test_one_argument_half_log_det_refuses_another_observation():
    posterior = dgm.condition(parabola, [1.0], 3, half_log_det_fn=lambda u: 0.0 * u[0])
    with pytest.raises(ValueError, match=r"half_log_det_fn\(u, y_obs\)"):
        posterior.sample(jax.random.key(0), y_obs=[2.0], **KW)
