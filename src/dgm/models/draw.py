"""DRAW: a recurrent VAE that draws an image on a canvas over T steps (Gregor et al. 2015).

Per step t = 1..T (spec ``draw.md`` §1-§4), for an image x of B rows and A columns::

    x̂_t = x − σ(c_{t−1})                        error image
    r_t = read(x, x̂_t, h^dec_{t−1})              [x, x̂] or γ·[F_Y x F_Xᵀ, F_Y x̂ F_Xᵀ]
    h^enc_t = LSTM_enc(h^enc_{t−1}, [r_t, h^dec_{t−1}])
    z_t = μ_t + σ_t ⊙ e_t,  e_t ~ N(0, I) fresh at every step
    h^dec_t = LSTM_dec(h^dec_{t−1}, z_t)
    c_t = c_{t−1} + write(h^dec_t)               W h + b, or (1/γ̂)·F̂_Yᵀ w_t F̂_X

The likelihood is Bernoulli(σ(c_T)); the loss is Σ BCE + Σ_t ½ Σ_d (μ² + σ² − log σ² − 1)
(−½ per latent dimension per step). Read and write attention have their own linear layers;
the read layer sees h^dec_{t−1}, the write layer h^dec_t. The initial canvas and LSTM outputs
are learned (zero at initialisation, as in the reference code); LSTM cell states start at 0.
Weights are Glorot-uniform, biases zero; the forget gate gets +1 inside the cell (TF1
``LSTMCell(forget_bias=1.0)``), gate order i, f, o, g.

The loss (:func:`neg_elbo_parts`) runs the steps on the whole batch with its own VJP (see
``_fused`` below): the forward scan keeps each step's starting state and gate
pre-activations, the backward scan recomputes the small parts of each step from them. Its
values and gradients equal those of plain autodiff through :func:`_scan` (one image's step
under ``jax.vmap``, which :func:`reconstruct` still uses for its trace) up to rounding; the
``paper`` training step takes 15-20 % less CPU time (measured under load).

References:
    K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra, "DRAW: A Recurrent
    Neural Network For Image Generation", ICML 2015.
"""

import functools
import math
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.custom_derivatives import CustomVJPPrimal, SymbolicZero
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.config import check_positive
from dgm.nn import attention
from dgm.nn.rnn import host_rng

MATMUL_DTYPES = ("float32", "bfloat16")  # see neg_elbo_parts' `matmul_dtype`
LAYERS = ("encoder", "decoder", "posterior", "read_attention", "write_attention", "write_patch")


class Dense(eqx.Module):
    """``W x + b`` with Glorot-uniform ``W`` (out, in) and zero ``b`` (TF1 defaults)."""

    weight: Float[Array, "out inp"]
    bias: Float[Array, " out"]

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray, fan_out=None):
        limit = math.sqrt(6.0 / (in_size + (fan_out or out_size)))
        w = host_rng(key).uniform(-limit, limit, (out_size, in_size))
        self.weight = jnp.asarray(w, jnp.float32)
        self.bias = jnp.zeros((out_size,), jnp.float32)

    def __call__(self, x: Float[Array, " inp"]) -> Float[Array, " out"]:
        return self.weight @ x + self.bias


def _lstm(gates, cell):
    """One LSTM update from pre-activations ``gates`` (order i, f, o, g); forget bias +1."""
    i, f, o, g = jnp.split(gates, 4, axis=-1)
    cell = jax.nn.sigmoid(f + 1.0) * cell + jax.nn.sigmoid(i) * jnp.tanh(g)
    return jax.nn.sigmoid(o) * jnp.tanh(cell), cell


