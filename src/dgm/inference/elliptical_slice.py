"""Elliptical slice sampling for a block with an N(0, I) prior (used by slice-sampling ABC).

A bounded ``lax.while_loop``: when the shrinking bracket has not produced a point above
the slice level after ``max_iters`` proposals, the current point is kept and the update
is reported as not moved (a failure flag, never an error). A NaN log-likelihood (e.g. a
simulator that overflowed) counts as −inf: that proposal is off the slice and the bracket
keeps shrinking.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int, PRNGKeyArray


def elliptical_slice(
    key: PRNGKeyArray,
    x: Float[Array, " n"],
    log_lik: Float[Array, ""],
    log_lik_fn: Callable,
    max_iters: int,
) -> tuple[Float[Array, " n"], Float[Array, ""], Bool[Array, ""], Int[Array, ""]]:
    """One elliptical slice sampling update of ``x`` with prior N(0, I).

    Returns ``(x', log_lik', moved, num_evals)``; after ``max_iters`` shrinkage steps
    without success ``x`` is kept and ``moved`` is False.

    References:
        Murray, Adams & MacKay (2010), "Elliptical slice sampling", AISTATS.
    """
    key_nu, key_level, key_angle, key_loop = jax.random.split(key, 4)
    nu = jax.random.normal(key_nu, x.shape, x.dtype)
    level = log_lik + jnp.log(jax.random.uniform(key_level, dtype=x.dtype))
    angle = jax.random.uniform(key_angle, dtype=x.dtype, maxval=2 * jnp.pi)
    lo, hi = angle - 2 * jnp.pi, angle

    def propose(a):
        x_new = x * jnp.cos(a) + nu * jnp.sin(a)
        ll = log_lik_fn(x_new)
        # NaN <= level is False, which would end the loop as a spurious failure.
        return x_new, jnp.where(jnp.isnan(ll), -jnp.inf, ll)

    x_new, ll_new = propose(angle)
    init = (jnp.asarray(1, jnp.int32), angle, lo, hi, x_new, ll_new)

    def cond(c):
        i, _, _, _, _, ll = c
        return (ll <= level) & (i < max_iters)

    def body(c):
        i, a, lo, hi, _, _ = c
        lo = jnp.where(a < 0, a, lo)
        hi = jnp.where(a < 0, hi, a)
        a = jax.random.uniform(jax.random.fold_in(key_loop, i), dtype=x.dtype, minval=lo, maxval=hi)
        return (i + 1, a, lo, hi, *propose(a))

    num_evals, _, _, _, x_new, ll_new = jax.lax.while_loop(cond, body, init)
    moved = ll_new > level
    return (jnp.where(moved, x_new, x), jnp.where(moved, ll_new, log_lik), moved, num_evals)
