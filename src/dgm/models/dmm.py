"""Deep Markov Model with the structured and mean-field inference networks of the paper.

Generative model (one sequence):  z₁ ~ N(0, I),  z_t | z_{t−1} ~ N(μ(z_{t−1}), diag σ²(z_{t−1})),
x_t | z_t ~ Bernoulli(sigmoid(emission(z_t))) or a Gaussian with a learned per-dimension
variance. Transition heads are **variances** (softplus), as in the original code.

Inference network q(z | x) = Π_t q(z_t | z_{t−1}, x): ``st-l``, ``st-r`` (= DKS), ``st-lr``
condition on the sampled z_{t−1} through the combiner; ``mf-l``, ``mf-r``, ``mf-lr`` do not.
Optional IAF steps (``num_iafs``) transform each z_t; the per-step KL is then estimated from
the sample instead of analytically.

The model computes in its parameters' dtype: data are cast to it (a float64 batch works in an
x64 session) and the noise is drawn in float32 and cast, so a model cast to float64 reproduces
the float32 model's numbers to float32 rounding.

References:
    Krishnan, Shalit & Sontag, "Structured Inference Networks for Nonlinear State Space
    Models", AAAI 2017 (arXiv:1609.09869).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, Key, PRNGKeyArray

from dgm.config import check_choice, check_positive
from dgm.models._posterior import posterior_path
from dgm.models.dmm_networks import (
    Emission,
    GatedTransition,
    LinearTransition,
    MLPTransition,
    gaussian_kl,
    gaussian_log_prob,
)
from dgm.nn.flows import IAF
from dgm.nn.rnn import CELLS, RNN, Linear

INFERENCE_NETWORKS = ("st-r", "st-l", "st-lr", "mf-r", "mf-l", "mf-lr")
TRANSITIONS = ("gated", "mlp", "linear")
LIKELIHOODS = ("bernoulli", "gaussian")


class InferenceNetwork(eqx.Module):
    """Embedding ``relu(W x + b)``, left and/or right RNNs, then the combiner or MF heads.

    With ``input_embedding=False`` the RNNs read x directly, as in Pyro's DMM guide.
    """

    embed: Linear | None
    rnns: list[RNN]
    combine: Linear | None
    locs: list[Linear]
    variances: list[Linear]
    kind: str = eqx.field(static=True)

    def __init__(
        self, obs_dim, z_dim, rnn_dim, kind, cell, *, key: PRNGKeyArray, input_embedding=True
    ):
        keys = jax.random.split(key, 8)
        directions = kind.split("-")[1]
        self.embed = Linear(obs_dim, rnn_dim, key=keys[0]) if input_embedding else None
        in_size = rnn_dim if input_embedding else obs_dim
        self.rnns = [RNN(in_size, rnn_dim, cell, key=keys[1 + i]) for i in range(len(directions))]
        structured = kind.startswith("st")
        self.combine = Linear(z_dim, rnn_dim, key=keys[3]) if structured else None
        num_heads = 1 if structured else len(directions)
        self.locs = [Linear(rnn_dim, z_dim, key=keys[4 + i]) for i in range(num_heads)]
        self.variances = [Linear(rnn_dim, z_dim, key=keys[6 + i]) for i in range(num_heads)]
        self.kind = kind

    def features(
        self, x: Float[Array, "batch time obs"], mask: Float[Array, "batch time"]
    ) -> Float[Array, "time batch dirs rnn"]:
        """RNN states of a batch, time-major; "l" runs forward, "r" backward.

        Batch-level rather than one sequence under ``vmap``: :meth:`RNN.batched` then
        computes each recurrent weight's gradient as one product over the whole batch.
        """
        e = x
        if self.embed is not None:
            e = jax.nn.relu(x @ self.embed.weight.T + self.embed.bias[None, None, :])
        directions = self.kind.split("-")[1]
        hs = [
            rnn.batched(e, mask, reverse=d == "r")
            for rnn, d in zip(self.rnns, directions, strict=True)
        ]
        return jnp.stack(hs, axis=2)

    def posterior(self, feats: Float[Array, "dirs rnn"], z_prev: Float[Array, " z"] | None):
        """Mean and variance of q(z_t | z_{t−1}, x) (``z_prev`` is unused by mean-field q)."""
        if self.combine is not None:
            h = (jnp.tanh(self.combine(z_prev)) + jnp.sum(feats, axis=0)) / (1 + feats.shape[0])
            return self.locs[0](h), jax.nn.softplus(self.variances[0](h))
        locs = [head(f) for head, f in zip(self.locs, feats, strict=True)]
        var = [jax.nn.softplus(head(f)) for head, f in zip(self.variances, feats, strict=True)]
        if len(locs) == 1:
            return locs[0], var[0]
        (mu_l, mu_r), (v_l, v_r) = locs, var
        return (mu_l * v_r + mu_r * v_l) / (v_l + v_r), v_l * v_r / (v_l + v_r)


class DMM(eqx.Module):
    """Deep Markov Model plus its inference network (one sequence; ``vmap`` over a batch).

    Example:
        >>> model = DMM(88, z_dim=8, transition_dim=16, emission_dim=16, rnn_dim=16,
        ...             key=jax.random.key(0))
        >>> x, mask = jnp.zeros((5, 88), jnp.float32), jnp.ones(5, jnp.float32)
        >>> loss = neg_elbo(model, x, mask, jax.random.key(1))
    """

    transition: GatedTransition | MLPTransition | LinearTransition
    emission: Emission
    encoder: InferenceNetwork
    flow: IAF | None
    z_dim: int = eqx.field(static=True)
    obs_dim: int = eqx.field(static=True)

    def __init__(
        self,
        obs_dim: int,
        *,
        z_dim: int = 100,
        transition_dim: int = 200,
        emission_dim: int = 100,
        emission_layers: int = 2,
        rnn_dim: int = 600,
        inference: str = "st-r",
        cell: str = "lstm",
        transition: str = "gated",
        likelihood: str = "bernoulli",
        num_iafs: int = 0,
        iaf_dim: int = 100,
        input_embedding: bool = True,
        key: PRNGKeyArray,
    ):
        check_choice("inference", inference, INFERENCE_NETWORKS)
        check_choice("cell", cell, CELLS)
        check_choice("transition", transition, TRANSITIONS)
        check_choice("likelihood", likelihood, LIKELIHOODS)
        for name, v in [("obs_dim", obs_dim), ("z_dim", z_dim), ("rnn_dim", rnn_dim)]:
            check_positive(name, v, integer=True)
        k_t, k_e, k_q, k_f = jax.random.split(key, 4)
        cls = {"gated": GatedTransition, "mlp": MLPTransition, "linear": LinearTransition}
        self.transition = cls[transition](z_dim, transition_dim, key=k_t)
        self.emission = Emission(z_dim, obs_dim, emission_dim, emission_layers, likelihood, key=k_e)
        self.encoder = InferenceNetwork(
            obs_dim, z_dim, rnn_dim, inference, cell, key=k_q, input_embedding=input_embedding
        )
        self.flow = IAF(z_dim, num_iafs, (iaf_dim,), key=k_f) if num_iafs > 0 else None
        self.z_dim, self.obs_dim = z_dim, obs_dim


def _dtype(model: DMM) -> jnp.dtype:
    """The model's float dtype (its parameters'): data and noise are cast to it."""
    return model.emission.out.weight.dtype


def _step_noise(
    key: PRNGKeyArray, num_steps: int, dim: int, dtype=jnp.float32
) -> Float[Array, "time dim"]:
    """Standard normal noise for step t from ``fold_in(key, t)``: padding-invariant draws.

    Drawn in float32 and cast to ``dtype``, so a float64 model sees the float32 model's
    draws and reproduces its numbers to float32 rounding.
    """
    steps = jnp.arange(num_steps)
    draw = jax.vmap(lambda t: jax.random.normal(jax.random.fold_in(key, t), (dim,), jnp.float32))
    return draw(steps).astype(dtype)


def _prior(model: DMM, z):
    """Mean and variance of p(z_t | z_{t−1}) at every step of a path (z_1 ~ N(0, I))."""
    z_prev = jnp.concatenate([jnp.zeros_like(z[:1]), z[:-1]], axis=0)
    mu_p, var_p = jax.vmap(model.transition)(z_prev)
    first = (jnp.arange(z.shape[0]) == 0)[:, None]
    return jnp.where(first, 0.0, mu_p), jnp.where(first, 1.0, var_p)


def _generative_terms(model: DMM, x, z, eps, mu_q, var_q, log_det):
    """One sequence's per-step terms, given its posterior path."""
    log_q = jax.vmap(gaussian_log_prob)(mu_q + jnp.sqrt(var_q) * eps, mu_q, var_q) - log_det
    mu_p, var_p = _prior(model, z)
    log_p = jax.vmap(gaussian_log_prob)(z, mu_p, var_p)
    if model.flow is None:
        kl = jax.vmap(gaussian_kl)(mu_q, var_q, mu_p, var_p)
    else:
        kl = log_q - log_p
    log_lik = jax.vmap(model.emission.log_prob)(z, x)
    return {"z": z, "log_lik": log_lik, "kl": kl, "log_p": log_p, "log_q": log_q}


