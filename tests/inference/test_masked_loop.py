"""The vmap-friendly while loop and the unrolled Threefry block of the tree builder.

Both are exact replacements: the unrolled Threefry-2x32 must equal JAX's bit for bit (so
NUTS draws are unchanged), and the masked loop must give what ``vmap`` of
``lax.while_loop`` gives, with rows of different trip counts, a body that closes over
per-row (batched) values, and nested in ``jit``.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.random import threefry_2x32

from dgm.inference.dynamic import threefry_2x32_unrolled
from dgm.inference.masked_loop import masked_while_loop


def test_unrolled_threefry_equals_jax():
    rng = np.random.default_rng(0)
    key = jnp.asarray(rng.integers(0, 2**32, 2, dtype=np.uint64).astype(np.uint32))
    count = jnp.asarray(rng.integers(0, 2**32, 200, dtype=np.uint64).astype(np.uint32))
    # jax's threefry_2x32 splits the counts into halves (x0, x1) and concatenates
    ours = jax.jit(lambda k, c: jnp.concatenate(threefry_2x32_unrolled(k, c[:100], c[100:])))
    np.testing.assert_array_equal(np.asarray(ours(key, count)), threefry_2x32(key, count))


def _loops(limit, scale):
    """The same loop written for lax.while_loop and, masking itself, for the masked loop."""

    def cond(c):
        return c[0] < limit

    def body(c):
        return c[0] + 1, c[1] * scale + jnp.sin(c[1])

    def masked_body(c, active):
        new = body(c)
        return jax.tree.map(lambda a, b: jnp.where(active, a, b), new, c)

    init = (jnp.asarray(0), jnp.full(3, 0.5))
    return jax.lax.while_loop(cond, body, init), masked_while_loop(cond, masked_body, init)


def test_masked_loop_matches_while_loop_unbatched_and_batched():
    limits = jnp.asarray([0, 3, 7, 1])
    scales = jnp.asarray([0.9, 1.1, 0.5, 1.0])
    plain, masked = jax.jit(jax.vmap(_loops))(limits, scales)
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(masked), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(np.asarray(masked[0]), np.asarray(limits))
    plain, masked = _loops(jnp.asarray(5), jnp.asarray(1.1))  # unbatched
    np.testing.assert_array_equal(np.asarray(plain[1]), np.asarray(masked[1]))