class DRAW(eqx.Module):
    """The DRAW model (encoder, decoder, attention layers, learned initial state).

    Args:
        image_shape: ``(rows, columns)`` (B, A).
        num_steps: T.
        z_size: latent dimensions per step.
        enc_size, dec_size: LSTM units.
        read_n, write_n: glimpse sizes N, or ``None`` for no attention.
        grid: filterbank convention, ``"paper"`` or ``"reference"`` (see
            :mod:`dgm.nn.attention`).
        key: initialisation key.

    Example:
        >>> model = DRAW((28, 28), 10, 10, 64, 64, 2, 5, key=jax.random.key(0))
        >>> canvases, write_attention = generate(model, jnp.zeros((10, 10)))
        >>> canvases.shape
        (10, 784)
    """

    encoder: Dense  # LSTM gates from [r_t, h^dec_{t−1}, h^enc_{t−1}]
    decoder: Dense  # LSTM gates from [z_t, h^dec_{t−1}]
    posterior: Dense  # [μ_t, log σ_t] from h^enc_t
    read_attention: Dense | None  # 5 attention numbers from h^dec_{t−1}
    write_attention: Dense | None  # 5 attention numbers from h^dec_t
    write_patch: Dense  # the N×N patch (or the whole image) from h^dec_t
    canvas0: Float[Array, " pixels"]
    h_enc0: Float[Array, " enc"]
    h_dec0: Float[Array, " dec"]
    image_shape: tuple[int, int] = eqx.field(static=True)
    num_steps: int = eqx.field(static=True)
    z_size: int = eqx.field(static=True)
    enc_size: int = eqx.field(static=True)
    dec_size: int = eqx.field(static=True)
    read_n: int | None = eqx.field(static=True)
    write_n: int | None = eqx.field(static=True)
    grid: str = eqx.field(static=True)

    def __init__(
        self,
        image_shape: tuple[int, int],
        num_steps: int,
        z_size: int,
        enc_size: int,
        dec_size: int,
        read_n: int | None,
        write_n: int | None,
        grid: str = "paper",
        *,
        key: PRNGKeyArray,
    ):
        rows, cols = (int(v) for v in image_shape)
        sizes = {"image rows": rows, "image columns": cols, "num_steps": num_steps,
                 "z_size": z_size, "enc_size": enc_size, "dec_size": dec_size}  # fmt: skip
        for name, value in sizes.items():
            check_positive(name, value, integer=True)
        for name, n in (("read_n", read_n), ("write_n", write_n)):
            if n is not None:
                attention.check_glimpse(name, n, rows, cols)
        attention.check_grid(grid)
        self.image_shape, self.num_steps, self.z_size = (rows, cols), num_steps, z_size
        self.enc_size, self.dec_size = enc_size, dec_size
        self.read_n, self.write_n, self.grid = read_n, write_n, grid
        pixels = rows * cols
        read_size = 2 * (pixels if read_n is None else read_n**2)
        write_size = pixels if write_n is None else write_n**2
        keys = jax.random.split(key, 6)
        self.encoder = Dense(read_size + dec_size + enc_size, 4 * enc_size, key=keys[0])
        self.decoder = Dense(z_size + dec_size, 4 * dec_size, key=keys[1])
        # μ and log σ: the reference's two layers in one, each half initialised as its own
        self.posterior = Dense(enc_size, 2 * z_size, key=keys[2], fan_out=z_size)
        self.read_attention = None if read_n is None else Dense(dec_size, 5, key=keys[3])
        self.write_attention = None if write_n is None else Dense(dec_size, 5, key=keys[4])
        self.write_patch = Dense(dec_size, write_size, key=keys[5])
        self.canvas0 = jnp.zeros((pixels,), jnp.float32)
        self.h_enc0 = jnp.zeros((enc_size,), jnp.float32)
        self.h_dec0 = jnp.zeros((dec_size,), jnp.float32)

    @property
    def num_pixels(self) -> int:
        return self.image_shape[0] * self.image_shape[1]

    @property
    def latent_size(self) -> int:
        """All latent draws of one image, T × z."""
        return self.num_steps * self.z_size


class _Layers:
    """Applies the model's dense layers by name."""

    def __init__(self, model: DRAW):
        self.model = model

    def __call__(self, name: str, x):
        return getattr(self.model, name)(x)


def _attention(layers: _Layers, name: str, h_dec, n: int):
    model = layers.model
    rows, cols = model.image_shape
    params = attention.attention_params(layers(name, h_dec), n, rows, cols)
    f_y, f_x = attention.filterbank(params, n, rows, cols, model.grid)
    return params, f_y, f_x


