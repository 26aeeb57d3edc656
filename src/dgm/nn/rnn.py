"""Dense layers and mask-aware recurrent layers (GRU, LSTM, plain tanh RNN).

The input projection of every time step is one matrix product before the scan; the scan
carries only the recurrent product. Where the mask is 0 the state is held, so a reverse
scan over a zero-padded sequence starts at each sequence's own last frame.

The recurrence has its own VJP (:func:`recurrence`): the backward scan carries only the
state cotangent, and the recurrent weight's gradient is one product over all time steps
(and sequences, for :meth:`RNN.batched`) after it. Plain autodiff of a scan adds a rank-B
outer product into a weight-sized accumulator at every step instead, which cost more than
the backward recurrence itself at 600 units.
"""

import functools

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.config import check_choice

CELLS = ("gru", "lstm", "rnn")
_GATES = {"gru": 3, "lstm": 4, "rnn": 1}


def host_rng(key: PRNGKeyArray) -> np.random.Generator:
    """A NumPy generator seeded by the bits of ``key``, for parameter initialisation.

    Initialising on the host avoids compiling one random-number kernel per parameter shape,
    which dominated model construction time on CPU (seconds for a small DMM).
    """
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def uniform(key: PRNGKeyArray, shape: tuple[int, ...], scale: float = 0.1) -> Float[Array, "..."]:
    """U(−scale, scale) float32 draws (the DMM's ``init_scheme='uniform'``)."""
    return jnp.asarray(host_rng(key).uniform(-scale, scale, shape), jnp.float32)


class Linear(eqx.Module):
    """``W x + b`` with float32 U(−0.1, 0.1) initialisation (weights and biases)."""

    weight: Float[Array, "out inp"]
    bias: Float[Array, " out"]

    def __init__(self, in_size: int, out_size: int, *, key: PRNGKeyArray, scale: float = 0.1):
        key_w, key_b = jax.random.split(key)
        self.weight = uniform(key_w, (out_size, in_size), scale)
        self.bias = uniform(key_b, (out_size,), scale)

    def __call__(self, x: Float[Array, " inp"]) -> Float[Array, " out"]:
        return self.weight @ x + self.bias


class RNN(eqx.Module):
    """One recurrent layer over a (possibly padded) sequence.

    LSTM: gate order i, f, o, c̃; h₀ = 0, c₀ = 1; biases from Laplace(0, 1) as in the DMM
    code. GRU and the tanh RNN start from h₀ = 0 with zero biases. Input weights are
    U(−0.1, 0.1); recurrent weights are orthogonal blocks.
    """

    w_x: Float[Array, "gates inp"]
    w_h: Float[Array, "gates hidden"]
    bias: Float[Array, " gates"]
    cell: str = eqx.field(static=True)
    hidden_size: int = eqx.field(static=True)

    def __init__(self, in_size: int, hidden_size: int, cell: str = "lstm", *, key: PRNGKeyArray):
        check_choice("cell", cell, CELLS)
        num = _GATES[cell]
        key_x, key_h, key_b = jax.random.split(key, 3)
        ortho = jax.nn.initializers.orthogonal()
        blocks = [
            ortho(k, (hidden_size, hidden_size), jnp.float32) for k in jax.random.split(key_h, num)
        ]
        self.w_x = uniform(key_x, (num * hidden_size, in_size))
        self.w_h = jnp.concatenate(blocks, axis=0)
        if cell == "lstm":
            self.bias = jnp.asarray(
                host_rng(key_b).laplace(0.0, 1.0, num * hidden_size), jnp.float32
            )
        else:
            self.bias = jnp.zeros((num * hidden_size,), jnp.float32)
        self.cell = cell
        self.hidden_size = hidden_size

    def _gates(self, xs: Float[Array, "*lead inp"]) -> Float[Array, "*lead gates"]:
        return xs @ self.w_x.T + jnp.expand_dims(self.bias, tuple(range(xs.ndim - 1)))

    def _state0(self, gxs: Float[Array, "..."]) -> tuple[Float[Array, "..."], ...]:
        """h₀ (and c₀) for input pre-activations ``gxs`` (time first), in their dtype."""
        h0 = jnp.zeros((*gxs.shape[1:-1], self.hidden_size), gxs.dtype)
        return (h0, jnp.ones_like(h0)) if self.cell == "lstm" else (h0,)

    def __call__(
        self, xs: Float[Array, "time inp"], mask: Float[Array, " time"], *, reverse: bool = False
    ) -> Float[Array, "time hidden"]:
        gxs = self._gates(xs)
        return recurrence(self.cell, reverse, self.w_h, gxs, mask, self._state0(gxs))

    def batched(
        self,
        xs: Float[Array, "batch time inp"],
        mask: Float[Array, "batch time"],
        *,
        reverse: bool = False,
    ) -> Float[Array, "time batch hidden"]:
        """``vmap(self)`` over a batch, returned time-major, with one weight-gradient product.

        Under ``jax.vmap`` a custom VJP yields one weight gradient per sequence, summed
        afterwards (seven times slower than one product at 20 × 64 × 600); this method runs
        the recurrence on the whole batch instead. The output is time-major, as the DMM's
        posterior scan consumes it.
        """
        gxs = self._gates(jnp.swapaxes(xs, 0, 1))
        return recurrence(self.cell, reverse, self.w_h, gxs, mask.T, self._state0(gxs))


