"""A ``while`` loop that stays cheap under ``vmap``: finished rows are masked by the body.

``jax.vmap`` of ``lax.while_loop`` with a per-row predicate runs the body for every row
until the last one finishes and, at every iteration, selects between the new and the old
value of the *whole* carry. For the tree builder of NUTS that select dominated the cost
of a leaf: its carry holds the U-turn checkpoint stack (``max_depth − 1`` levels of three
vectors), of which one level changes per leaf. :func:`masked_while_loop` gives the body
the per-row ``active`` flags instead and lets it mask what it changes (a stack update
becomes a scatter that drops the inactive rows' writes). Unbatched it is exactly
``lax.while_loop``.

References:
    The JAX documentation of ``jax.custom_batching.custom_vmap`` and of the batching rule
    of ``lax.while_loop`` (a batched predicate turns the carry update into a select).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.extend as jex
import jax.numpy as jnp
from jax.custom_batching import custom_vmap

__all__ = ["masked_while_loop"]


def _as_fun(closed: Any) -> Callable:
    """``(consts, *args) -> flat outputs`` of a closed jaxpr, with its constants passed in
    (they may be tracers of an enclosing ``vmap``, which ``custom_vmap`` cannot close over)."""
    jaxpr = closed.jaxpr
    return lambda consts, *args: jex.core.jaxpr_as_fun(jex.core.ClosedJaxpr(jaxpr, consts))(*args)


def _axes(batched) -> list:
    return [0 if b else None for b in batched]


def masked_while_loop(cond_fun: Callable, body_fun: Callable, init: Any) -> Any:
    """``lax.while_loop(cond_fun, lambda s: body_fun(s, True), init)``, batched cheaply.

    Under ``jax.vmap`` the loop runs while any row's ``cond_fun`` holds and calls
    ``body_fun(state, active)`` on all rows with ``active = cond_fun(state)`` per row; no
    select over the carry is added, so ``body_fun`` must return ``state`` unchanged (bit
    for bit) where ``active`` is False.

    Args:
        cond_fun: ``state -> bool``.
        body_fun: ``(state, active) -> state``, the identity where ``active`` is False.
        init: the initial state (a pytree of arrays).
    """
    flat, tree = jax.tree.flatten(init)
    true = jnp.asarray(True)
    cond_closed = jax.make_jaxpr(lambda *xs: cond_fun(tree.unflatten(xs)))(*flat)
    body_closed = jax.make_jaxpr(
        lambda active, *xs: jax.tree.leaves(body_fun(tree.unflatten(xs), active))
    )(true, *flat)
    cond, body = _as_fun(cond_closed), _as_fun(body_closed)

    def cond_one(consts, xs):
        return cond(consts, *xs)[0]

    def body_one(consts, active, xs):
        return body(consts, active, *xs)

    @custom_vmap
    def loop(cond_consts, body_consts, xs):
        return jax.lax.while_loop(
            lambda xs: cond_one(cond_consts, xs), lambda xs: body_one(body_consts, true, xs), xs
        )

    @loop.def_vmap
    def loop_batched(axis_size, in_batched, cond_consts, body_consts, xs):
        cond_b, body_b, xs_b = in_batched
        xs = [x if b else jnp.broadcast_to(x, (axis_size, *jnp.shape(x))) for x, b in
              zip(xs, xs_b, strict=True)]  # fmt: skip
        cond_v = jax.vmap(cond_one, in_axes=(_axes(cond_b), 0))
        body_v = jax.vmap(body_one, in_axes=(_axes(body_b), 0, 0))

        def step(xs):
            return body_v(body_consts, cond_v(cond_consts, xs), xs)

        out = jax.lax.while_loop(lambda xs: jnp.any(cond_v(cond_consts, xs)), step, xs)
        return out, [True] * len(out)

    out = loop(list(cond_closed.consts), list(body_closed.consts), list(flat))
    return tree.unflatten(out)
