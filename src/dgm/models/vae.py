"""A Gaussian-latent VAE for binary images: MLP encoder, softplus MLP Bernoulli decoder.

The decoder has the form of the constrained-HMC MNIST in-painting generator (spec
``chmc.md`` §4.3): ``m(z) = sigmoid(W₂ softplus(W₁ softplus(W₀ z + b₀) + b₁) + b₂)``, the
784 pixel means of a 50-d code. :class:`Decoder` is exposed on its own (``model.decoder``,
:func:`load_decoder`) so the in-painting experiment can condition it.

The prior is N(0, I), the approximate posterior q(z|x) = N(μ(x), diag σ²(x)), the
likelihood Bernoulli with the decoder's logits. Functions work on one example; batches
are ``jax.vmap`` outside.

References:
    D. P. Kingma and M. Welling, "Auto-Encoding Variational Bayes", ICLR 2014.
    Y. Burda, R. Grosse, R. Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
    (the importance-sampled log-likelihood estimate).
"""

import math
import os

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.models import decoders

FORMAT = decoders.FORMAT
MODEL_FILE = decoders.MODEL_FILE


def _mlp_layers(sizes: tuple[int, ...], key: PRNGKeyArray) -> tuple[eqx.nn.Linear, ...]:
    keys = jax.random.split(key, len(sizes) - 1)
    return tuple(
        eqx.nn.Linear(a, b, key=k) for a, b, k in zip(sizes[:-1], sizes[1:], keys, strict=True)
    )


def _check_sizes(**sizes) -> None:
    for name, value in sizes.items():
        values = value if isinstance(value, tuple) else (value,)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values):
            raise ValueError(f"`{name}` must be positive int(s); got {value!r}")


class Decoder(eqx.Module):
    """``z (latent_dim) → softplus → softplus → logits (output_dim)``; ``mean = sigmoid(logits)``.

    Weights are stored (out, in), as in the original generator.

    Example:
        >>> dec = Decoder(50, 784, (500, 500), key=jax.random.key(0))
        >>> dec.mean(jnp.zeros(50)).shape
        (784,)
    """

    layers: tuple[eqx.nn.Linear, ...]
    latent_dim: int = eqx.field(static=True)
    output_dim: int = eqx.field(static=True)
    hidden: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, latent_dim: int, output_dim: int, hidden=(500, 500), *, key: PRNGKeyArray):
        hidden = tuple(hidden)
        _check_sizes(latent_dim=latent_dim, output_dim=output_dim, hidden=hidden)
        self.latent_dim, self.output_dim, self.hidden = latent_dim, output_dim, hidden
        self.layers = _mlp_layers((latent_dim, *hidden, output_dim), key)

    def logits(self, z: Float[Array, " latent"]) -> Float[Array, " obs"]:
        """Bernoulli logits of the pixels given the code ``z``."""
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.softplus(layer(h))
        return self.layers[-1](h)

    def mean(self, z: Float[Array, " latent"]) -> Float[Array, " obs"]:
        """Pixel means ``sigmoid(logits(z))`` in (0, 1): the in-painting generator."""
        return jax.nn.sigmoid(self.logits(z))

    def mean_head(self, z: Float[Array, " latent"], num: int) -> Float[Array, " head"]:
        """The first ``num`` pixel means, ``mean(z)[:num]``, computing only those rows of the
        last layer (XLA does not move the slice into the matmul: for the in-painting
        generator's 196 of 784 pixels the Jacobian was 2.8× cheaper this way)."""
        h = z
        for layer in self.layers[:-1]:
            h = jax.nn.softplus(layer(h))
        last = self.layers[-1]
        return jax.nn.sigmoid(last.weight[:num] @ h + last.bias[:num])

    def __call__(self, z: Float[Array, " latent"], *, key=None) -> Float[Array, " obs"]:
        return self.mean(z)