def _cell_update(cell: str, gx, hh, state: tuple) -> tuple:
    """New state from the input part ``gx`` and recurrent part ``hh`` of the pre-activations."""
    hsz = state[0].shape[-1]
    if cell == "lstm":
        _, c = state
        g = gx + hh
        i, f, o = (jax.nn.sigmoid(g[..., k * hsz : (k + 1) * hsz]) for k in range(3))
        c = f * c + i * jnp.tanh(g[..., 3 * hsz :])
        return (o * jnp.tanh(c), c)
    (h,) = state
    if cell == "rnn":
        return (jnp.tanh(gx + hh),)
    r = jax.nn.sigmoid(gx[..., :hsz] + hh[..., :hsz])
    u = jax.nn.sigmoid(gx[..., hsz : 2 * hsz] + hh[..., hsz : 2 * hsz])
    n = jnp.tanh(gx[..., 2 * hsz :] + r * hh[..., 2 * hsz :])
    return ((1.0 - u) * n + u * h,)


def _masked_steps(cell, reverse, w_h, gxs, mask, state0):
    """The forward scan: every step's state and (but for the tanh cell) recurrent product."""
    w_t = w_h.T  # transposed once: ``h @ w_t`` in the loop is faster than ``h @ w_h.T``

    def body(state, inp):
        gx, m = inp
        hh = state[0] @ w_t
        new = _cell_update(cell, gx, hh, state)
        keep = m[..., None] > 0
        new = tuple(jnp.where(keep, n, s) for n, s in zip(new, state, strict=True))
        return new, (new, None if cell == "rnn" else hh)

    return jax.lax.scan(body, state0, (gxs, mask), reverse=reverse)[1]


def _previous(states, state0, reverse):
    """Each step's input state: the state one step earlier in scan order."""
    pairs = zip(states, state0, strict=True)
    if reverse:
        return tuple(jnp.concatenate([s[1:], s0[None]]) for s, s0 in pairs)
    return tuple(jnp.concatenate([s0[None], s[:-1]]) for s, s0 in pairs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def recurrence(
    cell: str,
    reverse: bool,
    w_h: Float[Array, "gates hidden"],
    gxs: Float[Array, "time *batch gates"],
    mask: Float[Array, " time *batch"],
    state0: tuple[Float[Array, "*batch hidden"], ...],
) -> Float[Array, "time *batch hidden"]:
    """Hidden states of a masked recurrence over time-major input pre-activations ``gxs``.

    Where ``mask`` is 0 the state is held. ``reverse`` runs from the last step to the first
    (the outputs stay in time order). Any leading batch axes after time are allowed.
    """
    return _masked_steps(cell, reverse, w_h, gxs, mask, state0)[0][0]


def _recurrence_fwd(cell, reverse, w_h, gxs, mask, state0):
    states, hhs = _masked_steps(cell, reverse, w_h, gxs, mask, state0)
    return states[0], (w_h, gxs, mask, state0, states, hhs)


def _recurrence_bwd(cell, reverse, residuals, dhs):
    w_h, gxs, mask, state0, states, hhs = residuals
    prev = _previous(states, state0, reverse)

    def body(dstate, inp):
        dh_out, m, *cell_inputs = inp
        dstate = (dstate[0] + dh_out, *dstate[1:])
        keep = m[..., None] > 0
        dnew = tuple(jnp.where(keep, d, jnp.zeros_like(d)) for d in dstate)
        held = tuple(jnp.where(keep, jnp.zeros_like(d), d) for d in dstate)
        if cell == "rnn":  # h = tanh(gx + hh): both parts get the same cotangent
            (h,) = cell_inputs
            dgx = dhh = dnew[0] * (1.0 - h * h)
            dprev = held
        else:
            _, vjp = jax.vjp(functools.partial(_cell_update, cell), *cell_inputs)
            dgx, dhh, dprev = vjp(dnew)
            dprev = tuple(a + b for a, b in zip(held, dprev, strict=True))
        return (dprev[0] + dhh @ w_h, *dprev[1:]), (dgx, None if cell == "rnn" else dhh)

    # the tanh cell needs only its output; the others re-run their pointwise update
    cell_inputs = (states[0],) if cell == "rnn" else (gxs, hhs, prev)
    dstate0, (dgxs, dhhs) = jax.lax.scan(
        body, tuple(jnp.zeros_like(s) for s in state0), (dhs, mask, *cell_inputs),
        reverse=not reverse,
    )  # fmt: skip
    dhhs = dgxs if dhhs is None else dhhs
    axes = tuple(range(dhhs.ndim - 1))  # time and batch: one product for the whole weight
    dw_h = jnp.tensordot(dhhs, prev[0], axes=(axes, axes)).astype(w_h.dtype)  # float64 input
    return dw_h, dgxs, jnp.zeros_like(mask), dstate0


recurrence.defvjp(_recurrence_fwd, _recurrence_bwd)
