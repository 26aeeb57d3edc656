"""The Deep Markov Model's building blocks: transitions, emission, Gaussian densities.

Transition heads are **variances** (softplus), as in the original code.

References:
    Krishnan, Shalit & Sontag, "Structured Inference Networks for Nonlinear State Space
    Models", AAAI 2017 (arXiv:1609.09869).
"""

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.nn.rnn import Linear

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_prob(x: Float[Array, " d"], loc: Float[Array, " d"], var: Float[Array, " d"]):
    """log N(x; loc, diag var), summed over the last axis."""
    return -0.5 * jnp.sum(_LOG_2PI + jnp.log(var) + (x - loc) ** 2 / var, axis=-1)


def gaussian_kl(mu_q, var_q, mu_p, var_p) -> Float[Array, ""]:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) for diagonal Gaussians, summed over dims."""
    return 0.5 * jnp.sum(
        jnp.log(var_p) - jnp.log(var_q) - 1.0 + var_q / var_p + (mu_p - mu_q) ** 2 / var_p
    )


class GatedTransition(eqx.Module):
    """The paper's gated transition; ``W_μ`` starts at the identity and ``b_μ`` at 0."""

    gate1: Linear
    gate2: Linear
    prop1: Linear
    prop2: Linear
    loc: Linear
    var: Linear

    def __init__(self, z_dim: int, hidden: int, *, key: PRNGKeyArray):
        keys = jax.random.split(key, 6)
        self.gate1, self.prop1 = (
            Linear(z_dim, hidden, key=keys[0]),
            Linear(z_dim, hidden, key=keys[1]),
        )
        self.gate2, self.prop2 = (
            Linear(hidden, z_dim, key=keys[2]),
            Linear(hidden, z_dim, key=keys[3]),
        )
        loc = Linear(z_dim, z_dim, key=keys[4])
        self.loc = eqx.tree_at(
            lambda m: (m.weight, m.bias),
            loc,
            (jnp.eye(z_dim, dtype=jnp.float32), jnp.zeros((z_dim,), jnp.float32)),
        )
        self.var = Linear(z_dim, z_dim, key=keys[5])

    def __call__(self, z: Float[Array, " z"]) -> tuple[Float[Array, " z"], Float[Array, " z"]]:
        gate = jax.nn.sigmoid(self.gate2(jax.nn.relu(self.gate1(z))))
        proposal = self.prop2(jax.nn.relu(self.prop1(z)))
        loc = gate * proposal + (1.0 - gate) * self.loc(z)
        return loc, jax.nn.softplus(self.var(jax.nn.relu(proposal)))


class MLPTransition(eqx.Module):
    """Two relu layers of width ``hidden``, then a mean head and a softplus variance head."""

    layer1: Linear
    layer2: Linear
    loc: Linear
    var: Linear

    def __init__(self, z_dim: int, hidden: int, *, key: PRNGKeyArray):
        k1, k2, k3, k4 = jax.random.split(key, 4)
        self.layer1, self.layer2 = Linear(z_dim, hidden, key=k1), Linear(hidden, hidden, key=k2)
        self.loc, self.var = Linear(hidden, z_dim, key=k3), Linear(hidden, z_dim, key=k4)

    def __call__(self, z: Float[Array, " z"]) -> tuple[Float[Array, " z"], Float[Array, " z"]]:
        h = jax.nn.relu(self.layer2(jax.nn.relu(self.layer1(z))))
        return self.loc(h), jax.nn.softplus(self.var(h))


class LinearTransition(eqx.Module):
    """Linear-Gaussian transition ``N(W z + b, softplus(v))`` (for Kalman comparisons)."""

    loc: Linear
    raw_var: Float[Array, " z"]

    def __init__(self, z_dim: int, hidden: int, *, key: PRNGKeyArray):
        del hidden
        self.loc = Linear(z_dim, z_dim, key=key)
        self.raw_var = jnp.zeros((z_dim,), jnp.float32)

    def __call__(self, z: Float[Array, " z"]) -> tuple[Float[Array, " z"], Float[Array, " z"]]:
        return self.loc(z), jax.nn.softplus(self.raw_var)


class Emission(eqx.Module):
    """MLP emission: ``num_layers`` relu layers, then Bernoulli logits or a Gaussian mean.

    The Gaussian variance is a learned per-dimension constant, softplus(raw_var).
    """

    layers: list[Linear]
    out: Linear
    raw_var: Float[Array, " obs"] | None
    likelihood: str = eqx.field(static=True)

    def __init__(self, z_dim, obs_dim, hidden, num_layers, likelihood, *, key: PRNGKeyArray):
        keys = jax.random.split(key, num_layers + 1)
        sizes = [z_dim] + [hidden] * num_layers
        self.layers = [Linear(a, b, key=k) for a, b, k in zip(sizes, sizes[1:], keys, strict=False)]
        self.out = Linear(sizes[-1], obs_dim, key=keys[-1])
        gaussian = likelihood == "gaussian"
        self.raw_var = jnp.zeros((obs_dim,), jnp.float32) if gaussian else None
        self.likelihood = likelihood

    def params(self, z: Float[Array, " z"]) -> Float[Array, " obs"]:
        """Bernoulli logits or the Gaussian mean."""
        h = z
        for layer in self.layers:
            h = jax.nn.relu(layer(h))
        return self.out(h)

    def log_prob(self, z: Float[Array, " z"], x: Float[Array, " obs"]) -> Float[Array, ""]:
        out = self.params(z)
        if self.raw_var is None:  # x log σ(o) + (1 − x) log σ(−o), with one softplus
            return jnp.sum(x * out - jax.nn.softplus(out))
        return gaussian_log_prob(x, out, jax.nn.softplus(self.raw_var))
