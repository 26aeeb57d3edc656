"""Recurrent layers: the hand-placed VJP against plain autodiff of the textbook scan."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn.rnn import CELLS, RNN

BATCH, TIME, INP, HIDDEN = 3, 6, 4, 5


def _float64(tree):
    return jax.tree.map(lambda a: a.astype(jnp.float64) if eqx.is_inexact_array(a) else a, tree)


def _reference(rnn: RNN, xs, mask, reverse):
    """One sequence, plain ``lax.scan`` (the layer before its custom VJP)."""
    hsz = rnn.hidden_size
    gxs = xs @ rnn.w_x.T + rnn.bias[None, :]
    h0 = jnp.zeros((hsz,), xs.dtype)
    state0 = (h0, jnp.ones_like(h0)) if rnn.cell == "lstm" else (h0,)

    def body(state, inp):
        gx, m = inp
        g = gx + rnn.w_h @ state[0]
        if rnn.cell == "lstm":
            i, f, o = (jax.nn.sigmoid(g[k * hsz : (k + 1) * hsz]) for k in range(3))
            c = f * state[1] + i * jnp.tanh(g[3 * hsz :])
            new = (o * jnp.tanh(c), c)
        elif rnn.cell == "rnn":
            new = (jnp.tanh(g),)
        else:
            hh = rnn.w_h @ state[0]
            r = jax.nn.sigmoid(gx[:hsz] + hh[:hsz])
            u = jax.nn.sigmoid(gx[hsz : 2 * hsz] + hh[hsz : 2 * hsz])
            n = jnp.tanh(gx[2 * hsz :] + r * hh[2 * hsz :])
            new = ((1.0 - u) * n + u * state[0],)
        state = tuple(jnp.where(m > 0, a, b) for a, b in zip(new, state, strict=True))
        return state, state[0]

    return jax.lax.scan(body, state0, (gxs, mask), reverse=reverse)[1]


@pytest.fixture(scope="module")
def data():
    k_x, k_w = jax.random.split(jax.random.key(0))
    with jax.enable_x64(True):
        xs = jax.random.normal(k_x, (BATCH, TIME, INP), jnp.float64)
        lengths = jnp.asarray([TIME, 4, 1])  # full, padded, a single frame
        mask = (jnp.arange(TIME)[None, :] < lengths[:, None]).astype(jnp.float64)
        weights = jax.random.normal(k_w, (TIME, BATCH, HIDDEN), jnp.float64)
    return xs, mask, weights


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("cell", CELLS)
def test_batched_matches_plain_autodiff(cell, reverse, data):
    """Outputs and every gradient (weights and inputs) equal the plain scan's, float64."""
    xs, mask, weights = data
    rnn = _float64(RNN(INP, HIDDEN, cell, key=jax.random.key(1)))
    rnn = eqx.tree_at(lambda r: r.bias, rnn, 0.3 * jnp.arange(rnn.bias.size, dtype=jnp.float64))

    def loss_batched(rnn, xs):
        return jnp.sum(rnn.batched(xs, mask, reverse=reverse) * weights)

    def loss_looped(rnn, xs):
        hs = jax.vmap(lambda x, m: _reference(rnn, x, m, reverse))(xs, mask)
        return jnp.sum(jnp.swapaxes(hs, 0, 1) * weights)

    def loss_vmapped(rnn, xs):  # the per-sequence ``__call__``, batched by vmap
        hs = jax.vmap(lambda x, m: rnn(x, m, reverse=reverse))(xs, mask)
        return jnp.sum(jnp.swapaxes(hs, 0, 1) * weights)

    grad = jax.jit(jax.value_and_grad(loss_looped, argnums=(0, 1)))
    want_value, want_grads = grad(rnn, xs)
    for fn in (loss_batched, loss_vmapped):
        value, grads = jax.jit(jax.value_and_grad(fn, argnums=(0, 1)))(rnn, xs)
        np.testing.assert_allclose(value, want_value, rtol=1e-12)
        for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    # padded frames hold the state and get no input gradient
    _, (_, dxs) = grad(rnn, xs)
    assert float(jnp.max(jnp.abs(dxs[1, 4:]))) == 0.0


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize("cell", CELLS)
def test_float64_input_to_float32_layer(cell, data):
    """Float64 input (standard promotion) runs in float64, as the layer cast to float64 does
    (the state once took w_h's float32: a scan-carry TypeError); gradients keep float32."""
    xs, mask, weights = data
    rnn = RNN(INP, HIDDEN, cell, key=jax.random.key(2))

    def loss(rnn):
        return jnp.sum(rnn.batched(xs, mask) * weights)

    with jax.numpy_dtype_promotion("standard"):
        value, grads = jax.jit(jax.value_and_grad(loss))(rnn)
    want, want_grads = jax.jit(jax.value_and_grad(loss))(_float64(rnn))
    assert value.dtype == jnp.float64
    np.testing.assert_allclose(value, want, rtol=1e-12)
    for got, w in zip(jax.tree.leaves(grads), jax.tree.leaves(want_grads), strict=True):
        assert got.dtype == jnp.float32
        np.testing.assert_allclose(got, w, rtol=1e-6, atol=1e-7)


def test_float32_layer_keeps_float32():
    rnn = RNN(INP, HIDDEN, "gru", key=jax.random.key(2))
    xs = jnp.ones((BATCH, TIME, INP), jnp.float32)
    mask = jnp.ones((BATCH, TIME), jnp.float32)
    hs = rnn.batched(xs, mask)
    assert hs.shape == (TIME, BATCH, HIDDEN) and hs.dtype == jnp.float32