def batch_sequence_terms(
    model: DMM,
    x: Float[Array, "batch time obs"],
    mask: Float[Array, "batch time"],
    keys: Key[Array, " batch"],
) -> dict[str, Float[Array, "..."]]:
    """:func:`sequence_terms` of a batch (sequence ``i`` uses ``keys[i]``); batch-major outputs.

    The recurrences run on the whole batch, so that their weight gradients are single
    products (see :meth:`RNN.batched` and :func:`posterior_path`); the rest is a ``vmap``.
    """
    dtype = _dtype(model)
    x, mask = jnp.asarray(x, dtype), jnp.asarray(mask, dtype)
    feats = model.encoder.features(x, mask)
    noise = jax.vmap(_step_noise, in_axes=(0, None, None, None))(
        keys, x.shape[1], model.z_dim, dtype
    )
    path = posterior_path(model.encoder, model.flow, feats, jnp.swapaxes(noise, 0, 1))
    z, mu_q, var_q, log_det = (jnp.swapaxes(a, 0, 1) for a in path)
    per_seq = jax.vmap(_generative_terms, in_axes=(None, 0, 0, 0, 0, 0, 0))
    return per_seq(model, x, z, noise, mu_q, var_q, log_det)


def sequence_terms(
    model: DMM, x: Float[Array, "time obs"], mask: Float[Array, " time"], key: PRNGKeyArray
) -> dict[str, Float[Array, "..."]]:
    """One posterior sample path and its per-step terms (unmasked).

    Returns:
        ``z`` (time, latent), ``log_lik`` log p(x_t | z_t), ``kl`` the per-step KL (analytic
        at the sampled z_{t−1}; a one-sample estimate with IAF), ``log_p`` log p(z_t | z_{t−1})
        and ``log_q`` log q(z_t | z_{t−1}, x), each of shape (time,).
    """
    terms = batch_sequence_terms(model, x[None], mask[None], key[None])
    return {name: value[0] for name, value in terms.items()}


