"""Masked autoregressive layers (MADE) and inverse autoregressive flow (IAF) steps.

Shared by the DMM posterior (Pyro's ``--num-iafs``) and the IAF-VAE. A flow step maps
``z -> z'`` and returns ``log|det dz'/dz|``; stacking steps with alternating order makes
the composed flow expressive while each Jacobian stays triangular.

References:
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, PRNGKeyArray

from dgm.nn.rnn import uniform


class MaskedLinear(eqx.Module):
    """A linear layer whose weight is multiplied by a fixed binary mask.

    The mask is a boolean array, so ``eqx.is_inexact_array`` filters leave it out of the
    optimizer and of any L2 penalty.
    """

    weight: Float[Array, "out inp"]
    bias: Float[Array, " out"]
    mask: Bool[Array, "out inp"]

    def __init__(self, mask: np.ndarray, *, key: PRNGKeyArray, init_scale: float = 0.1):
        out_size, in_size = mask.shape
        self.weight = uniform(key, (out_size, in_size), init_scale)
        self.bias = jnp.zeros((out_size,), jnp.float32)
        self.mask = jnp.asarray(mask, dtype=bool)

    def __call__(self, x: Float[Array, " inp"]) -> Float[Array, " out"]:
        return jnp.where(self.mask, self.weight, 0.0) @ x + self.bias


def made_masks(degrees_in: np.ndarray, hidden_sizes: tuple[int, ...]) -> list[np.ndarray]:
    """Masks of a MADE network with the input ``degrees_in`` (a permutation of 1..D).

    Hidden unit k gets degree ``1 + k mod (D - 1)``; a hidden unit sees inputs of degree at
    most its own, an output of degree d sees hidden units of degree below d.
    """
    dim = len(degrees_in)
    degrees = [np.asarray(degrees_in)]
    for size in hidden_sizes:
        degrees.append(1 + np.arange(size) % max(dim - 1, 1))
    masks = [degrees[i + 1][:, None] >= degrees[i][None, :] for i in range(len(hidden_sizes))]
    masks.append(np.asarray(degrees_in)[:, None] > degrees[-1][None, :])
    return masks


class MADE(eqx.Module):
    """Masked autoencoder: outputs ``(shift, scale_logit)``, each autoregressive in ``z``."""

    hidden: list[MaskedLinear]
    out_shift: MaskedLinear
    out_scale: MaskedLinear
    dim: int = eqx.field(static=True)

    def __init__(self, dim: int, hidden_sizes: tuple[int, ...], reverse: bool, *, key):
        order = np.arange(dim, 0, -1) if reverse else np.arange(1, dim + 1)
        masks = made_masks(order, hidden_sizes)
        keys = jax.random.split(key, len(masks) + 1)
        self.hidden = [MaskedLinear(m, key=k) for m, k in zip(masks[:-1], keys, strict=False)]
        self.out_shift = MaskedLinear(masks[-1], key=keys[-2])
        self.out_scale = MaskedLinear(masks[-1], key=keys[-1])
        self.dim = dim

    def __call__(
        self, z: Float[Array, " dim"]
    ) -> tuple[Float[Array, " dim"], Float[Array, " dim"]]:
        h = z
        for layer in self.hidden:
            h = jax.nn.relu(layer(h))
        return self.out_shift(h), self.out_scale(h)


class IAFStep(eqx.Module):
    """One IAF step, z' = σ ⊙ z + (1 − σ) ⊙ m with (m, s) = MADE(z), σ = sigmoid(s + b).

    ``log|det J| = Σ log σ``. The bias ``b`` (default 1.0, as in Kingma et al.) starts the
    step near the identity.

    Example:
        >>> step = IAFStep(4, (8,), key=jax.random.key(0))
        >>> z2, log_det = step(jnp.ones(4, jnp.float32))
    """

    made: MADE
    gate_bias: float = eqx.field(static=True)

    def __init__(
        self, dim: int, hidden_sizes: tuple[int, ...], *, reverse: bool = False, key: PRNGKeyArray
    ):
        if not (isinstance(dim, int) and dim > 0):
            raise ValueError(f"`dim` must be a positive int; got {dim!r}")
        self.made = MADE(dim, tuple(hidden_sizes), reverse, key=key)
        self.gate_bias = 1.0

    def __call__(self, z: Float[Array, " dim"]) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        shift, scale_logit = self.made(z)
        gate = jax.nn.sigmoid(scale_logit + self.gate_bias)
        z_new = gate * z + (1.0 - gate) * shift
        return z_new, jnp.sum(jax.nn.log_sigmoid(scale_logit + self.gate_bias))

    def inverse(self, y: Float[Array, " dim"]) -> Float[Array, " dim"]:
        """Invert the step, one coordinate per pass (``dim`` passes)."""

        def body(_, z):
            shift, scale_logit = self.made(z)
            gate = jax.nn.sigmoid(scale_logit + self.gate_bias)
            return (y - (1.0 - gate) * shift) / gate

        return jax.lax.fori_loop(0, self.made.dim, body, jnp.zeros_like(y))


class IAF(eqx.Module):
    """A stack of IAF steps with alternating autoregressive order."""

    steps: list[IAFStep]

    def __init__(self, dim: int, num_steps: int, hidden_sizes: tuple[int, ...], *, key):
        if not (isinstance(num_steps, int) and num_steps >= 0):
            raise ValueError(f"`num_steps` must be a non-negative int; got {num_steps!r}")
        keys = jax.random.split(key, max(num_steps, 1))
        self.steps = [
            IAFStep(dim, hidden_sizes, reverse=bool(i % 2), key=keys[i]) for i in range(num_steps)
        ]

    def __call__(self, z: Float[Array, " dim"]) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        log_det = jnp.zeros((), z.dtype)
        for step in self.steps:
            z, ld = step(z)
            log_det = log_det + ld
        return z, log_det

    def inverse(self, y: Float[Array, " dim"]) -> Float[Array, " dim"]:
        for step in reversed(self.steps):
            y = step.inverse(y)
        return y