class Encoder(eqx.Module):
    """``x → softplus → softplus → (mean, log-variance)`` of q(z|x)."""

    layers: tuple[eqx.nn.Linear, ...]
    latent_dim: int = eqx.field(static=True)

    def __init__(self, input_dim: int, latent_dim: int, hidden=(500, 500), *, key: PRNGKeyArray):
        hidden = tuple(hidden)
        _check_sizes(input_dim=input_dim, latent_dim=latent_dim, hidden=hidden)
        self.latent_dim = latent_dim
        self.layers = _mlp_layers((input_dim, *hidden, 2 * latent_dim), key)

    def __call__(
        self, x: Float[Array, " obs"], *, key=None
    ) -> tuple[Float[Array, " latent"], Float[Array, " latent"]]:
        h = x
        for layer in self.layers[:-1]:
            h = jax.nn.softplus(layer(h))
        out = self.layers[-1](h)
        return out[: self.latent_dim], out[self.latent_dim :]


class VAE(eqx.Module):
    """Gaussian-latent VAE with a Bernoulli decoder.

    Args:
        input_dim: pixels per image (784 for MNIST).
        latent_dim: size of the code z (50 in the in-painting spec).
        hidden: widths of the two softplus layers of the decoder; the encoder mirrors them.
        key: initialisation key.

    Example:
        >>> vae = VAE(784, 50, (500, 500), key=jax.random.key(0))
        >>> vae.decoder.latent_dim, vae.decoder.output_dim
        (50, 784)
    """

    encoder: Encoder
    decoder: Decoder

    def __init__(self, input_dim: int, latent_dim: int, hidden=(500, 500), *, key: PRNGKeyArray):
        k_enc, k_dec = jax.random.split(key)
        hidden = tuple(hidden)
        self.encoder = Encoder(input_dim, latent_dim, tuple(reversed(hidden)), key=k_enc)
        self.decoder = Decoder(latent_dim, input_dim, hidden, key=k_dec)

    @property
    def latent_dim(self) -> int:
        return self.decoder.latent_dim

    @property
    def input_dim(self) -> int:
        return self.decoder.output_dim

    @property
    def hidden(self) -> tuple[int, ...]:
        return self.decoder.hidden


def _bernoulli_log_lik(logits: Float[Array, " obs"], x: Float[Array, " obs"]) -> Float[Array, ""]:
    """Σ_d log Bernoulli(x_d; sigmoid(logits_d)) = Σ_d x_d·l_d − softplus(l_d)."""
    return jnp.sum(x * logits - jax.nn.softplus(logits))


def _normal_log_pdf(z, mean, log_var) -> Float[Array, ""]:
    return -0.5 * jnp.sum(math.log(2 * math.pi) + log_var + (z - mean) ** 2 * jnp.exp(-log_var))


def _draw(mean, log_var, key):
    eps = jax.random.normal(key, mean.shape, mean.dtype)
    return mean + jnp.exp(0.5 * log_var) * eps


def _log_weight(decoder: Decoder, x, mean, log_var, key) -> Float[Array, ""]:
    """log p(x|z) + log p(z) − log q(z|x) for z drawn from N(mean, exp(log_var)) by ``key``."""
    return -_weighted_sampled(decoder, x, mean, log_var, key, 1.0)


def neg_elbo(
    model: VAE,
    x: Float[Array, " obs"],
    key: PRNGKeyArray,
    kl_weight: float | Float[Array, ""] = 1.0,
    *,
    analytic_kl: bool = True,
) -> Float[Array, ""]:
    """One-sample estimate of −ELBO(x) = −E_q[log p(x|z)] + β·KL(q(z|x) ‖ p(z)).

    Args:
        model: the VAE.
        x: one image, pixels in [0, 1].
        key: draws z ~ q(z|x) (reparameterised).
        kl_weight: β (1 for the bound; annealed during training).
        analytic_kl: the closed-form Gaussian KL (lower variance); ``False`` uses the
            one-sample estimate log q(z|x) − log p(z), which makes −neg_elbo equal to the
            log importance weight of the same z.

    Returns:
        The estimate in nats.
    """
    mean, log_var = model.encoder(x)
    if not analytic_kl:
        return _weighted_sampled(model.decoder, x, mean, log_var, key, kl_weight)
    z = _draw(mean, log_var, key)
    kl = 0.5 * jnp.sum(jnp.exp(log_var) + mean**2 - 1.0 - log_var)
    return -(_bernoulli_log_lik(model.decoder.logits(z), x) - kl_weight * kl)


