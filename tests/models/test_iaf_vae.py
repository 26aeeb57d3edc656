"""The IAF ResNet VAE: free bits, the importance-sampled bound, data-dependent init, the
discretised logistic, Adamax without bias correction, training of every posterior variant.

Planted bugs these tests caught (run by hand, then reverted): the Adamax step scaled by
10 (what bias correction does at step 1; the NumPy reference differs at step 1);
``g = log(scale/std)`` without the ``/3`` of ``exp(3g)`` (both target-std cases fail);
free bits taking the minibatch max instead of the mean (the NumPy reference differs); the
edge bins open by default (the telescoped sum differs).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm.models import iaf_vae
from dgm.models._iaf_layers import WNConv, discretized_logistic_log_prob
from dgm.training.adamax import adamax_no_bias_correction


def _images(key, n, p=0.3):
    return (jax.random.uniform(key, (n, 32, 32, 1)) < p).astype(jnp.float32)


@pytest.fixture(scope="module")
def tiny():
    """A two-level down_diag model and its batch of 16 images (no data-dependent init: its
    compilation would double this module's default-set time; the slow tests use it)."""
    x = _images(jax.random.key(1), 16)
    return iaf_vae.ResNetVAE(1, 4, 2, (1, 1), "down_diag", pad=2, key=jax.random.key(0)), x


def _train(model, x, num_steps: int) -> list[float]:
    """Adamax (α 0.01) on the fixed batch with free bits 0.1; the loss of every step."""
    opt = adamax_no_bias_correction(0.01)

    @eqx.filter_jit
    def step(model, state, key):
        value, grads = eqx.filter_value_and_grad(iaf_vae.loss)(model, x, key, 0.1)
        updates, state = opt.update(grads, state)
        return eqx.apply_updates(model, updates), state, value

    state, losses = opt.init(eqx.filter(model, eqx.is_inexact_array)), []
    for i in range(num_steps):
        model, state, value = step(model, state, jax.random.key(i))
        losses.append(float(value))
    return losses


def _assert_trains(losses: list[float]) -> None:
    """The mean of the last 5 of 60 losses at most 0.9 × the first (measured 0.85 for
    down_diag; an optimizer that does not step, or a sign error, stays at 1)."""
    assert np.all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < 0.9 * losses[0], (losses[0], losses[-5:])


def test_down_diag_trains(tiny):
    _assert_trains(_train(*tiny, 60))


@pytest.mark.slow
@pytest.mark.parametrize("posterior", [p for p in iaf_vae.POSTERIORS if p != "down_diag"])
def test_every_posterior_variant_trains(posterior):
    x = _images(jax.random.key(1), 16)
    model = iaf_vae.ResNetVAE(1, 4, 2, (1, 1), posterior, pad=2, key=jax.random.key(0))
    model = iaf_vae.data_dependent_init(model, x, jax.random.key(2))
    _assert_trains(_train(model, x, 60))


def test_adamax_without_bias_correction_matches_numpy_reference():
    grads = [np.random.default_rng(i).normal(size=(3, 2)).astype(np.float32) for i in range(4)]
    opt = adamax_no_bias_correction(0.002)
    params = jnp.ones((3, 2), jnp.float32)
    state = opt.init(params)
    w, m, u = np.ones((3, 2)), np.zeros((3, 2)), np.full((3, 2), 1e-8)
    biased = optax.adamax(0.002)
    b_state = biased.init(params)
    for g in grads:
        m = 0.9 * m + 0.1 * g
        u = np.maximum(0.999 * u, np.abs(g) + 1e-8)
        w = w - 0.002 * m / u
        updates, state = opt.update(jnp.asarray(g), state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(np.asarray(params), w, rtol=1e-5, atol=1e-7)
    # The reference tells the bias-corrected optax transform apart (its first step is 10×).
    with jax.numpy_dtype_promotion("standard"):  # optax mixes its int step count in
        first, _ = biased.update(jnp.asarray(grads[0]), b_state, jnp.ones((3, 2)))
    assert not np.allclose(np.asarray(first), -0.002 * 0.1 * grads[0] / (np.abs(grads[0]) + 1e-8))


@pytest.mark.parametrize("scale", [1.0, 0.1])
def test_data_dependent_init_gives_the_target_std_and_zero_mean(scale):
    x = jax.random.normal(jax.random.key(3), (16, 8, 8, 5)) * 3.0 + 1.0
    conv = WNConv(5, 6, 3, key=jax.random.key(4))
    layer, out = eqx.filter_jit(lambda c, x: c.data_init(x, scale))(conv, x)
    # The stored g, b reproduce the returned output (exp(3g) with g/3).
    again = eqx.filter_jit(lambda c, x: c(x))(layer, x)
    np.testing.assert_allclose(np.asarray(again), np.asarray(out), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.asarray(again.mean(axis=(0, 1, 2))), 0.0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(again.std(axis=(0, 1, 2))), scale, rtol=1e-3)


def test_data_dependent_init_leaves_a_constant_output_at_gain_one():
    """A 1×1 input that is the same for every image (a 1×1 top level's zero-initialised
    ``h_top``): the layer keeps gain 1 and outputs 0, where 1/std gave gains of ~1e7 (the
    loss reached 6.6e15 after one update of a 5-level model); varying inputs are still
    scaled to the target std."""
    conv = WNConv(4, 6, 3, key=jax.random.key(4))
    const = jnp.broadcast_to(jnp.asarray([0.3, -1.2, 0.0, 2.0]), (16, 1, 1, 4))
    layer, out = eqx.filter_jit(lambda c, x: c.data_init(x, 0.1))(conv, const)
    np.testing.assert_allclose(np.asarray(jnp.exp(3 * layer.g)), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(out), 0.0, atol=1e-6)
    varying = const * jax.random.normal(jax.random.key(5), (16, 1, 1, 1))
    layer, out = eqx.filter_jit(lambda c, x: c.data_init(x, 0.1))(conv, varying)
    np.testing.assert_allclose(np.asarray(out.std(axis=(0, 1, 2))), 0.1, rtol=1e-3)


@pytest.mark.slow
def test_model_init_makes_encoder_outputs_std_01(tiny):
    model, x = tiny
    model = iaf_vae.data_dependent_init(model, x, jax.random.key(2))
    h = eqx.filter_jit(lambda m, x: m.x_enc(x))(model, x - 0.5)
    np.testing.assert_allclose(np.asarray(h.std(axis=(0, 1, 2))), 0.1, rtol=1e-3)


def test_discretized_logistic_bins_telescope_and_edge_bins_sum_to_one():
    bins = jnp.arange(256.0).reshape(256, 1, 1, 1)
    out = jnp.asarray([-0.45, -0.1, 0.0, 0.3, 0.49]).reshape(1, 1, 5, 1)
    for log_scale in (-4.0, -2.0, 0.0):
        ls = jnp.float32(log_scale)
        p = jnp.exp(discretized_logistic_log_prob(out, bins, ls)) - 1e-7
        mu = np.clip(np.asarray(out) + 0.5, 1 / 512, 1 - 1 / 512)
        s = np.exp(log_scale)
        lost = 1 / (1 + np.exp(-(1 - mu) / s)) - 1 / (1 + np.exp(mu / s))
        np.testing.assert_allclose(np.asarray(p.sum(0)), lost[0], atol=2e-5)
        q = jnp.exp(discretized_logistic_log_prob(out, bins, ls, edge_bins=True)) - 1e-7
        np.testing.assert_allclose(np.asarray(q.sum(0)), 1.0, atol=2e-5)


@eqx.filter_jit
def _free_bits_pieces(model, x, key, lam):
    _, kls = iaf_vae.forward(model, x, iaf_vae.draw_noise(model, key, x.shape[0]))
    t = iaf_vae.terms(model, x, key, lam)
    return iaf_vae.loss(model, x, key, 0.0), iaf_vae.log_weights(model, x, key), kls, t


def test_free_bits_with_zero_kl_min_is_the_plain_elbo_and_floors_block_channel_means(tiny):
    model, x = tiny
    key = jax.random.key(5)
    loss0, log_w, kls, _ = _free_bits_pieces(model, x, key, jnp.float32(0.0))
    np.testing.assert_allclose(float(loss0), -float(jnp.mean(log_w)), rtol=1e-6)
    # NumPy reference of the code's free bits from the KL elements of the same sample.
    per = np.concatenate([np.asarray(k).sum(axis=(1, 2)).mean(axis=0)[None] for k in kls])
    lam = float(np.median(per))  # floors about half of the (block, channel) pairs
    *_, t = _free_bits_pieces(model, x, key, jnp.float32(lam))
    np.testing.assert_allclose(float(t.kl_free_bits), np.maximum(lam, per).sum(), rtol=1e-5)
    assert float(t.kl_free_bits) > -float(jnp.mean(log_w)) + float(jnp.mean(t.log_px))
    np.testing.assert_allclose(np.asarray(t.kl_blocks), per.sum(-1), rtol=1e-5)


@pytest.mark.slow
def test_importance_estimate_is_above_its_own_elbo_and_rises_with_k(tiny):
    """Deterministic: log-mean-exp of K log weights ≥ their mean (Jensen). Statistical: the
    mean over 8 images of the K = 1, 10, 100 estimates rises, by more than 5 nats per step
    on this untrained model (measured gaps 40-60 nats)."""
    model, x = tiny
    fn = eqx.filter_jit(iaf_vae.importance_log_likelihood)
    key = jax.random.key(6)
    x = x[:8]
    k100 = fn(model, x, key, 100, 50)
    reps = jnp.repeat(x, 50, axis=0)
    log_w = eqx.filter_jit(iaf_vae.log_weights)
    halves = [log_w(model, reps, k).reshape(8, 50) for k in jax.random.split(key, 2)]
    mean_w = jnp.mean(jnp.concatenate(halves, axis=1), axis=1)
    assert np.all(np.asarray(k100) >= np.asarray(mean_w) - 1e-3)
    k10, k1 = fn(model, x, jax.random.key(7), 10, 10), fn(model, x, jax.random.key(8), 1, 1)
    means = [float(jnp.mean(v)) for v in (k1, k10, k100)]
    assert means[1] - means[0] > 5.0 and means[2] - means[1] > 5.0, means


@pytest.mark.slow
def test_scanned_and_unrolled_blocks_agree():
    x = _images(jax.random.key(1), 4)
    losses = []
    for scan in (False, True):
        model = iaf_vae.ResNetVAE(1, 4, 2, (3, 2), "down_iaf2_nl", pad=2, scan_blocks=scan,
                                  key=jax.random.key(0))  # fmt: skip
        losses.append(float(eqx.filter_jit(iaf_vae.loss)(model, x, jax.random.key(3), 0.1)))
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("posterior", ["down_iaf1_nl", "down_iaf2_nl"])
def test_iaf_posterior_step_is_the_codes_and_its_log_q_is_exact(posterior):
    """The block's IAF step (spec §2.5): z ← (z − 0.1m)/exp(0.1s), or z − 0.1m for
    ``iaf1``, and log q(z) = log q₀(z₀) − log|det ∂z/∂z₀| with the determinant from
    ``jax.jacfwd`` and log q₀ computed here in NumPy, in float64 (the default set trains
    only ``down_diag``, which has no IAF step).

    Planted bugs this caught: ``log q − 0.1s`` (the log-det's sign), ``z − m`` without the
    0.1, ``log σ`` for ``2 log σ`` in the Gaussian log-density."""
    from dgm.models import _iaf_ar
    from dgm.models._iaf_blocks import IAFBlock

    n_h, n_z, side = 4, 2, 2
    block = _float64(IAFBlock(n_h, n_z, posterior, 1, resample=False, key=jax.random.key(3)))
    rng = np.random.default_rng(4)
    mean, logsd, eps = (rng.normal(size=(1, side, side, n_z)) * 0.5 for _ in range(3))
    ctx = rng.normal(size=(1, side, side, n_h))
    mean, logsd, eps, ctx = (jnp.asarray(a) for a in (mean, logsd, eps, ctx))
    z0 = mean + jnp.exp(logsd) * eps

    @jax.jit
    def step(z0_flat):
        e = (z0_flat.reshape(z0.shape) - mean) / jnp.exp(logsd)
        _, z, logq = block.posterior_sample(mean, logsd, ctx, e, None)
        return z.ravel(), logq

    z, logq = step(z0.ravel())
    _, (m, s) = _iaf_ar.apply(block.ar, z0, ctx, None)
    want = z0 - 0.1 * m if posterior.endswith("iaf1_nl") else (z0 - 0.1 * m) * jnp.exp(-0.1 * s)
    np.testing.assert_allclose(np.asarray(z), np.asarray(want).ravel(), rtol=1e-12)
    e, ls = np.asarray(eps), np.asarray(logsd)
    logq0 = np.sum(-0.5 * (np.log(2 * np.pi) + 2 * ls + e**2))
    sign, logdet = np.linalg.slogdet(np.asarray(jax.jacfwd(lambda v: step(v)[0])(z0.ravel())))
    assert sign == 1.0
    np.testing.assert_allclose(float(jnp.sum(logq)), logq0 - logdet, rtol=1e-12)


@pytest.mark.parametrize("resample", [False, True])
def test_residual_branches_enter_scaled_by_a_tenth(resample):
    """out = pool(h) + 0.1·up_conv2(·) going up, upsample(h) + 0.1·down_conv2(·) going down
    (spec §2.2): with the branch's gain at 0 the output is the identity path (an independent
    NumPy mean pool / nearest-neighbour upsampling); shifting the branch's bias by δ moves
    the output by exactly 0.1·δ. Planted bug this caught: the residual branch unscaled."""
    from dgm.models._iaf_blocks import IAFBlock

    block = IAFBlock(4, 2, "down_diag", 1, resample=resample, key=jax.random.key(5))
    rng = np.random.default_rng(6)
    h = jnp.asarray(rng.normal(size=(2, 4, 4, 4)), jnp.float32)
    side = 2 if resample else 4
    eps = jnp.asarray(rng.normal(size=(2, side, side, 2)), jnp.float32)
    h_down = jnp.asarray(rng.normal(size=(2, side, side, 4)), jnp.float32)  # a level lower
    hn, hd = np.asarray(h), np.asarray(h_down)
    pooled = hn.reshape(2, 2, 2, 2, 2, 4).mean(axis=(2, 4)) if resample else hn
    upsampled = hd.repeat(2, axis=1).repeat(2, axis=2) if resample else hd
    delta = 0.37

    @jax.jit
    def outputs(block):
        return block.up(h, eps, None)[1], block.down(h_down, None, eps, None, True)[1]

    def with_branch(gain_off: bool, shift: float):
        b = block
        for conv in (lambda b: b.up_conv2, lambda b: b.down_conv2):
            c = conv(b)
            g = jnp.full_like(c.g, -1e3) if gain_off else c.g  # exp(3g) = 0: no conv term
            b = eqx.tree_at(lambda b, conv=conv: (conv(b).g, conv(b).b), b, (g, c.b + shift))
        return [np.asarray(o) for o in outputs(b)]

    up0, down0 = with_branch(True, 0.0)
    np.testing.assert_allclose(up0, pooled, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(down0, upsampled, rtol=1e-6, atol=1e-6)
    (up, down), (up_d, down_d) = with_branch(False, 0.0), with_branch(False, delta)
    np.testing.assert_allclose(up_d - up, 0.1 * delta, rtol=1e-4)
    np.testing.assert_allclose(down_d - down, 0.1 * delta, rtol=1e-4)


def test_importance_estimate_is_the_log_mean_exp_of_each_images_weights(tiny):
    """log p̂(x_i) = log((1/K) Σ_k w_ik) over image i's own K weights, in float64 NumPy from
    :func:`iaf_vae.log_weights` of a batch built row by row: image i's chunk draws are rows
    i·chunk … (i + 1)·chunk − 1 of each chunk's batch. (The slow Jensen check cannot see a
    missing ``− log K``: it only raises the estimate.) Planted bugs this caught: the
    ``− log K`` dropped; the images tiled instead of repeated (weights scored against
    another image's rows)."""
    from scipy.special import logsumexp

    model, x = tiny
    x, num, chunk = x[:3], 4, 2
    key = jax.random.key(9)
    got = eqx.filter_jit(iaf_vae.importance_log_likelihood)(model, x, key, num, chunk)
    rows = jnp.stack([x[i] for i in range(len(x)) for _ in range(chunk)])
    log_w = eqx.filter_jit(iaf_vae.log_weights)
    w = np.concatenate(
        [np.asarray(log_w(model, rows, k), np.float64).reshape(len(x), chunk)
         for k in jax.random.split(key, num // chunk)],
        axis=1,
    )  # fmt: skip
    np.testing.assert_allclose(np.asarray(got), logsumexp(w, axis=1) - np.log(num), rtol=1e-5)
    # the bound's worth: the estimate lies between the weights' mean and their maximum
    assert np.all(np.asarray(got) >= w.mean(axis=1) - 1e-3)
    assert np.all(np.asarray(got) <= w.max(axis=1) + 1e-3)


def _latents_cut_off(model):
    """The model with every block's ``down_conv2`` at gain 0 (exp(3g) = 0) and bias 0: each
    top-down residual branch is 0, so the decoder sees the upsampled top state whatever z."""

    def cut(block):
        if block is None:
            return None
        conv = block.down_conv2
        zero = (jnp.full_like(conv.g, -1e3), jnp.zeros_like(conv.b))
        return eqx.tree_at(lambda b: (b.down_conv2.g, b.down_conv2.b), block, zero)

    levels = tuple((cut(head), cut(tail)) for head, tail in model.levels)
    h_top = jnp.asarray(np.random.default_rng(11).normal(size=model.n_h), jnp.float32)
    return eqx.tree_at(lambda m: (m.levels, m.h_top), model, (levels, h_top))


def test_with_the_latents_cut_off_samples_reconstructions_and_log_px_agree(tiny):
    """With z cut off from the decoder, prior samples and reconstructions have the same
    pixel means (one image for every input and draw), and log p(x|z) is the Bernoulli
    log-probability of those means summed over the 28×28 real pixels only (``pad=2``), in
    NumPy. Planted bugs this caught: the sampling path's decoder output without the 0.1 of
    ``0.1·x_dec`` (its pixel means differed from the reconstructions'); the likelihood
    cropping only the near edges of the padding."""
    model, x = tiny
    model, x = _latents_cut_off(model), x[:4]
    noise = iaf_vae.draw_noise(model, jax.random.key(12), 4)
    prior = np.asarray(eqx.filter_jit(iaf_vae.pixel_means)(model, noise, 4))
    recon = np.asarray(eqx.filter_jit(iaf_vae.reconstruction_means)(model, x, jax.random.key(13)))
    np.testing.assert_allclose(recon, prior, rtol=1e-6)
    np.testing.assert_allclose(prior, np.broadcast_to(prior[:1], prior.shape), rtol=1e-6)
    log_px, _ = eqx.filter_jit(iaf_vae.forward)(model, x, noise)
    p, xs = np.clip(prior.astype(np.float64), 1e-7, 1 - 1e-7), np.asarray(x, np.float64)
    lp = xs * np.log(p) + (1 - xs) * np.log1p(-p)
    np.testing.assert_allclose(np.asarray(log_px), lp[:, 2:30, 2:30].sum(axis=(1, 2, 3)), rtol=1e-5)


def test_the_encoder_sees_pixel_centres_less_a_half():
    """Spec §2.1: an 8-bit pixel x enters the encoder as clip((x + 0.5)/256, 0, 1) − 0.5 (its
    bin's centre), a binary one as x − 0.5. Planted bug this caught: x/256 (the bin's lower
    edge: every input 1/512 low)."""
    logistic, bernoulli = (
        iaf_vae.ResNetVAE(1, 4, 2, (1,), "down_diag", likelihood=lik, key=jax.random.key(0))
        for lik in ("logistic", "bernoulli")
    )
    x = jnp.asarray([0.0, 1.0, 127.0, 255.0])
    got = iaf_vae._encode_input(logistic, x)
    np.testing.assert_allclose(np.asarray(got), (np.asarray(x) + 0.5) / 256 - 0.5, rtol=1e-6)
    binary = iaf_vae._encode_input(bernoulli, x[:2])
    np.testing.assert_array_equal(np.asarray(binary), [-0.5, 0.5])
