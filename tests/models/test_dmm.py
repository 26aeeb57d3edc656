"""DMM: bounds against the exact Kalman likelihood, analytic KL, masks, bad input."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.data.synthetic import sample_linear_gaussian, synthetic9
from dgm.models import dmm, kalman
from dgm.models._posterior import structured_path

NUM_SEQ, NUM_STEPS = 6, 10
_nelbo = eqx.filter_jit(dmm.neg_elbo)


def _tiny(key, **kwargs):
    """A small DMM over 5 binary notes."""
    sizes = dict(z_dim=3, transition_dim=8, emission_dim=8, rnn_dim=8)
    return dmm.DMM(5, **sizes, **kwargs, key=key)


@pytest.fixture(scope="module")
def model():
    return _tiny(jax.random.key(3), inference="st-lr", cell="lstm")


def _inv_softplus(v):
    return jnp.log(jnp.expm1(jnp.asarray([v], jnp.float32)))


def linear_gaussian_dmm(params, *, inference="st-r", key):
    """A DMM whose generative model is exactly ``params`` (1-D synthetic9)."""
    model = dmm.DMM(
        1,
        z_dim=1,
        rnn_dim=8,
        emission_layers=0,
        transition="linear",
        likelihood="gaussian",
        inference=inference,
        cell="gru",
        key=key,
    )
    return eqx.tree_at(
        lambda m: (
            m.transition.loc.weight,
            m.transition.loc.bias,
            m.transition.raw_var,
            m.emission.out.weight,
            m.emission.out.bias,
            m.emission.raw_var,
        ),
        model,
        (params.A, params.b, _inv_softplus(10.0), params.C, params.d, _inv_softplus(20.0)),
    )


@pytest.fixture(scope="module")
def linear_case():
    params = synthetic9()
    x, _ = sample_linear_gaussian(params, NUM_SEQ, NUM_STEPS, jax.random.key(0))
    mask = jnp.ones(x.shape[:2], jnp.float32)
    model = linear_gaussian_dmm(params, key=jax.random.key(1))
    exact = jax.jit(jax.vmap(lambda a, m: kalman.kalman_filter(params, a, m)[0]))(x, mask)
    log_w = eqx.filter_jit(dmm.log_importance_weights)(
        model, x, mask, jax.random.key(2), 64 * 25, 64 * 5
    )
    return np.asarray(exact), np.asarray(log_w, np.float64)


def _is_estimates(log_w, s):
    """Independent IS estimates log p̂_S from disjoint blocks of S weights, (blocks, batch)."""
    blocks = log_w[: (len(log_w) // s) * s].reshape(-1, s, log_w.shape[1])
    return np.logaddexp.reduce(blocks, axis=1) - np.log(s)


def test_elbo_below_exact_kalman_log_likelihood(linear_case):
    exact, log_w = linear_case
    mean, se = log_w.mean(0), log_w.std(0) / np.sqrt(len(log_w))
    assert np.all(mean + 4 * se < exact), (mean, exact)


def test_is_estimate_increases_with_samples_toward_exact(linear_case):
    """E log p̂_S rises with S (1, 8, 64) and stays below log p(x); se from 25 blocks."""
    exact, log_w = linear_case
    means, ses = [], []
    for s in (1, 8, 64):
        est = _is_estimates(log_w, s)
        means.append(est.mean(0))
        ses.append(est.std(0) / np.sqrt(len(est)))
    for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:], strict=False):
        z = (hi - lo) / np.sqrt(se_lo**2 + se_hi**2)
        assert np.all(z > 2.0), z
    assert np.all(means[-1] < exact + 4 * ses[-1])


def test_analytic_kl_matches_monte_carlo(model):
    """Σ_t (log q − log p − KL_t) has mean 0: KL_t is E_q[log q − log p] given z_{t−1}."""
    x = (jax.random.uniform(jax.random.key(4), (7, 5)) < 0.4).astype(jnp.float32)
    mask = jnp.ones((7,), jnp.float32)

    def diff(k):
        t = dmm.sequence_terms(model, x, mask, k)
        return jnp.sum(t["log_q"] - t["log_p"]), jnp.sum(t["kl"])

    mc, analytic = eqx.filter_jit(jax.vmap(diff))(jax.random.split(jax.random.key(5), 4000))
    d = np.asarray(mc, np.float64) - np.asarray(analytic, np.float64)
    z = d.mean() / (d.std() / np.sqrt(len(d)))
    assert abs(z) < 4.0, z
    assert np.all(np.asarray(analytic) > 0)


@pytest.mark.parametrize("structured", [True, False])
def test_padding_does_not_change_loss(structured, model):
    """Both RNN directions, the combiner, MF product heads and an IAF step see only real frames."""
    if not structured:
        model = _tiny(jax.random.key(6), inference="mf-lr", cell="rnn", num_iafs=1)
    x = (jax.random.uniform(jax.random.key(7), (12, 5)) < 0.4).astype(jnp.float32)
    mask = (jnp.arange(12) < 7).astype(jnp.float32)
    beta = jnp.asarray(0.5, jnp.float32)
    padded = _nelbo(model, x, mask, jax.random.key(8), beta)
    unpadded = _nelbo(model, x[:7], mask[:7], jax.random.key(8), beta)
    np.testing.assert_allclose(float(padded), float(unpadded), rtol=1e-5)
    # the padding content is ignored, but the real frames are not
    changed = _nelbo(model, x.at[3].set(1.0 - x[3]), mask, jax.random.key(8), beta)
    assert abs(float(changed) - float(padded)) > 1e-3


def test_batched_equals_looped_and_samples_have_probabilities(model):
    x = (jax.random.uniform(jax.random.key(10), (3, 7, 5)) < 0.5).astype(jnp.float32)
    mask = jnp.ones((3, 7), jnp.float32)
    keys = jax.random.split(jax.random.key(11), 3)
    batched = eqx.filter_jit(jax.vmap(dmm.neg_elbo, in_axes=(None, 0, 0, 0)))(model, x, mask, keys)
    looped = [float(_nelbo(model, x[i], mask[i], keys[i])) for i in range(3)]
    np.testing.assert_allclose(np.asarray(batched), looped, rtol=1e-6)
    probs = eqx.filter_jit(dmm.sample_sequences)(model, 6, jax.random.key(12))
    assert probs.shape == (6, 5) and bool(jnp.all((probs > 0) & (probs < 1)))


def test_bad_input_messages(model):
    with pytest.raises(ValueError, match="`inference` must be one of .* got 'st-x'"):
        dmm.DMM(4, inference="st-x", key=jax.random.key(0))
    with pytest.raises(ValueError, match="`cell` must be one of"):
        dmm.DMM(4, cell="transformer", key=jax.random.key(0))
    x = np.full((2, 3, 5), 0.5, np.float32)
    mask = np.ones((2, 3), np.float32)
    with pytest.raises(ValueError, match="`x` must be binary .* Bernoulli"):
        dmm.validate_sequences(x, mask, 5, "bernoulli")
    dmm.validate_sequences(x, mask, 5, "gaussian")
    with pytest.raises(ValueError, match=r"`x` must have shape \(batch, time, 5\); got shape"):
        dmm.validate_sequences(x[0], mask, 5, "gaussian")
    with pytest.raises(ValueError, match="`mask` must have shape"):
        dmm.validate_sequences(x, mask[:, :2], 5, "gaussian")
    with pytest.raises(ValueError, match="multiple of `chunk_size`"):
        dmm.log_importance_weights(
            model, jnp.asarray(x), jnp.asarray(mask), jax.random.key(0), 10, 3
        )


def test_without_input_embedding_rnn_reads_x():
    """``input_embedding=False`` (Pyro's guide): no embedding layer, the RNN reads the notes."""
    model = _tiny(jax.random.key(5), inference="st-r", cell="rnn", input_embedding=False)
    assert model.encoder.embed is None and model.encoder.rnns[0].w_x.shape == (8, 5)
    x = (jax.random.uniform(jax.random.key(6), (7, 5)) < 0.3).astype(jnp.float32)
    mask = jnp.ones(7, jnp.float32)
    loss, grads = eqx.filter_value_and_grad(_nelbo)(model, x, mask, jax.random.key(7))
    assert jnp.isfinite(loss)
    assert jnp.any(grads.encoder.rnns[0].w_x != 0)
    # padding still leaves the loss unchanged
    xp = jnp.concatenate([x, jnp.zeros((3, 5), jnp.float32)])
    mp = jnp.concatenate([mask, jnp.zeros(3, jnp.float32)])
    padded = _nelbo(model, xp, mp, jax.random.key(7))
    np.testing.assert_allclose(padded, loss, rtol=1e-5)


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _reference_path(model, feats, eps):
    """One sequence's posterior path by a plain scan over ``encoder.posterior`` (no custom VJP)."""

    def step(z_prev, inp):
        feat, e = inp
        mu, var = model.encoder.posterior(feat, z_prev)
        z, log_det = mu + jnp.sqrt(var) * e, jnp.zeros((), e.dtype)
        if model.flow is not None:
            z, log_det = model.flow(z)
        return z, (z, mu, var, log_det)

    return jax.lax.scan(step, jnp.zeros_like(eps[0]), (feats, eps))[1]


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    "inference,num_iafs", [("st-r", 0), pytest.param("st-lr", 1, marks=pytest.mark.slow)]
)
def test_structured_path_gradients_match_plain_scan(inference, num_iafs):
    """The path's hoisted weight gradients equal plain autodiff of the scan (float64)."""
    model = _float64(_tiny(jax.random.key(20), inference=inference, num_iafs=num_iafs))
    dirs = len(inference.split("-")[1])
    k_f, k_e, k_w = jax.random.split(jax.random.key(21), 3)
    feats = jax.random.normal(k_f, (NUM_STEPS, 4, dirs, 8), jnp.float64)
    eps = jax.random.normal(k_e, (NUM_STEPS, 4, 3), jnp.float64)
    weights = jax.random.normal(k_w, (4, NUM_STEPS, 3), jnp.float64)

    def loss(model, feats, eps, path_fn):
        z, mu, var, log_det = path_fn(model, feats, eps)
        return jnp.sum(weights * (z + mu**2 + jnp.log(var))) + jnp.sum(log_det**2)

    def hoisted(model, feats, eps):
        path = structured_path(model.encoder, model.flow, feats, eps)
        return [jnp.swapaxes(a, 0, 1) for a in path]

    def looped(model, feats, eps):
        per_seq = jax.vmap(_reference_path, in_axes=(None, 1, 1))
        return per_seq(model, feats, eps)

    args = (model, feats, eps)  # gradients with respect to all three
    got = eqx.filter_jit(eqx.filter_value_and_grad(lambda a: loss(*a, hoisted)))(args)
    want = eqx.filter_jit(eqx.filter_value_and_grad(lambda a: loss(*a, looped)))(args)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    for g, w in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1]), strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-12)


def test_sampled_sequences_start_from_the_standard_normal_prior():
    """z₁ ~ N(0, I) whatever the transition: two models that differ only in the transition
    mean's bias sample the same first frame from one key, and different later frames.
    Planted bug this caught: the first step's mean taken from the transition of z₀ = 0."""
    model = dmm.DMM(6, z_dim=3, transition_dim=4, emission_dim=4, rnn_dim=4, transition="mlp",
                    key=jax.random.key(30))  # fmt: skip
    shifted = eqx.tree_at(lambda m: m.transition.loc.bias, model, model.transition.loc.bias + 3.0)
    sample = eqx.filter_jit(dmm.sample_sequences)
    a, b = (np.asarray(sample(m, 4, jax.random.key(31))) for m in (model, shifted))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.allclose(a[1:], b[1:])