def _read(layers: _Layers, x, x_hat, h_dec):
    """The glimpse r_t; without read attention only x̂ (x's part of the encoder's gates is
    computed once, before the scan: see :func:`_scan`)."""
    model = layers.model
    if model.read_n is None:
        return x_hat, None
    params, f_y, f_x = _attention(layers, "read_attention", h_dec, model.read_n)
    glimpses = [attention.read(im.reshape(model.image_shape), f_y, f_x, params.gamma)
                for im in (x, x_hat)]  # fmt: skip
    return jnp.concatenate([g.ravel() for g in glimpses]), params


def _write(layers: _Layers, h_dec):
    model = layers.model
    patch = layers("write_patch", h_dec)
    if model.write_n is None:
        return patch, None
    n = model.write_n
    params, f_y, f_x = _attention(layers, "write_attention", h_dec, n)
    return attention.write(patch.reshape(n, n), f_y, f_x, params.gamma).ravel(), params


def _decode(layers: _Layers, z, h_dec, s_dec, canvas):
    h_dec, s_dec = _lstm(layers("decoder", jnp.concatenate([z, h_dec])), s_dec)
    update, params = _write(layers, h_dec)
    return h_dec, s_dec, canvas + update, params


def _encode_decode_step(model: DRAW, x, x_gates, w_rest, carry, e, trace: bool):
    """One step for one image: returns the new carry and the step's outputs."""
    canvas, h_enc, s_enc, h_dec, s_dec = carry
    layers = _Layers(model)
    r, read_params = _read(layers, x, x - jax.nn.sigmoid(canvas), h_dec)
    enc_in = jnp.concatenate([r, h_dec, h_enc])
    gates = layers("encoder", enc_in) if x_gates is None else x_gates + w_rest @ enc_in
    h_enc, s_enc = _lstm(gates, s_enc)
    mu, log_sigma = jnp.split(layers("posterior", h_enc), 2)
    z = mu + jnp.exp(log_sigma) * e
    h_dec, s_dec, canvas, write_params = _decode(layers, z, h_dec, s_dec, canvas)
    out = {
        "kl": 0.5 * jnp.sum(mu**2 + jnp.exp(2 * log_sigma) - 2 * log_sigma - 1.0),
        # log q(z_t) − log p(z_t) at the drawn z_t: the importance weight's latent part
        "log_ratio": jnp.sum(0.5 * z**2 - 0.5 * e**2 - log_sigma),
    }
    if trace:
        out.update(canvas=canvas, read=read_params, write=write_params, z=z, mu=mu,
                   log_sigma=log_sigma)  # fmt: skip
    return (canvas, h_enc, s_enc, h_dec, s_dec), out


def _scan(model: DRAW, x, eps, trace=False):
    """The T steps for a batch, one image's step under ``jax.vmap``: x (batch, pixels), eps
    (T, batch, z). The reference for ``_fused`` (differentiated by plain autodiff in the
    tests) and the traced pass of :func:`reconstruct`."""
    batch = x.shape[0]
    tile = lambda v: jnp.broadcast_to(v, (batch, *v.shape))  # noqa: E731
    zeros = lambda n: jnp.zeros((batch, n), x.dtype)  # noqa: E731
    carry = (tile(model.canvas0), tile(model.h_enc0), zeros(model.enc_size),
             tile(model.h_dec0), zeros(model.dec_size))  # fmt: skip
    x_gates = w_rest = None
    if model.read_n is None:  # r_t = [x, x̂_t]: x's product with its weights is the same
        w, pixels = model.encoder.weight, model.num_pixels  # at every step; do it once
        x_gates, w_rest = x @ w[:, :pixels].T + model.encoder.bias[None, :], w[:, pixels:]
    step = jax.vmap(lambda c, xb, xg, e: _encode_decode_step(model, xb, xg, w_rest, c, e, trace))
    carry, outs = jax.lax.scan(lambda c, e: step(c, x, x_gates, e), carry, eps)
    return carry[0], outs


