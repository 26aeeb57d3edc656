"""An amortized posterior ``q(z | y)``: a Gaussian from an encoder, then IAF steps.

``AmortizedPosterior(latent_dim, obs_dim, key=...)`` maps an observation ``y`` to a
distribution over the latent inputs ``z`` of a generative model: an MLP encoder gives the
mean, the scale and a context vector ``h``; ``z₀ = μ + σ ⊙ ε`` (ε standard normal) then
passes through the dense inverse autoregressive flow of :mod:`dgm.nn.flows` with ``h`` as
its context (Kingma et al. 2016, the posterior of their IAF-VAE). Sampling and the log
density of the draw cost one pass; the density of a given ``z`` inverts the flow.

Observations enter standardised by a fixed shift and scale (``y_shift``, ``y_scale``: not
trained), so simulators whose outputs are in the hundreds train like those near 1. The
encoder's last layer starts 100 times smaller than Equinox's default, so the Gaussian
before the flow starts near the standard normal prior of ``z`` whatever ``y``. The flow
steps are :class:`~dgm.nn.flows.IAF`'s gated ones (on a linear-Gaussian model they reached
the exact posterior where the affine steps of the IAF-VAE, at the same settings, left the
sds 22 % off).

References:
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
from jax.scipy.stats import norm
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from dgm.nn.flows import IAF


class AmortizedPosterior(eqx.Module):
    """``q(z | y)``: encoder → diagonal Gaussian → ``num_flows`` IAF steps with context.

    Args:
        latent_dim: k, the size of ``z``.
        obs_dim: N, the size of ``y``.
        hidden_size: width of the encoder's two hidden layers and of each flow step's
            autoregressive network (one hidden layer).
        context_size: size of the context ``h`` the encoder hands to every flow step.
        num_flows: IAF steps (0: a diagonal Gaussian).
        y_shift, y_scale: standardisation of ``y`` (default 0 and 1).
        key: initialisation key.

    Example:
        >>> q = AmortizedPosterior(2, 5, key=jax.random.key(0))
        >>> z, log_q = q.sample_and_log_prob(jnp.ones(5), key=jax.random.key(1))
        >>> z.shape
        (2,)
    """

    encoder: eqx.nn.MLP
    flow: IAF
    y_shift: Float[Array, " obs"]
    y_scale: Float[Array, " obs"]
    latent_dim: int = eqx.field(static=True)

    def __init__(
        self,
        latent_dim: int,
        obs_dim: int,
        *,
        hidden_size: int = 64,
        context_size: int = 16,
        num_flows: int = 2,
        y_shift: ArrayLike | None = None,
        y_scale: ArrayLike | None = None,
        key: PRNGKeyArray,
    ):
        for name, value in (
            ("latent_dim", latent_dim),
            ("obs_dim", obs_dim),
            ("hidden_size", hidden_size),
            ("context_size", context_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}")
        k_enc, k_flow = jax.random.split(key)
        encoder = eqx.nn.MLP(
            obs_dim,
            2 * latent_dim + context_size,
            hidden_size,
            2,
            activation=jax.nn.elu,
            key=k_enc,
        )
        last = encoder.layers[-1]
        self.encoder = eqx.tree_at(lambda m: m.layers[-1].weight, encoder, 0.01 * last.weight)
        self.flow = IAF(
            latent_dim, num_flows, (hidden_size,), context_size=context_size, key=k_flow
        )
        self.y_shift = jnp.zeros(obs_dim) if y_shift is None else jnp.asarray(y_shift)
        self.y_scale = jnp.ones(obs_dim) if y_scale is None else jnp.asarray(y_scale)
        self.latent_dim = latent_dim

    def _encode(self, y):
        y = (y - jax.lax.stop_gradient(self.y_shift)) / jax.lax.stop_gradient(self.y_scale)
        out = self.encoder(y)
        k = self.latent_dim
        return out[:k], jax.nn.softplus(out[k : 2 * k] + 0.5413), out[2 * k :]  # σ(0) = 1

    def sample_and_log_prob(
        self, y: Float[Array, " obs"], *, key: PRNGKeyArray
    ) -> tuple[Float[Array, " latent"], Float[Array, ""]]:
        """One draw ``z ~ q(· | y)`` and ``log q(z | y)``."""
        mean, scale, context = self._encode(y)
        eps = jax.random.normal(key, mean.shape, mean.dtype)
        z, log_det = self.flow(mean + scale * eps, context)
        return z, jnp.sum(norm.logpdf(eps)) - jnp.sum(jnp.log(scale)) - log_det

    def log_prob(self, z: Float[Array, " latent"], y: Float[Array, " obs"]) -> Float[Array, ""]:
        """``log q(z | y)`` of a given ``z`` (inverts the flow)."""
        mean, scale, context = self._encode(y)
        z0 = self.flow.inverse(z, context)
        _, log_det = self.flow(z0, context)
        eps = (z0 - mean) / scale
        return jnp.sum(norm.logpdf(eps)) - jnp.sum(jnp.log(scale)) - log_det