def _weighted_sampled(decoder, x, mean, log_var, key, kl_weight) -> Float[Array, ""]:
    """−(log p(x|z) − β·(log q(z|x) − log p(z))) for one z ~ N(mean, exp(log_var))."""
    z = _draw(mean, log_var, key)
    zeros = jnp.zeros_like(z)
    kl = _normal_log_pdf(z, mean, log_var) - _normal_log_pdf(z, zeros, zeros)
    return -(_bernoulli_log_lik(decoder.logits(z), x) - kl_weight * kl)


def log_importance_weight(
    model: VAE, x: Float[Array, " obs"], key: PRNGKeyArray
) -> Float[Array, ""]:
    """log p(x|z) + log p(z) − log q(z|x) for one z ~ q(z|x) drawn with ``key``."""
    return -neg_elbo(model, x, key, analytic_kl=False)


def importance_log_likelihood(
    model: VAE, x: Float[Array, " obs"], key: PRNGKeyArray, num_samples: int, chunk_size: int
) -> Float[Array, ""]:
    """log p̂(x) = log (1/S) Σ_s w_s with w_s = p(x, z_s) / q(z_s|x), z_s ~ q(z|x).

    A stochastic lower bound on log p(x) in expectation, tightening as S grows (Burda et
    al. 2016). Sample ``s`` uses ``jax.random.split(key, num_samples)[s]``; the weights are
    computed ``chunk_size`` at a time under ``lax.map``, so S = 1000 fits in memory.

    Args:
        model: the VAE.
        x: one image.
        key: the samples' key.
        num_samples: S.
        chunk_size: samples per chunk; must divide S.

    Returns:
        The estimate in nats.

    Raises:
        ValueError: S or the chunk size is not a positive int, or the chunk size does not
            divide S.
    """
    _check_sizes(num_samples=num_samples, chunk_size=chunk_size)
    if num_samples % chunk_size:
        raise ValueError(
            f"`chunk_size` must divide `num_samples`; got {chunk_size} and {num_samples}"
        )
    keys = jax.random.split(key, num_samples).reshape(num_samples // chunk_size, chunk_size)
    mean, log_var = model.encoder(x)  # once, not once per sample
    per_chunk = jax.vmap(lambda k: _log_weight(model.decoder, x, mean, log_var, k))
    log_w = jax.lax.map(per_chunk, keys).reshape(-1)
    return jax.nn.logsumexp(log_w) - math.log(num_samples)


def header(model: VAE) -> dict:
    """The JSON header saved with a model: what it is and the sizes to rebuild it."""
    return {
        "format": FORMAT,
        "kind": "vae",
        "input_dim": model.input_dim,
        "latent_dim": model.latent_dim,
        "hidden": list(model.hidden),
        "likelihood": "bernoulli",
    }


def save(path: str | os.PathLike, model: VAE, **extra) -> None:
    """Write a JSON header line (:func:`header` plus ``extra``), then the Equinox-serialised
    model, atomically."""
    decoders.write_model(path, {**header(model), **extra}, model)


def _like(head: dict) -> VAE:
    sizes = (head["input_dim"], head["latent_dim"], tuple(head["hidden"]))
    # Only shapes are needed: the constant key draws nothing that is kept.
    like = eqx.filter_eval_shape(lambda: VAE(*sizes, key=jax.random.key(0)))
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), like)


def load(path: str | os.PathLike) -> tuple[VAE, dict]:
    """Read a model written by :func:`save`; returns ``(model, header)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, a model of another kind, or a truncated or
            corrupt file.
    """
    return decoders.read_model(path, "vae", _like)


def load_decoder(run_dir: str | os.PathLike) -> Decoder:
    """The decoder of the VAE saved in a ``dgm run vae-mnist`` run directory.

    Raises:
        FileNotFoundError: the directory does not exist or holds no ``model.eqx``.
        ValueError: the file holds another kind of model or is not a model file.
    """
    return load(decoders.model_path(run_dir))[0].decoder


def image_decoder(path: str | os.PathLike, head: dict) -> decoders.ImageDecoder:
    """The decoder protocol (:mod:`dgm.models.decoders`) for a saved VAE: the 784 pixel
    means of a ``latent_dim`` code."""
    model = load(path)[0]
    side = math.isqrt(model.input_dim)
    shape = (side, side) if side * side == model.input_dim else (1, model.input_dim)
    dec = model.decoder
    return decoders.ImageDecoder(dec.mean, model.latent_dim, shape, "vae", dec.mean_head)