# The training loss: the same steps on the whole batch, with their own VJP.
#
# Per step the two LSTM products (u_t = [r_t, h^dec_{t−1}, h^enc_{t−1}] by the encoder's
# weights, v_t = [z_t, h^dec_{t−1}] by the decoder's) carry nearly all the arithmetic; the rest
# (gates, posterior, attention, write) is small. The forward scan keeps, per step, only the
# state it started from, the gate pre-activations, r_t and z_t; the backward scan recomputes
# each step's small parts from them (``jax.vjp`` of :func:`_pre`, :func:`_mid`, :func:`_post`),
# passes the cotangents through the two products, and accumulates each LSTM weight gradient
# as inputsᵀ @ gate cotangents (one product per step; measured faster on XLA:CPU than one
# product over all T × batch rows after the scan). Autodiff of the vmapped scan stored about
# three times the residuals, zero-filled on every call.

_PRE, _MID, _POST = ("ra_w", "ra_b"), ("post_w", "post_b"), ("wa_w", "wa_b", "wp_w", "wp_b")


class _Spec(NamedTuple):
    image_shape: tuple[int, int]
    read_n: int | None
    write_n: int | None
    grid: str
    z_size: int
    matmul_dtype: str | None = None  # the LSTM products' operand type (None: as given)


def _mm(a, b, dtype: str | None):
    """``a @ b`` with its operands in ``dtype``, accumulated in float32 or wider."""
    if dtype is None:
        return a @ b
    out = jnp.promote_types(a.dtype, jnp.float32)
    return jnp.matmul(a.astype(dtype), b.astype(dtype), preferred_element_type=out)


def _cast(w, dtype: str | None):
    return w if dtype is None else w.astype(dtype)


def _glimpse_params(spec: _Spec, raw, n: int):
    rows, cols = spec.image_shape
    params = attention.attention_params(raw, n, rows, cols)
    return (params, *attention.filterbank(params, n, rows, cols, spec.grid))


def _pre(spec: _Spec, q: dict, x, canvas, h_dec):
    """The glimpse r_t of the batch (the error image itself without read attention)."""
    x_hat = x - jax.nn.sigmoid(canvas)
    if spec.read_n is None:
        return x_hat

    def one(raw, xb, xhb):
        params, f_y, f_x = _glimpse_params(spec, raw, spec.read_n)
        glimpses = [attention.read(im.reshape(spec.image_shape), f_y, f_x, params.gamma)
                    for im in (xb, xhb)]  # fmt: skip
        return jnp.concatenate([g.ravel() for g in glimpses])

    return jax.vmap(one)(h_dec @ q["ra_w"].T + q["ra_b"][None], x, x_hat)


def _mid(spec: _Spec, q: dict, g_enc, s_enc, e):
    """Encoder LSTM from its gate pre-activations, the posterior, z_t, KL_t and log-ratio_t."""
    h_enc, s_enc = _lstm(g_enc, s_enc)
    mu, log_sigma = jnp.split(h_enc @ q["post_w"].T + q["post_b"][None], 2, axis=-1)
    z = mu + jnp.exp(log_sigma) * e
    kl = 0.5 * jnp.sum(mu**2 + jnp.exp(2 * log_sigma) - 2 * log_sigma - 1.0, axis=-1)
    log_ratio = jnp.sum(0.5 * z**2 - 0.5 * e**2 - log_sigma, axis=-1)
    return h_enc, s_enc, z, kl, log_ratio


def _post(spec: _Spec, q: dict, g_dec, s_dec, canvas):
    """Decoder LSTM from its gate pre-activations, then the write onto the canvas."""
    h_dec, s_dec = _lstm(g_dec, s_dec)
    patch = h_dec @ q["wp_w"].T + q["wp_b"][None]
    if spec.write_n is None:
        return h_dec, s_dec, canvas + patch
    n = spec.write_n

    def one(raw, pb):
        params, f_y, f_x = _glimpse_params(spec, raw, n)
        return attention.write(pb.reshape(n, n), f_y, f_x, params.gamma).ravel()

    return h_dec, s_dec, canvas + jax.vmap(one)(h_dec @ q["wa_w"].T + q["wa_b"][None], patch)


def _pick(p: dict, names) -> dict:
    return {k: p[k] for k in names}