def batch_neg_elbo(
    model: DMM,
    x: Float[Array, "batch time obs"],
    mask: Float[Array, "batch time"],
    keys: Key[Array, " batch"],
    kl_weight=1.0,
) -> Float[Array, " batch"]:
    """:func:`neg_elbo` of each sequence of a batch, computed batch-wide (training's path)."""
    terms = batch_sequence_terms(model, x, mask, keys)
    mask = jnp.asarray(mask, _dtype(model))
    return jnp.sum(mask * (-terms["log_lik"] + kl_weight * terms["kl"]), axis=1)


def neg_elbo(model: DMM, x, mask, key: PRNGKeyArray, kl_weight=1.0) -> Float[Array, ""]:
    """Masked negative ELBO of one sequence, Σ_t m_t (−log p(x_t | z_t) + β KL_t)."""
    return batch_neg_elbo(model, x[None], mask[None], key[None], kl_weight)[0]


def log_importance_weight(model: DMM, x, mask, key: PRNGKeyArray) -> Float[Array, ""]:
    """log p(x, z) − log q(z | x) for one posterior path z (masked)."""
    terms = sequence_terms(model, x, mask, key)
    mask = jnp.asarray(mask, _dtype(model))
    return jnp.sum(mask * (terms["log_lik"] + terms["log_p"] - terms["log_q"]))


