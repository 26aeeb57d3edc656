"""Autoregressive layers and IAF steps: exact structure of the Jacobian, in float64.

Every check compares against ``jax.jacfwd`` of the whole map, flattened in the autoregressive
order (for images: raster over pixels, then channels within a pixel). Planted bugs that these
tests catch are listed in ``test_planted_non_strict_output_mask_is_caught`` and
``test_planted_log_det_sign_is_caught``.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn.autoregressive import (
    ARMLP,
    ARConv2d,
    ARConvNet,
    MaskedDense,
    conv_mask,
    elu,
    made_mask,
)
from dgm.nn.flows import IAFStep

pytestmark = pytest.mark.usefixtures("x64")

DIM, CTX = 4, 3
C, H, W = 2, 3, 3


def _f64(tree):
    """A float64 copy (on the host: no per-shape conversion kernels)."""
    return jax.tree.map(
        lambda a: jnp.asarray(np.asarray(a, np.float64)) if eqx.is_inexact_array(a) else a, tree
    )


def _perturb(net, seed):
    """Random float64 weights, also under the masks, so every allowed path is non-zero."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape)) if eqx.is_inexact_array(a) else a,
        net,
    )


def _dense(reverse=False, num_outputs=2, seed=0):
    net = ARMLP(
        DIM,
        (8, 8),
        context_size=CTX,
        num_outputs=num_outputs,
        reverse=reverse,
        key=jax.random.key(0),
    )
    return _perturb(net, seed)


def _conv(reverse=False, num_outputs=2, seed=1):
    net = ARConvNet(C, (4, 4), num_outputs=num_outputs, reverse=reverse, key=jax.random.key(1))
    return _perturb(net, seed)


def _raster(a):
    """(C, H, W) -> the autoregressive order (pixels in raster order, channels inside)."""
    return jnp.transpose(a, (1, 2, 0)).reshape(-1) if a.ndim == 3 else a


def _unraster(v, like):
    return v if like.ndim == 1 else jnp.transpose(v.reshape(H, W, C), (2, 0, 1))


@eqx.filter_jit
def _net_jacobians(net, z, ctx):
    """Jacobians of every network output in the autoregressive order."""
    return [
        jax.jacfwd(lambda v, i=i: _raster(net(_unraster(v, z), ctx)[i]))(_raster(z))
        for i in range(net.num_outputs)
    ]


def _step_results(step, z, ctx):
    z_new, log_det = step(z, ctx)
    jac = jax.jacfwd(lambda v: _raster(step(_unraster(v, z), ctx)[0]))(_raster(z))
    return {"z_new": z_new, "log_det": log_det, "jac": jac, "z_back": step.inverse(z_new, ctx)}


@eqx.filter_jit
def _checks(net, net_location, z, ctx, other, forms):
    """Everything the tests look at, in one compilation per network structure."""
    steps = {
        "affine": IAFStep(net, form="affine", scale=0.5),
        "gated": IAFStep(net, form="gated", gate_bias=2.0),
        "location": IAFStep(net_location, form="location", scale=0.5),
    }
    return {
        "outputs": net(z, ctx),
        "outputs_other": net(z, other),
        "location_m": net_location(z, ctx)[0],
        "jacs": _net_jacobians(net, z, ctx),
        "jacs_other": _net_jacobians(net, z, other),
        "steps": {form: _step_results(steps[form], z, ctx) for form in forms},
    }


def _z(shape, seed=2):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


def _assert_triangular(jac, *, strict, reverse):
    """Zero on the wrong side (and the diagonal when strict); the right side is used."""
    jac = np.asarray(jac)
    k = 0 if strict else 1
    wrong = np.triu(jac, k) if not reverse else np.tril(jac, -k)
    allowed = np.tril(jac, -1) if not reverse else np.triu(jac, 1)
    assert np.all(wrong == 0.0), "output depends on a later (or its own) variable"
    assert np.count_nonzero(allowed) > 0.5 * allowed.size / 2