def _forward(spec: _Spec, p: dict, x, eps, save: bool):
    mm = spec.matmul_dtype  # weights transposed (and cast) once, outside the loop
    w_enc_t, w_dec_t = _cast(p["w_enc"].T, mm), _cast(p["w_dec"].T, mm)

    def body(carry, e):
        canvas, h_enc, s_enc, h_dec, s_dec = carry
        r = _pre(spec, _pick(p, _PRE), x, canvas, h_dec)
        u = jnp.concatenate([r, h_dec, h_enc], axis=-1)
        g_enc = _mm(u, w_enc_t, mm) + jnp.atleast_2d(p["gx"])
        h_enc2, s_enc2, z, kl, log_ratio = _mid(spec, _pick(p, _MID), g_enc, s_enc, e)
        g_dec = _mm(jnp.concatenate([z, h_dec], axis=-1), w_dec_t, mm) + p["b_dec"][None]
        new = (h_enc2, s_enc2, *_post(spec, _pick(p, _POST), g_dec, s_dec, canvas))
        new = (new[4], new[0], new[1], new[2], new[3])  # canvas, h_enc, s_enc, h_dec, s_dec
        saved = (carry, r, z, g_enc, g_dec) if save else None
        return new, (kl, log_ratio, saved)

    carry, (kl, log_ratio, saved) = jax.lax.scan(body, p["carry0"], eps)
    return (carry[0], kl, log_ratio), saved


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _fused(spec: _Spec, p: dict, x, eps):
    """(c_T, KL_t, log-ratio_t) of the batch: ``p`` holds the weights (the encoder's without
    the columns of x when there is no read attention: their product is ``gx``), the
    decoder bias ``b_dec`` and the initial carry ``carry0``."""
    return _forward(spec, p, x, eps, save=False)[0]


def _value(a):
    return a.value if isinstance(a, CustomVJPPrimal) else a


def _fused_fwd(spec: _Spec, p, x, eps):
    want_dx = x.perturbed
    p = jax.tree.map(_value, p, is_leaf=lambda a: isinstance(a, CustomVJPPrimal))
    x, eps = x.value, eps.value
    out, saved = _forward(spec, p, x, eps, save=True)
    return out, (p, x, eps, saved, (jnp.zeros((), x.dtype),) if want_dx else ())


def _dense(ct, like):
    return jnp.zeros(like.shape, like.dtype) if isinstance(ct, SymbolicZero) else ct


