"""The dense IAF step against NumPyro's and flowjax's IAFs holding the same weights (float64).

Marked ``slow`` (about 10 CPU seconds, mostly the peers' op-by-op compilation).

NumPyro's ``InverseAutoregressiveTransform`` computes ``y = exp(log_scale)·x + mean`` from an
arbitrary autoregressive network; we give it NumPyro's own ``MaskedDense`` layers with our
masks and (weight-normalised) weights, and the head that makes each of our forms that affine
map: affine ``mean = −0.1 m e^{−0.1 s}, log_scale = −0.1 s``; location ``mean = −0.1 m``;
gated ``mean = (1 − σ) m, log_scale = log σ``. flowjax's ``MaskedAutoregressive`` gets its MLP
weights and masks replaced by ours (its conditioning input is our context, concatenated to the
first layer's input, which is the same map as our context layer added after it) and a scalar
transformer with our code form. Densities (through each peer's own inversion) and samples
(through each peer's own sampling) must agree to float64 rounding.
"""

from typing import ClassVar

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn.autoregressive import ARMLP
from dgm.nn.flows import IAFStep

pytestmark = pytest.mark.usefixtures("x64")
DIM, CTX, HIDDEN = 5, 3, (10, 10)


def _net(num_outputs=2, seed=0):
    net = ARMLP(DIM, HIDDEN, context_size=CTX, num_outputs=num_outputs, key=jax.random.key(seed))
    rng = np.random.default_rng(seed)  # non-initial weights, so every allowed path is used
    return jax.tree.map(
        lambda a: jnp.asarray(0.3 * rng.standard_normal(a.shape)) if eqx.is_inexact_array(a) else a,
        net,
    )


def _numpyro_arn(net, ctx, form, gate_bias):
    from numpyro.nn.masked_dense import MaskedDense

    def layer(lin):
        _, apply = MaskedDense(jnp.asarray(lin.mask.T, jnp.float64))
        return lambda x: apply((lin.effective_weight().T, lin.bias), x)

    hidden, outputs = [layer(h) for h in net.hidden], [layer(o) for o in net.outputs]
    shift = net.context(ctx)  # the context is a constant of the flow

    def arn(x):
        h = x
        for i, f in enumerate(hidden):
            h = jax.nn.elu(f(h) + (shift if i == 0 else 0.0))
        outs = [f(h) for f in outputs]
        if form == "location":
            return -0.1 * outs[0], jnp.zeros_like(x)
        m, s = outs
        if form == "affine":
            return -0.1 * m * jnp.exp(-0.1 * s), -0.1 * s
        return (1.0 - jax.nn.sigmoid(s + gate_bias)) * m, jax.nn.log_sigmoid(s + gate_bias)

    return arn


@pytest.mark.slow
@pytest.mark.parametrize("form", ["affine", "location", "gated"])
def test_density_and_samples_equal_numpyro(form):
    pytest.importorskip("numpyro", reason="NumPyro is not installed")
    import numpyro.distributions as dist
    from numpyro.distributions.flows import InverseAutoregressiveTransform

    net = _net(1 if form == "location" else 2)
    ctx = jnp.asarray(np.random.default_rng(1).standard_normal(CTX))
    step = IAFStep(net, form=form, gate_bias=1.5)
    base = dist.Normal(jnp.zeros(DIM), 1.0).to_event(1)
    peer = dist.TransformedDistribution(
        base, InverseAutoregressiveTransform(_numpyro_arn(net, ctx, form, 1.5))
    )
    key = jax.random.key(2)
    eps = base.sample(key)
    y, log_det = step(eps, ctx)
    np.testing.assert_allclose(peer.sample(key), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(peer.log_prob(y), base.log_prob(eps) - log_det, rtol=1e-10)


@pytest.mark.slow
def test_density_and_samples_equal_flowjax():
    pytest.importorskip("flowjax", reason="flowjax is not installed (pip install flowjax)")
    import paramax
    from flowjax.bijections import AbstractBijection, MaskedAutoregressive
    from flowjax.distributions import Normal, Transformed

    class CodeIAF(AbstractBijection):
        """The code's scalar update, x -> (x − 0.1 m)/exp(0.1 s), as a flowjax transformer."""

        shape: tuple[int, ...]
        cond_shape: ClassVar[None] = None
        m: jax.Array
        s: jax.Array

        def __init__(self, m=0.0, s=0.0):
            self.m, self.s, self.shape = jnp.asarray(m, float), jnp.asarray(s, float), ()

        def transform_and_log_det(self, x, condition=None):
            return (x - 0.1 * self.m) * jnp.exp(-0.1 * self.s), -0.1 * self.s

        def inverse_and_log_det(self, y, condition=None):
            return y * jnp.exp(0.1 * self.s) + 0.1 * self.m, 0.1 * self.s

    net = _net(seed=3)
    with jax.numpy_rank_promotion("allow"):  # flowjax's mask construction broadcasts ranks
        bij = MaskedAutoregressive(
            jax.random.key(4),
            transformer=CodeIAF(),
            dim=DIM,
            cond_dim=CTX,
            nn_width=HIDDEN[0],
            nn_depth=len(HIDDEN),
            nn_activation=jax.nn.elu,
        )
    first = net.hidden[0]
    weights = [jnp.concatenate([first.effective_weight(), net.context.effective_weight()], 1)]
    biases = [first.bias + net.context.bias]
    masks = [jnp.concatenate([first.mask, jnp.ones((HIDDEN[0], CTX), bool)], 1)]
    for layer in net.hidden[1:]:
        weights.append(layer.effective_weight())
        biases.append(layer.bias)
        masks.append(layer.mask)
    m_out, s_out = net.outputs  # flowjax interleaves the per-variable parameters (m_i, s_i)
    weights.append(
        jnp.stack([m_out.effective_weight(), s_out.effective_weight()], 1).reshape(2 * DIM, -1)
    )
    biases.append(jnp.stack([m_out.bias, s_out.bias], 1).reshape(-1))
    masks.append(jnp.stack([m_out.mask, s_out.mask], 1).reshape(2 * DIM, -1))
    layers = tuple(
        eqx.tree_at(
            lambda lin: (lin.weight, lin.bias),
            lin,
            (paramax.Parameterize(jnp.where, mask, w, 0.0), b),
        )
        for lin, w, b, mask in zip(
            bij.masked_autoregressive_mlp.layers, weights, biases, masks, strict=True
        )
    )
    bij = eqx.tree_at(lambda b: b.masked_autoregressive_mlp.layers, bij, layers)
    base = Normal(jnp.zeros(DIM))
    peer = Transformed(base, bij)
    ctx = jnp.asarray(np.random.default_rng(5).standard_normal(CTX))
    key = jax.random.key(6)
    eps = base.sample(key)
    y, log_det = IAFStep(net, form="affine")(eps, ctx)
    np.testing.assert_allclose(peer.sample(key, condition=ctx), y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(
        peer.log_prob(y, condition=ctx), base.log_prob(eps) - log_det, rtol=1e-10
    )