def test_made_mask_is_the_original_channel_rule():
    # wider, non-strict: output group o // k sees inputs <= o // k (k = 2)
    wide = made_mask(3, 6, strict=False)
    expected = np.array([[i <= o // 2 for i in range(3)] for o in range(6)])
    np.testing.assert_array_equal(wide, expected)
    # narrower, strict (zerodiagonal): output o sees inputs < o * k (k = 2)
    narrow = made_mask(6, 3, strict=True)
    expected = np.array([[i < o * 2 for i in range(6)] for o in range(3)])
    np.testing.assert_array_equal(narrow, expected)
    np.testing.assert_array_equal(made_mask(3, 6, strict=False, reverse=True), wide[::-1, ::-1])


def test_conv_mask_is_raster_order():
    mask = conv_mask(2, 2, 3, strict=True)
    spatial = np.array([[1, 1, 1], [1, 0, 0], [0, 0, 0]], bool)
    for o in range(2):
        for i in range(2):
            expected = spatial.copy()
            expected[1, 1] = i < o  # the centre tap carries the strict channel mask
            np.testing.assert_array_equal(mask[o, i], expected)
    np.testing.assert_array_equal(
        conv_mask(2, 2, 3, strict=True, reverse=True), mask[::-1, ::-1, ::-1, ::-1]
    )


ALL_FORMS = ("affine", "location", "gated")


@pytest.fixture(scope="module", params=[False, True], ids=["order", "reversed"])
def dense(request):
    reverse = request.param
    with jax.enable_x64(True):  # masks are traced: both orders share one compilation
        net, net1 = _dense(reverse, seed=3), _dense(reverse, num_outputs=1, seed=4)
        z, ctx, other = _z((DIM,)), _z((CTX,), 4), _z((CTX,), 5)
        return reverse, z, _checks(net, net1, z, ctx, other, ALL_FORMS)


@pytest.fixture(scope="module", params=[False, True], ids=["order", "reversed"])
def conv(request):
    reverse = request.param
    with jax.enable_x64(True):
        net, net1 = _conv(reverse, seed=6), _conv(reverse, num_outputs=1, seed=7)
        z, ctx, other = _z((C, H, W)), _z((4, H, W), 7), _z((4, H, W), 8)
        return reverse, z, _checks(net, net1, z, ctx, other, ("affine",))


def _assert_strictly_autoregressive(results):
    """m and s depend only on earlier variables, whatever the context; the context matters."""
    reverse, _, res = results
    for jac in res["jacs"] + res["jacs_other"]:
        _assert_triangular(jac, strict=True, reverse=reverse)
    assert not np.allclose(res["outputs"][0], res["outputs_other"][0])
    assert not np.allclose(res["jacs"][1], res["jacs_other"][1])


def test_dense_network_is_strictly_autoregressive_with_context(dense):
    _assert_strictly_autoregressive(dense)


def test_conv_network_is_strictly_autoregressive_with_context(conv):
    _assert_strictly_autoregressive(conv)


def _assert_exact_step(step, z, reverse):
    _assert_triangular(step["jac"], strict=False, reverse=reverse)
    sign, logabs = np.linalg.slogdet(np.asarray(step["jac"]))
    assert sign == 1.0
    np.testing.assert_allclose(float(step["log_det"]), logabs, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(step["z_back"], z, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("form", ALL_FORMS)
def test_dense_step_log_det_equals_slogdet(dense, form):
    reverse, z, res = dense
    _assert_exact_step(res["steps"][form], z, reverse)


def test_conv_step_log_det_equals_slogdet(conv):
    reverse, z, res = conv
    _assert_exact_step(res["steps"]["affine"], z, reverse)


@pytest.mark.slow
def test_conv_location_and_gated_steps_are_exact():
    net, net1 = _conv(seed=6), _conv(num_outputs=1, seed=7)
    z, ctx = _z((C, H, W)), _z((4, H, W), 7)
    res = _checks(net, net1, z, ctx, ctx, ("location", "gated"))
    for form in ("location", "gated"):
        _assert_exact_step(res["steps"][form], z, False)


def test_step_forms_follow_their_formulas(dense):
    _, z, res = dense
    (m, s), m1, steps = res["outputs"], res["location_m"], res["steps"]
    np.testing.assert_allclose(steps["affine"]["z_new"], (z - 0.5 * m) / np.exp(0.5 * s))
    np.testing.assert_allclose(-steps["affine"]["log_det"], np.sum(0.5 * s))  # log q += 0.1 s
    np.testing.assert_allclose(steps["location"]["z_new"], z - 0.5 * m1)
    assert float(steps["location"]["log_det"]) == 0.0
    gate = 1.0 / (1.0 + np.exp(-(np.asarray(s) + 2.0)))
    np.testing.assert_allclose(steps["gated"]["z_new"], gate * z + (1 - gate) * m)
    np.testing.assert_allclose(steps["gated"]["log_det"], np.sum(np.log(gate)))


def test_planted_non_strict_output_mask_is_caught():
    """Bug: the output layers use the non-strict mask (m_i sees z_i): the check must fail."""
    net, net1 = _dense(seed=3), _dense(num_outputs=1, seed=4)
    bad = eqx.tree_at(
        lambda n: n.out.mask, net, jnp.asarray(np.tile(made_mask(8, DIM, strict=False), (2, 1)))
    )
    res = _checks(bad, net1, _z((DIM,)), _z((CTX,), 4), _z((CTX,), 5), ALL_FORMS)  # compiled
    with pytest.raises(AssertionError, match="depends on a later"):
        _assert_triangular(res["jacs"][0], strict=True, reverse=False)


def test_planted_log_det_sign_is_caught(dense):
    """Bug: log q −= 0.1 s instead of += (log_det = +Σ 0.1 s) no longer matches slogdet."""
    _, z, res = dense
    step = res["steps"]["affine"]
    bad = dict(step, log_det=-step["log_det"])
    with pytest.raises(AssertionError, match="Not equal to tolerance"):
        _assert_exact_step(bad, z, dense[0])


@eqx.filter_jit
def _norms_and_init(net, z, ctx):
    w = net.out.effective_weight()
    init = net.init_from_data(z, ctx, target_std=0.5)
    return jnp.sqrt(jnp.sum(w**2, axis=(1, 2, 3))), jax.vmap(init)(z, ctx)


def test_weight_norm_and_data_init():
    """Unit-norm rows at init; after the data-dependent init, each output channel of the
    network (m and s, context included) has mean 0 and the target std over batch and pixels."""
    net = ARConvNet(2, (4,), key=jax.random.key(13))
    rng = np.random.default_rng(14)
    z = jnp.asarray(rng.standard_normal((16, 2, 4, 4)) * 3.0 + 1.0, jnp.float32)
    ctx = jnp.asarray(rng.standard_normal((16, 4, 4, 4)), jnp.float32)
    norms, outs = _norms_and_init(net, z, ctx)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)
    for y in outs:
        np.testing.assert_allclose(jnp.mean(y, axis=(0, 2, 3)), 0.0, atol=1e-5)
        np.testing.assert_allclose(jnp.std(y, axis=(0, 2, 3)), 0.5, rtol=1e-4)


def test_elu_equals_jax_elu_in_value_and_gradient():
    """The default activation (``exp(x) − 1`` below 0) is ``jax.nn.elu``'s function: in float32
    within one ulp of 1 in value and gradient, from −30 to 30 and across 0."""
    x = jnp.asarray(np.concatenate([np.linspace(-30, 30, 2001), [-1e-6, 0.0, 1e-6]]), jnp.float32)
    np.testing.assert_allclose(elu(x), jax.nn.elu(x), rtol=1e-6, atol=1.2e-7)
    grad = jax.vmap(jax.grad(elu))(x)
    np.testing.assert_allclose(grad, jax.vmap(jax.grad(jax.nn.elu))(x), rtol=1e-6, atol=1.2e-7)
    assert elu(x).dtype == jnp.float32 and float(elu(jnp.float32(-30.0))) == -1.0


def test_fully_masked_output_row_has_finite_gradients():
    """The first output of a strict dense layer sees nothing: ‖v‖ = 0 must not give NaN."""
    dense = MaskedDense(3, 3, strict=True, key=jax.random.key(15))
    x = jnp.ones(3, jnp.float32)
    grads = eqx.filter_jit(eqx.filter_grad(lambda d: jnp.sum(d(x) ** 2)))(dense)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_bad_input_raises():
    key = jax.random.key(0)
    with pytest.raises(
        ValueError, match="`form` must be one of affine, location, gated; got 'iaf'"
    ):
        IAFStep(ARMLP(2, (4,), key=key), form="iaf")
    with pytest.raises(ValueError, match="needs a network with `num_outputs=2`"):
        IAFStep(ARMLP(2, (4,), num_outputs=1, key=key), form="affine")
    with pytest.raises(ValueError, match="`kernel_size` must be a positive odd int; got 2"):
        ARConvNet(2, (4,), kernel_size=2, key=key)
    with pytest.raises(ValueError, match="`hidden_sizes` must name at least one hidden layer"):
        ARMLP(2, (), key=key)
    with pytest.raises(ValueError, match="`context` must be given iff"):
        ARMLP(2, (4,), context_size=2, key=key)(jnp.ones(2, jnp.float32))


def test_weight_norm_gain_is_exp_of_three_times_the_log_scale():
    """The Theano parametrisation w = exp(3g)·v/‖v‖ (``logscale_scale = 3``), row by row of
    the masked v, for a dense and a conv layer: with g = 0.2 every unmasked row has norm
    exp(0.6) whatever v. (Data-dependent init divides log(factor) by the same 3, so init
    outputs alone cannot see the factor; the optimiser's steps in g can.) Planted bug this
    caught: exp(g)."""
    dense = MaskedDense(4, 6, key=jax.random.key(15))
    conv = ARConv2d(2, 3, key=jax.random.key(16))
    for layer in (dense, conv):
        g = jnp.full_like(layer.log_scale, 0.2)
        w = eqx.tree_at(lambda m: m.log_scale, layer, g).effective_weight()
        norms = jnp.sqrt(jnp.sum(w**2, axis=tuple(range(1, w.ndim))))
        np.testing.assert_allclose(np.asarray(norms), np.exp(0.6), rtol=1e-6)
