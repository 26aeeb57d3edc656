"""The DMM posterior's sample path; for structured q, one scan with a hand-placed VJP.

q(z_t | z_{t−1}, x) = N(μ, σ²) with h = (tanh(W_c z_{t−1} + b_c) + Σ_dirs h_t^RNN) / (1 + dirs),
μ = W_μ h + b_μ, σ² = softplus(W_σ h + b_σ), z_t = μ + σ ε_t (then any IAF steps).

Each step needs z_{t−1}, so the scan cannot be avoided; but its weights' gradients can
leave it. Differentiating a scan adds every step's rank-``batch`` outer product into a
weight-sized accumulator (a small, memory-bound product plus an add per weight per step).
Here the combiner and head weights enter the scan as constants, each layer's output gets a
zero "tap" input, and autodiff of the scan returns the taps' cotangents, stacked over time:
those are the layers' output cotangents, and each weight gradient becomes one product over
all steps and sequences. The IAF weights (if any) keep ordinary autodiff.
"""

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float


def posterior_path(encoder, flow, feats: Float[Array, "time batch dirs rnn"], eps):
    """(z, μ_q, σ²_q, flow log-det) along one sampled path per sequence, all time-major.

    ``encoder`` is an :class:`~dgm.models.dmm.InferenceNetwork`, ``flow`` an
    :class:`~dgm.nn.flows.IAF` or None, ``eps`` (time, batch, latent) standard normal draws;
    ``z`` is after the flow. Mean-field q needs no scan: every step is computed at once.
    """
    if encoder.combine is not None:
        return structured_path(encoder, flow, feats, eps)
    mu_q, var_q = jax.vmap(jax.vmap(lambda f: encoder.posterior(f, None)))(feats)
    z = mu_q + jnp.sqrt(var_q) * eps
    log_det = jnp.zeros(z.shape[:-1], z.dtype)
    if flow is not None:
        z, log_det = jax.vmap(jax.vmap(flow))(z)
    return z, mu_q, var_q, log_det


def structured_path(encoder, flow, feats: Float[Array, "time batch dirs rnn"], eps):
    """:func:`posterior_path` of a structured ``encoder`` (combiner of z_{t−1} and RNN states)."""
    heads = (encoder.locs[0], encoder.variances[0])
    weights = (
        encoder.combine.weight.T,  # transposed once, outside the loop
        encoder.combine.bias,
        jnp.concatenate([h.weight for h in heads], axis=0).T,  # μ and σ² in one product
        jnp.concatenate([h.bias for h in heads]),
    )
    return _path(1 + feats.shape[2], weights, flow, jnp.sum(feats, axis=2), eps)


def _steps(num_terms: int, weights, flow, feats, eps, taps):
    w_c, b_c, w_heads, b_heads = weights
    z_dim = eps.shape[-1]

    def step(z_prev, inp):
        feat, e, tap_c, tap_heads = inp
        h = (jnp.tanh(z_prev @ w_c + b_c[None, :] + tap_c) + feat) / num_terms
        out = h @ w_heads + b_heads[None, :] + tap_heads
        mu, var = out[:, :z_dim], jax.nn.softplus(out[:, z_dim:])
        z = mu + jnp.sqrt(var) * e
        log_det = jnp.zeros(z.shape[:1], z.dtype)
        if flow is not None:
            z, log_det = jax.vmap(flow)(z)
        return z, (z, mu, var, log_det, h)

    z0 = jnp.zeros_like(eps[0], jnp.promote_types(feats.dtype, eps.dtype))  # z's dtype
    _, out = jax.lax.scan(step, z0, (feats, eps, *taps))
    return out


def _zero_taps(weights, eps):
    return tuple(jnp.zeros((*eps.shape[:2], w.shape[1]), w.dtype) for w in weights[::2])


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _path(num_terms, weights, flow, feats, eps):
    return _steps(num_terms, weights, flow, feats, eps, _zero_taps(weights, eps))[:4]


def _path_fwd(num_terms, weights, flow, feats, eps):
    def steps(flow, feats, eps, taps):  # ``weights`` are constants here
        return _steps(num_terms, weights, flow, feats, eps, taps)

    (z, mu, var, log_det, h), vjp = jax.vjp(steps, flow, feats, eps, _zero_taps(weights, eps))
    return (z, mu, var, log_det), (vjp, z, h)


def _path_bwd(num_terms, residuals, cotangents):
    vjp, z, h = residuals
    d_flow, d_feats, d_eps, (d_c, d_heads) = vjp((*cotangents, jnp.zeros_like(h)))
    z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
    over_steps = ((0, 1), (0, 1))  # time and batch
    d_weights = (
        jnp.tensordot(z_prev, d_c, over_steps),
        jnp.sum(d_c, axis=(0, 1)),
        jnp.tensordot(h, d_heads, over_steps),
        jnp.sum(d_heads, axis=(0, 1)),
    )
    return d_weights, d_flow, d_feats, d_eps


_path.defvjp(_path_fwd, _path_bwd)
