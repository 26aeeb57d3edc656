"""Inverse autoregressive flow (IAF) steps, dense or convolutional, with a context.

Public API:

- :class:`IAFStep` ``(net, *, form="affine", scale=0.1, gate_bias=1.0)`` wraps an
  autoregressive network (:class:`~dgm.nn.autoregressive.ARMLP` for vectors,
  :class:`~dgm.nn.autoregressive.ARConvNet` for ``(C, H, W)`` images) and is called
  ``step(z, context=None) -> (z_new, log_det)`` with ``log_det = log|det ∂z_new/∂z|`` (a
  scalar), so a posterior density updates as ``log q(z_new) = log q(z) − log_det``. Forms:

  - ``"affine"``, the code of Kingma et al. (both implementations):
    ``(m, s) = net(z, h)``, ``z_new = (z − scale·m) / exp(scale·s)``, ``log_det = −Σ scale·s``
    (the code's ``log q += 0.1 s``).
  - ``"location"``, the code's ``*_iaf1*`` variants: ``z_new = z − scale·m``, ``log_det = 0``
    (a network with ``num_outputs=1`` suffices).
  - ``"gated"``, the paper's numerically stable form: ``σ = sigmoid(s + gate_bias)``,
    ``z_new = σ ⊙ z + (1 − σ) ⊙ m``, ``log_det = Σ log σ`` (``scale`` is not used).

  ``step.inverse(y, context=None)`` inverts by fixed-point passes, exact after one pass per
  variable (it is for tests and density evaluation, not for sampling).
- :class:`IAF` ``(dim, num_steps, hidden_sizes, *, context_size=0, form="gated",
  activation=relu, weight_norm=False, key)``: dense steps whose variable order is reversed
  between successive steps; ``flow(z, context=None) -> (z, log_det)``. Its defaults are the
  DMM's optional posterior flow (``--num-iafs``); ``form="affine", activation=elu,
  weight_norm=True`` is the IAF-VAE's dense form.

References:
    Kingma et al., "Improved Variational Inference with Inverse Autoregressive Flow",
    NeurIPS 2016.
    Germain et al., "MADE: Masked Autoencoder for Distribution Estimation", ICML 2015.
"""

from collections.abc import Callable

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.nn.autoregressive import ARMLP, ARConvNet

FORMS = ("affine", "location", "gated")


class IAFStep(eqx.Module):
    """One IAF step around an autoregressive network (see the module docstring).

    Example:
        >>> net = ARMLP(4, (8,), context_size=2, key=jax.random.key(0))
        >>> step = IAFStep(net, form="affine")
        >>> z_new, log_det = step(jnp.ones(4, jnp.float32), jnp.zeros(2, jnp.float32))
    """

    net: ARMLP | ARConvNet
    form: str = eqx.field(static=True)
    scale: float = eqx.field(static=True)
    gate_bias: float = eqx.field(static=True)

    def __init__(
        self,
        net: ARMLP | ARConvNet,
        *,
        form: str = "affine",
        scale: float = 0.1,
        gate_bias: float = 1.0,
    ):
        if form not in FORMS:
            raise ValueError(f"`form` must be one of {', '.join(FORMS)}; got {form!r}")
        if form != "location" and len(net.outputs) != 2:
            raise ValueError(f"`form={form!r}` needs a network with `num_outputs=2`; got 1")
        self.net, self.form, self.scale, self.gate_bias = net, form, float(scale), gate_bias

    def _update(self, z, outs) -> tuple[Array, Array]:
        """(z_new, elementwise log|∂z_new/∂z|) of the step given the network outputs."""
        if self.form == "location":
            return z - self.scale * outs[0], jnp.zeros_like(z)
        m, s = outs
        if self.form == "affine":
            s = self.scale * s
            return (z - self.scale * m) * jnp.exp(-s), -s
        gate = jax.nn.sigmoid(s + self.gate_bias)
        return gate * z + (1.0 - gate) * m, jax.nn.log_sigmoid(s + self.gate_bias)

    def __call__(
        self, z: Float[Array, "*shape"], context: Float[Array, "..."] | None = None
    ) -> tuple[Float[Array, "*shape"], Float[Array, ""]]:
        z_new, log_diag = self._update(z, self.net(z, context))
        return z_new, jnp.sum(log_diag)

    def inverse(
        self, y: Float[Array, "*shape"], context: Float[Array, "..."] | None = None
    ) -> Float[Array, "*shape"]:
        """The ``z`` with ``step(z)[0] == y``: one fixed-point pass per variable."""

        def candidate(z):
            outs = self.net(z, context)
            if self.form == "location":
                return y + self.scale * outs[0]
            m, s = outs
            if self.form == "affine":
                return y * jnp.exp(self.scale * s) + self.scale * m
            gate = jax.nn.sigmoid(s + self.gate_bias)
            return (y - (1.0 - gate) * m) / gate

        # After pass k the first k variables (in the autoregressive order) are exact; the
        # others are placeholders, reset to 0 where they overflow so that no inf reaches a
        # masked (zero) weight and turns an exact variable into NaN.
        def body(_, z):
            new = candidate(z)
            return jnp.where(jnp.isfinite(new), new, 0.0)

        return jax.lax.fori_loop(0, y.size, body, jnp.zeros_like(y))


class IAF(eqx.Module):
    """A stack of dense IAF steps, the variable order reversed between successive steps.

    Example:
        >>> flow = IAF(4, 2, (8,), key=jax.random.key(0))
        >>> z, log_det = flow(jnp.ones(4, jnp.float32))
    """

    steps: list[IAFStep]

    def __init__(
        self,
        dim: int,
        num_steps: int,
        hidden_sizes: tuple[int, ...],
        *,
        context_size: int = 0,
        form: str = "gated",
        activation: Callable = jax.nn.relu,
        weight_norm: bool = False,
        scale: float = 0.1,
        gate_bias: float = 1.0,
        key: PRNGKeyArray,
    ):
        if not (isinstance(num_steps, int) and num_steps >= 0):
            raise ValueError(f"`num_steps` must be a non-negative int; got {num_steps!r}")
        keys = jax.random.split(key, max(num_steps, 1))
        outputs = 1 if form == "location" else 2
        self.steps = [
            IAFStep(
                ARMLP(
                    dim,
                    tuple(hidden_sizes),
                    context_size=context_size,
                    num_outputs=outputs,
                    activation=activation,
                    reverse=bool(i % 2),
                    weight_norm=weight_norm,
                    key=keys[i],
                ),
                form=form,
                scale=scale,
                gate_bias=gate_bias,
            )
            for i in range(num_steps)
        ]

    def __call__(
        self, z: Float[Array, " dim"], context: Float[Array, " ctx"] | None = None
    ) -> tuple[Float[Array, " dim"], Float[Array, ""]]:
        log_det = jnp.zeros((), z.dtype)
        for step in self.steps:
            z, ld = step(z, context)
            log_det = log_det + ld
        return z, log_det

    def inverse(
        self, y: Float[Array, " dim"], context: Float[Array, " ctx"] | None = None
    ) -> Float[Array, " dim"]:
        """Invert every step, last first."""
        for step in reversed(self.steps):
            y = step.inverse(y, context)
        return y