def _fused_bwd(spec: _Spec, res, cts):
    p, x, eps, saved, want_dx = res
    carries, rs, zs, g_encs, g_decs = saved
    likes = (x, eps[..., 0], eps[..., 0])  # c_T, KL_t, log-ratio_t
    d_canvas, d_kl, d_lr = (_dense(ct, like) for ct, like in zip(cts, likes, strict=True))
    z_size, read_size = spec.z_size, rs.shape[-1]
    dec_size = carries[3].shape[-1]
    q_pre, q_mid, q_post = (_pick(p, k) for k in (_PRE, _MID, _POST))
    mm = spec.matmul_dtype
    w_enc, w_dec = _cast(p["w_enc"], mm), _cast(p["w_dec"], mm)

    def body(carry, inp):
        dc, dhe, dse, dhd, dsd, dq, dx, dw_enc_t, dw_dec_t, dgx, db_dec = carry
        (canvas, h_enc, s_enc, h_dec, s_dec), r, z, g_enc, g_dec, e, dkl, dlr = inp
        post = lambda g, s, c, q: _post(spec, q, g, s, c)  # noqa: E731
        dg_dec, dsd, dc, dq_post = jax.vjp(post, g_dec, s_dec, canvas, q_post)[1]((dhd, dsd, dc))
        dv = _mm(dg_dec, w_dec, mm)
        mid = lambda g, s, q: _mid(spec, q, g, s, e)  # noqa: E731
        dg_enc, dse, dq_mid = jax.vjp(mid, g_enc, s_enc, q_mid)[1]((dhe, dse, dv[:, :z_size],
                                                                    dkl, dlr))  # fmt: skip
        du = _mm(dg_enc, w_enc, mm)
        dr, dhd_enc, dhe = (du[:, :read_size], du[:, read_size : read_size + dec_size],
                            du[:, read_size + dec_size :])  # fmt: skip
        if want_dx:
            pre = lambda c, h, q, xx: _pre(spec, q, xx, c, h)  # noqa: E731
            dc_read, dhd_read, dq_pre, dx_t = jax.vjp(pre, canvas, h_dec, q_pre, x)[1](dr)
            dx = dx + dx_t
        else:
            pre = lambda c, h, q: _pre(spec, q, x, c, h)  # noqa: E731
            dc_read, dhd_read, dq_pre = jax.vjp(pre, canvas, h_dec, q_pre)[1](dr)
        dq = jax.tree.map(jnp.add, dq, {**dq_pre, **dq_mid, **dq_post})
        dhd = dv[:, z_size:] + dhd_enc + dhd_read
        # weight gradients, accumulated transposed: inputsᵀ @ gate cotangents
        dw_enc_t = dw_enc_t + _mm(jnp.concatenate([r, h_dec, h_enc], axis=-1).T, dg_enc, mm)
        dw_dec_t = dw_dec_t + _mm(jnp.concatenate([z, h_dec], axis=-1).T, dg_dec, mm)
        dgx = dgx + (dg_enc if dgx.ndim == 2 else jnp.sum(dg_enc, axis=0))
        db_dec = db_dec + jnp.sum(dg_dec, axis=0)
        carry = (dc + dc_read, dhe, dse, dhd, dsd, dq, dx, dw_enc_t, dw_dec_t, dgx, db_dec)
        return carry, None

    zeros = jnp.zeros_like
    dq0 = jax.tree.map(zeros, {**q_pre, **q_mid, **q_post})
    dw0 = (zeros(p["w_enc"].T), zeros(p["w_dec"].T), zeros(p["gx"]), zeros(p["b_dec"]))
    carry0 = (d_canvas, *(zeros(c) for c in p["carry0"][1:]), dq0,
              zeros(x) if want_dx else None, *dw0)  # fmt: skip
    inputs = (carries, rs, zs, g_encs, g_decs, eps, d_kl, d_lr)
    carry = jax.lax.scan(body, carry0, inputs, reverse=True)[0]
    dc, dhe, dse, dhd, dsd, dq, dx, dw_enc_t, dw_dec_t, dgx, db_dec = carry
    grads = {"w_enc": dw_enc_t.T, "w_dec": dw_dec_t.T, "gx": dgx, "b_dec": db_dec,
             "carry0": (dc, dhe, dse, dhd, dsd), **dq}  # fmt: skip
    return jax.tree.map(lambda _, g: g, p, grads), dx, None


_fused.defvjp(_fused_fwd, _fused_bwd, symbolic_zeros=True)


def _fused_scan(model: DRAW, x, eps, matmul_dtype: str | None = None):
    batch = x.shape[0]
    tile = lambda v: jnp.broadcast_to(v, (batch, *v.shape))  # noqa: E731
    zeros = lambda n: jnp.zeros((batch, n), x.dtype)  # noqa: E731
    carry0 = (tile(model.canvas0), tile(model.h_enc0), zeros(model.enc_size),
              tile(model.h_dec0), zeros(model.dec_size))  # fmt: skip
    w, pixels = model.encoder.weight, model.num_pixels
    if model.read_n is None:  # r_t = [x, x̂_t]: x's product with its weights is the same
        gx, w_enc = x @ w[:, :pixels].T + model.encoder.bias[None], w[:, pixels:]  # at every step
    else:
        gx, w_enc = model.encoder.bias, w
    none = lambda layer, name: None if layer is None else getattr(layer, name)  # noqa: E731
    p = {
        "w_enc": w_enc, "gx": gx, "w_dec": model.decoder.weight, "b_dec": model.decoder.bias,
        "post_w": model.posterior.weight, "post_b": model.posterior.bias,
        "ra_w": none(model.read_attention, "weight"), "ra_b": none(model.read_attention, "bias"),
        "wa_w": none(model.write_attention, "weight"),
        "wa_b": none(model.write_attention, "bias"),
        "wp_w": model.write_patch.weight, "wp_b": model.write_patch.bias, "carry0": carry0,
    }  # fmt: skip
    spec = _Spec(model.image_shape, model.read_n, model.write_n, model.grid, model.z_size,
                 matmul_dtype)  # fmt: skip
    return _fused(spec, p, x, eps)


