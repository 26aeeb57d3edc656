"""DMM against an independent float64 NumPy reference of the paper's equations.

The reference (:func:`_reference`) is written from the equations, one unpadded sequence at a
time in plain loops: textbook LSTM (gates i, f, o, c̃; h₀ = 0, c₀ = 1), the combiner
(tanh(W z_{t−1} + b) + Σ h_t) / (1 + dirs) or the mean-field heads with a product of
Gaussians in precision form, gated IAF steps, the gated transition with a variance head
softplus(W relu(proposal)), the Bernoulli emission and the analytic KL. It shares with the
model only the parameters and the noise (step t's ε from ``fold_in(key, t)``, float32).

The model gets loud parameters (:func:`_loud`): at the U(−0.1, 0.1) initialisation the
proposal is near 0 and the two MF-LR heads nearly agree, and the test passed with the relu
dropped from the variance head or the MF-LR weights swapped (checked).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.data.polyphonic import SequenceSet
from dgm.experiments import _dmm
from dgm.models import dmm

OBS = 6
SIZES = dict(z_dim=3, transition_dim=7, emission_dim=5, rnn_dim=4, iaf_dim=4, cell="lstm")
CASES = [("st-r", 0), ("st-l", 0), ("st-lr", 2), ("mf-r", 0), ("mf-l", 0), ("mf-lr", 1)]  # IAFs


def _loud(model, seed, scale=0.5):
    """Every float parameter plus N(0, scale²) noise (the MADE masks are boolean: untouched).

    Drawn by NumPy: one JAX random kernel per parameter shape would compile for seconds.
    """
    rng = np.random.default_rng(seed)

    def perturb(a):
        if not eqx.is_inexact_array(a):
            return a
        return a + jnp.asarray(scale * rng.normal(size=a.shape), a.dtype)

    return jax.tree.map(perturb, model)


def _model(inference, num_iafs=0):
    model = dmm.DMM(OBS, **SIZES, inference=inference, num_iafs=num_iafs, key=jax.random.key(1))
    return _loud(model, seed=2)


# --- the reference: float64 NumPy, one unpadded sequence ---------------------------------


def _np(a):
    return np.asarray(a, np.float64)


def _lin(layer, v):
    return _np(layer.weight) @ v + _np(layer.bias)


def _sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def _relu(v):
    return np.maximum(v, 0.0)


def _softplus(v):
    return np.logaddexp(0.0, v)


def _log_normal(z, mu, var):
    return -0.5 * np.sum(np.log(2 * np.pi * var) + (z - mu) ** 2 / var)


def _lstm(rnn, xs):
    """Textbook LSTM: gates i, f, o, c̃ stacked in that order; h₀ = 0, c₀ = 1."""
    h, c, out = np.zeros(rnn.hidden_size), np.ones(rnn.hidden_size), []
    for x in xs:
        i, f, o, g = np.split(_np(rnn.w_x) @ x + _np(rnn.w_h) @ h + _np(rnn.bias), 4)
        c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
        h = _sigmoid(o) * np.tanh(c)
        out.append(h)
    return np.array(out)


def _iaf(flow, z):
    """Gated IAF steps: (m, s) = MADE(z), σ = sigmoid(s + 1), z ← σ z + (1 − σ) m; Σ log σ."""
    log_det = 0.0
    for step in flow.steps:
        h = z
        for layer in step.net.hidden:
            h = _relu(_np(layer.effective_weight()) @ h + _np(layer.bias))
        m, s = np.split(_np(step.net.out.effective_weight()) @ h + _np(step.net.out.bias), 2)
        gate = _sigmoid(s + 1.0)
        z, log_det = gate * z + (1.0 - gate) * m, log_det + np.sum(np.log(gate))
    return z, log_det


def _noise(key, t, dim):
    return _np(jax.random.normal(jax.random.fold_in(key, t), (dim,), jnp.float32))


def _reference(model, x, key, beta=1.0):
    """(−ELBO with KL weight ``beta``, log p(x, z) − log q(z | x)) of one unpadded sequence."""
    enc, tr = model.encoder, model.transition
    e = _relu(x @ _np(enc.embed.weight).T + _np(enc.embed.bias))
    dirs = enc.kind.split("-")[1]
    hs = [
        _lstm(r, e) if d == "l" else _lstm(r, e[::-1])[::-1]
        for r, d in zip(enc.rnns, dirs, strict=True)
    ]
    z_prev, neg_elbo, log_w = np.zeros(model.z_dim), 0.0, 0.0
    for t in range(len(x)):
        if enc.combine is not None:  # structured: q(z_t | z_{t−1}, x) through the combiner
            h = (np.tanh(_lin(enc.combine, z_prev)) + sum(hd[t] for hd in hs)) / (1 + len(hs))
            mu_q, var_q = _lin(enc.locs[0], h), _softplus(_lin(enc.variances[0], h))
        else:  # mean field: one Gaussian per direction, several multiplied together
            mus = [_lin(head, hd[t]) for head, hd in zip(enc.locs, hs, strict=True)]
            precs = [
                1.0 / _softplus(_lin(head, hd[t]))
                for head, hd in zip(enc.variances, hs, strict=True)
            ]
            var_q = 1.0 / sum(precs)
            mu_q = var_q * sum(p * m for p, m in zip(precs, mus, strict=True))
        z = mu_q + np.sqrt(var_q) * _noise(key, t, model.z_dim)
        log_q = _log_normal(z, mu_q, var_q)
        if model.flow is not None:
            z, log_det = _iaf(model.flow, z)
            log_q -= log_det
        if t == 0:
            mu_p, var_p = np.zeros(model.z_dim), np.ones(model.z_dim)
        else:
            gate = _sigmoid(_lin(tr.gate2, _relu(_lin(tr.gate1, z_prev))))
            proposal = _lin(tr.prop2, _relu(_lin(tr.prop1, z_prev)))
            mu_p = (1.0 - gate) * _lin(tr.loc, z_prev) + gate * proposal
            var_p = _softplus(_lin(tr.var, _relu(proposal)))
        log_p = _log_normal(z, mu_p, var_p)
        if model.flow is None:
            kl = 0.5 * np.sum(np.log(var_p / var_q) + (var_q + (mu_q - mu_p) ** 2) / var_p - 1)
        else:
            kl = log_q - log_p
        h = z
        for layer in model.emission.layers:
            h = _relu(_lin(layer, h))
        logits = _lin(model.emission.out, h)  # log σ(o) = −softplus(−o)
        log_lik = -np.sum(x[t] * _softplus(-logits) + (1 - x[t]) * _softplus(logits))
        neg_elbo += -log_lik + beta * kl
        log_w += log_lik + log_p - log_q
        z_prev = z
    return neg_elbo, log_w


# --- the model's bound and weights against the reference ----------------------------------


def _batch(lengths, width, seed):
    """Binary sequences of the given lengths, padded to ``width`` with random garbage."""
    rng = np.random.default_rng(seed)
    x = (rng.random((len(lengths), width, OBS)) < 0.4).astype(np.float32)
    mask = (np.arange(width)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)
    return x, mask


@eqx.filter_jit
def _bound_and_weights(model, x, mask, keys, beta):
    """``neg_elbo`` and ``log_importance_weight`` of each sequence (vmapped, as in evaluation)."""
    neg_elbo = jax.vmap(dmm.neg_elbo, in_axes=(None, 0, 0, 0, None))(model, x, mask, keys, beta)
    log_w = jax.vmap(dmm.log_importance_weight, in_axes=(None, 0, 0, 0))(model, x, mask, keys)
    return neg_elbo, log_w


@pytest.mark.parametrize("inference,num_iafs", CASES)
def test_bound_and_weights_match_numpy_reference(inference, num_iafs):
    """``neg_elbo`` and ``log_importance_weight`` equal the float64 reference for two sequences
    with garbage in their padded frames (float32 rounding: about 1e-6 relative).

    Catches (audit plants): the IAF sign in log_q, the relu dropped from the transition's
    variance head, the MF-LR product weights swapped, the gate on the wrong path.
    """
    model = _model(inference, num_iafs)
    lengths, beta = (9, 4), 0.3
    x, mask = _batch(lengths, 12, seed=0)
    keys = jax.random.split(jax.random.key(5), len(lengths))
    neg_elbo, log_w = _bound_and_weights(model, x, mask, keys, beta)
    want = np.array([_reference(model, x[i, :n], keys[i], beta) for i, n in enumerate(lengths)])
    np.testing.assert_allclose(neg_elbo, want[:, 0], rtol=2e-5)
    np.testing.assert_allclose(log_w, want[:, 1], rtol=2e-5)


# --- the evaluation's normalisation -----------------------------------------------------


def test_evaluate_normalisation_matches_per_sequence_reference():
    """``_dmm.evaluate``'s IS-NLL per frame (a), frame bound (b) and per-sequence bound (c)
    recomputed per unpadded sequence with the reference and the same keys: unsorted lengths,
    garbage in the padding, bucket padding and a filler row in the last batch.

    Catches (audit plants): the per-sequence bound computed as the frame bound, the IS
    estimate without − log S.
    """
    model = _model("st-r")
    lengths = np.array([7, 2, 10, 5, 8])
    x, mask = _batch(lengths, 12, seed=1)
    data = SequenceSet(x, mask, lengths)
    s, b = 3, 2
    key = jax.random.key(9)
    got = _dmm.evaluate(model, data, key, bound_samples=s, is_samples=s, chunk_size=s,
                        batch_size=b, bucket_width=4)  # fmt: skip
    # evaluate's batches: the sequences sorted by length, b at a time; batch i draws its keys
    # from fold_in(key, i), the bound's per (sample, sequence), IS's per sample
    rows = np.argsort(lengths, kind="stable")
    nelbo, log_p = np.zeros(len(lengths)), np.zeros(len(lengths))
    for i in range(-(-len(rows) // b)):
        k_bound, k_is = jax.random.split(jax.random.fold_in(key, i))
        k_bound = jax.random.split(k_bound, s * b).reshape(s, b)
        k_is = jax.random.split(k_is, s)
        for j, r in enumerate(rows[i * b : (i + 1) * b]):
            seq = x[r, : lengths[r]]
            nelbo[r] = np.mean([_reference(model, seq, k_bound[k, j])[0] for k in range(s)])
            log_w = [_reference(model, seq, k_is[k])[1] for k in range(s)]
            log_p[r] = np.logaddexp.reduce(log_w) - np.log(s)
    want = {
        "nll_is": -log_p.sum() / lengths.sum(),
        "bound_frame": nelbo.sum() / lengths.sum(),
        "bound_seq": np.mean(nelbo / lengths),
    }
    assert set(got) == set(want)
    for name, value in want.items():
        np.testing.assert_allclose(got[name], value, rtol=1e-5, err_msg=name)


def test_training_loss_is_per_sequence_and_its_logged_loss_per_frame():
    """Without the L2 term the training objective is Σ_i −ELBO_i(β) / batch size and the
    logged ``loss_per_frame`` the same sum over the unpadded frames (6 of 3 × 4 here).

    Catches (audit plant): the logged loss per sequence instead of per frame."""
    x, mask = _batch(np.array([3, 1, 2]), 4, seed=3)
    batch = ((jnp.asarray(x), jnp.asarray(mask)), {"kl_weight": 0.5, "l2": 0.0})
    loss, aux = eqx.filter_jit(_dmm.dmm_loss)(_model("st-r"), batch, jax.random.key(4))
    assert float(aux["loss_per_frame"]) == pytest.approx(float(loss) * 3 / 6, rel=1e-6)


def test_long_batches_take_smaller_is_chunks_and_the_same_numbers(monkeypatch):
    """The IS chunk shrinks with the batch's frames (spec gotcha 8: MuseData's 4,288-frame
    batches needed 35.5 GiB at the paper's chunk of 100; 1.73 GiB at the chunk of 2 chosen
    now), always divides S, and changes no number: each sample keeps its own key."""
    assert _dmm.is_chunk(100, 2000, 20 * 160) == 100  # JSB at the paper defaults: as before
    assert _dmm.is_chunk(100, 2000, 20 * 1808) == 8
    assert _dmm.is_chunk(100, 2000, 20 * 4288) == 2
    assert _dmm.is_chunk(100, 2000, 10**9) == 1
    assert _dmm.is_chunk(7, 12, 1) == 6  # the largest divisor of S within chunk_size
    model = _model("st-r")
    lengths = np.array([3, 9])
    x, mask = _batch(lengths, 9, seed=2)
    key = jax.random.key(4)
    x_j, mask_j = jnp.asarray(x), jnp.asarray(mask)
    whole = _dmm._is_batch(model, x_j, mask_j, key, 6, 6)
    one_by_one = _dmm._is_batch(model, x_j, mask_j, key, 6, 1)
    np.testing.assert_allclose(one_by_one, whole, rtol=1e-6)
    # evaluate picks the chunk per batch from its padded frames: 1 × 4, then 1 × 12
    chunks, real = [], _dmm.is_chunk
    monkeypatch.setattr(_dmm, "IS_CHUNK_FRAMES", 12)
    monkeypatch.setattr(_dmm, "is_chunk", lambda *a: chunks.append(real(*a)) or chunks[-1])
    _dmm.evaluate(model, SequenceSet(x, mask, lengths), key, bound_samples=1, is_samples=6,
                  chunk_size=6, batch_size=1, bucket_width=4)  # fmt: skip
    assert chunks == [3, 1], chunks


# --- float64 batches in an x64 session ------------------------------------------------


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("inference,num_iafs", CASES)
def test_float64_batch_in_x64_session(inference, num_iafs):
    """A float64 batch in an x64 session (it once failed: float32 noise, RNN state and posterior
    carry). The float32 model casts it to float32 (st-r: its float32 numbers bit for bit); the
    model cast to float64 gives those numbers to float32 rounding, in float64.

    Catches: the noise drawn in float32 without the cast, the data not cast to the model's dtype.
    """
    model = _model(inference, num_iafs)
    x, mask = _batch((9, 4), 12, seed=2)
    keys = jax.random.split(jax.random.key(6), 2)
    nelbo = eqx.filter_jit(jax.vmap(dmm.neg_elbo, in_axes=(None, 0, 0, 0, None)))
    x64, mask64 = x.astype(np.float64), mask.astype(np.float64)
    want = nelbo(model, x64, mask64, keys, 0.3)
    assert want.dtype == jnp.float32
    if inference == "st-r":  # the cast is the same for every network: one check suffices
        np.testing.assert_array_equal(want, nelbo(model, x, mask, keys, 0.3))
    model64 = jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, model)
    got = nelbo(model64, x64, mask64, keys, 0.3)
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, want, rtol=2e-5)
