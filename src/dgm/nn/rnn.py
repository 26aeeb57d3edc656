"""Dense layers and mask-aware recurrent layers (GRU, LSTM, plain tanh RNN).

The input projection of every time step is one matrix product before the scan; the scan
carries only the recurrent product. Where the mask is 0 the state is held, so a reverse
scan over a zero-padded sequence starts at each sequence's own last frame.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

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
        if cell not in CELLS:
            raise ValueError(f"`cell` must be one of {list(CELLS)}; got {cell!r}")
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

    def _step(self, gx: Float[Array, " gates"], state):
        hsz = self.hidden_size
        if self.cell == "lstm":
            h, c = state
            g = gx + self.w_h @ h
            i, f, o = (jax.nn.sigmoid(g[k * hsz : (k + 1) * hsz]) for k in range(3))
            c = f * c + i * jnp.tanh(g[3 * hsz :])
            return (o * jnp.tanh(c), c)
        (h,) = state
        hh = self.w_h @ h
        if self.cell == "rnn":
            return (jnp.tanh(gx + hh),)
        r = jax.nn.sigmoid(gx[:hsz] + hh[:hsz])
        u = jax.nn.sigmoid(gx[hsz : 2 * hsz] + hh[hsz : 2 * hsz])
        n = jnp.tanh(gx[2 * hsz :] + r * hh[2 * hsz :])
        return ((1.0 - u) * n + u * h,)

    def __call__(
        self, xs: Float[Array, "time inp"], mask: Float[Array, " time"], *, reverse: bool = False
    ) -> Float[Array, "time hidden"]:
        gxs = xs @ self.w_x.T + self.bias[None, :]
        h0 = jnp.zeros((self.hidden_size,), jnp.float32)
        state0 = (h0, jnp.ones_like(h0)) if self.cell == "lstm" else (h0,)

        def body(state, inp):
            gx, m = inp
            new = self._step(gx, state)
            state = tuple(jnp.where(m > 0, n, s) for n, s in zip(new, state, strict=True))
            return state, state[0]

        _, hs = jax.lax.scan(body, state0, (gxs, mask), reverse=reverse)
        return hs