def log_importance_weights(
    model: DMM,
    x: Float[Array, "batch time obs"],
    mask: Float[Array, "batch time"],
    key: PRNGKeyArray,
    num_samples: int,
    chunk_size: int,
) -> Float[Array, "samples batch"]:
    """log w_s = log p(x, z_s) − log q(z_s | x) for S paths, drawn ``chunk_size`` at a time."""
    if num_samples % chunk_size:
        raise ValueError(
            f"`num_samples` ({num_samples}) must be a multiple of `chunk_size` ({chunk_size})"
        )
    keys = jax.random.split(key, num_samples).reshape(num_samples // chunk_size, chunk_size)
    per_seq = jax.vmap(log_importance_weight, in_axes=(None, 0, 0, None))
    per_sample = jax.vmap(per_seq, in_axes=(None, None, None, 0))
    log_w = jax.lax.map(lambda k: per_sample(model, x, mask, k), keys)  # (chunks, chunk, batch)
    return log_w.reshape(num_samples, x.shape[0])


def importance_log_likelihood(
    model: DMM,
    x: Float[Array, "batch time obs"],
    mask: Float[Array, "batch time"],
    key: PRNGKeyArray,
    num_samples: int,
    chunk_size: int,
) -> Float[Array, " batch"]:
    """log p̂(x_i) = log (1/S) Σ_s w_s per sequence (a lower bound in expectation)."""
    log_w = log_importance_weights(model, x, mask, key, num_samples, chunk_size)
    return jax.scipy.special.logsumexp(log_w, axis=0) - math.log(num_samples)


def log_joint(
    model: DMM,
    x: Float[Array, "time obs"],
    z: Float[Array, "time latent"],
    mask: Float[Array, " time"] | None = None,
) -> Float[Array, ""]:
    """log p(x, z) = Σ_t m_t [log p(z_t | z_{t−1}) + log p(x_t | z_t)] of one sequence.

    The exact joint density of the generative model (the inference network plays no part),
    so ``exp(log_joint(model, x, ·))`` is the exact posterior of the latent path up to a
    constant: ``dgm.sample(lambda p: log_joint(model, x, p["z"]), {"z": z0}, key=key)``
    samples it with NUTS. ``mask`` (default all ones) drops padded steps.
    """
    mu_p, var_p = _prior(model, z)
    terms = jax.vmap(gaussian_log_prob)(z, mu_p, var_p) + jax.vmap(model.emission.log_prob)(z, x)
    return jnp.sum(terms if mask is None else mask * terms)


def sample_sequences(model: DMM, num_steps: int, key: PRNGKeyArray) -> Float[Array, "time obs"]:
    """Draw one sequence of emission probabilities (Bernoulli) or means from the prior."""
    key_z, _ = jax.random.split(key)

    def step(z_prev, inp):
        eps, first = inp
        mu, var = model.transition(z_prev)
        mu = jnp.where(first, jnp.zeros_like(mu), mu)
        var = jnp.where(first, jnp.ones_like(var), var)
        z = mu + jnp.sqrt(var) * eps
        return z, z

    dtype = _dtype(model)
    eps = jax.random.normal(key_z, (num_steps, model.z_dim), jnp.float32).astype(dtype)
    first = jnp.arange(num_steps) == 0
    _, z = jax.lax.scan(step, jnp.zeros((model.z_dim,), dtype), (eps, first))
    out = jax.vmap(model.emission.params)(z)
    return jax.nn.sigmoid(out) if model.emission.raw_var is None else out


def validate_sequences(x: ArrayLike, mask: ArrayLike, obs_dim: int, likelihood: str) -> None:
    """Check a padded batch before training: shapes, finite values, binary for Bernoulli.

    Raises:
        ValueError: naming ``x`` or ``mask``, what was expected and what arrived.
    """
    x, mask = np.asarray(x), np.asarray(mask)
    if x.ndim != 3 or x.shape[-1] != obs_dim:
        raise ValueError(f"`x` must have shape (batch, time, {obs_dim}); got shape {x.shape}")
    if mask.shape != x.shape[:2]:
        raise ValueError(f"`mask` must have shape {x.shape[:2]} (batch, time); got {mask.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError("`x` contains NaN or infinite values")
    if not np.all((mask == 0) | (mask == 1)):
        raise ValueError("`mask` must contain only 0 and 1")
    if likelihood == "bernoulli" and not np.all((x == 0) | (x == 1)):
        bad = x[(x != 0) & (x != 1)][:3]
        raise ValueError(
            f"`x` must be binary (0/1) for a Bernoulli emission; got values such as {bad.tolist()}"
            "; use likelihood='gaussian' for real-valued data"
        )