def _check_batch(model: DRAW, x) -> None:
    if x.ndim != 2 or x.shape[1] != model.num_pixels:
        raise ValueError(f"`x` must have shape (batch, {model.num_pixels}); got {tuple(x.shape)}")


def neg_elbo_parts(
    model: DRAW,
    x: Float[Array, "batch pixels"],
    key: PRNGKeyArray,
    *,
    matmul_dtype: str | None = None,
) -> tuple[Float[Array, " batch"], Float[Array, " batch"], Float[Array, " batch"]]:
    """Per image: the reconstruction loss L^x = Σ BCE(x, σ(c_T)), the KL L^z, and the
    sampled log-ratio Σ_t log q(z_t) − log p(z_t), for one draw of all z_t.

    ``L^x + L^z`` is the single-sample bound on −log p(x) that the paper reports;
    ``−(L^x + log-ratio)`` is the log importance weight of the same draw.

    Args:
        model: the DRAW model.
        x: images, pixel values in [0, 1].
        key: the reparameterisation noise (fresh per step and image).
        matmul_dtype: ``"bfloat16"``: the LSTM products (forward and backward) take their
            operands in bfloat16 and accumulate in float32, the rest stays float32; for
            training on CPUs with bfloat16 matrix units (AMX, AVX512-BF16), where those
            products are several times faster. ``None``: all in ``x``'s type.
    """
    _check_batch(model, x)
    if matmul_dtype not in (None, *MATMUL_DTYPES):
        raise ValueError(
            f"`matmul_dtype` must be None, 'float32' or 'bfloat16'; got {matmul_dtype!r}"
        )
    mm = None if matmul_dtype in (None, "float32") else matmul_dtype
    eps = jax.random.normal(key, (model.num_steps, x.shape[0], model.z_size), x.dtype)
    canvas, kl, log_ratio = _fused_scan(model, x, eps, mm)
    recon = -jnp.sum(x * canvas - jax.nn.softplus(canvas), axis=1)
    return recon, jnp.sum(kl, axis=0), jnp.sum(log_ratio, axis=0)


def reconstruct(model: DRAW, x: Float[Array, "batch pixels"], key: PRNGKeyArray) -> dict:
    """The encode-decode pass with its trace, each (T, batch, ...): ``canvas`` (pre-sigmoid),
    ``read``/``write`` :class:`~dgm.nn.attention.AttentionParams` (or ``None``), the draws
    ``z`` and their ``mu``, ``log_sigma``, and the per-step ``kl`` and ``log_ratio``."""
    _check_batch(model, x)
    eps = jax.random.normal(key, (model.num_steps, x.shape[0], model.z_size), x.dtype)
    return _scan(model, x, eps, trace=True)[1]


def generate(model: DRAW, u: Float[Array, "steps z"]) -> tuple:
    """The canvases (T, pixels, pre-sigmoid) of one image drawn from the latent draws ``u``
    (z_t = u[t] ~ N(0, I)), and the write attention per step (or ``None``)."""
    layers = _Layers(model)

    def body(carry, z):
        h_dec, s_dec, canvas = carry
        h_dec, s_dec, canvas, params = _decode(layers, z, h_dec, s_dec, canvas)
        return (h_dec, s_dec, canvas), (canvas, params)

    carry = (model.h_dec0, jnp.zeros_like(model.h_dec0), model.canvas0)
    return jax.lax.scan(body, carry, u)[1]


def pixel_means(model: DRAW, u: Float[Array, " latent"]) -> Float[Array, " pixels"]:
    """σ(c_T) as a function of all T × z latent draws (flattened step-major): the
    generator of the decoder protocol (:mod:`dgm.models.decoders`)."""
    canvases, _ = generate(model, u.reshape(model.num_steps, model.z_size))
    return jax.nn.sigmoid(canvases[-1])
