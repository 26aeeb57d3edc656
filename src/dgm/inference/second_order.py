"""The gradient of ½ log det(J Jᵀ) for any generator, in a few Jacobians' cost.

With G = J Jᵀ and A = G⁻¹, d(½ log det G) = tr(A J dJᵀ), so with J and A held fixed

    ∇ ½ log det(J(u) J(u)ᵀ) = ∇_u tr(A J J(u)ᵀ) = ∇_u Σᵢ (J(u) wᵢ)ᵀ aᵢ,

where ``wᵢ`` are the rows of J (the normal directions, N of them) and ``aᵢ`` the columns of
A. The right side is a scalar built from N forward-mode directional derivatives (``jvp``)
of the generator, so its gradient is **one reverse pass over N tangents** instead of a
reverse pass over the full M-column Jacobian (the form ``vjp(jacfwd)(P)`` with P = A J).

On XLA:CPU the reverse pass through a ``lax.scan`` (an ODE solver's time steps) is slow
for a reason other than arithmetic: every residual saved for the backward pass is its own
stacked buffer, written and read by its own dynamic-slice kernel on every iteration, and
that per-iteration kernel count dominates. :func:`remat_scans` rewrites a function so that
every scan body (nested ones and those inside ``jit`` included) is wrapped in
``jax.checkpoint``: the forward loop saves only each iteration's carry, and the backward
loop recomputes the body, fused. See ``benchmarks/bench_generic_step.py`` for the
measured costs.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS, §3 (the Gram log-determinant term); Griewank & Walther (2008),
    *Evaluating Derivatives*, ch. 12 (checkpointing).
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.extend import core as jex_core
from jaxtyping import Array, Float


def remat_scans(fn: Callable) -> Callable:
    """``fn`` with every ``lax.scan`` body wrapped in ``jax.checkpoint`` (same values).

    The function is traced once per input shape to a jaxpr, which is then evaluated with
    each ``scan`` rebuilt around a checkpointed body (recursively: scans inside scans,
    inside ``jit``). Other primitives are bound unchanged. Values and first derivatives
    are those of ``fn``; only what the reverse pass stores changes.
    """

    def wrapped(*args):
        closed = jax.make_jaxpr(fn)(*args)
        out = _eval(closed.jaxpr, closed.consts, jax.tree.leaves(args))
        return jax.tree.unflatten(jax.tree.structure(jax.eval_shape(fn, *args)), out)

    return wrapped


def _eval(jaxpr, consts, args) -> list:
    env: dict = {}

    def read(v):
        return v.val if isinstance(v, jex_core.Literal) else env[v]

    for v, x in zip(jaxpr.constvars, consts, strict=True):
        env[v] = x
    for v, x in zip(jaxpr.invars, args, strict=True):
        env[v] = x
    for eqn in jaxpr.eqns:
        invals = [read(v) for v in eqn.invars]
        name = eqn.primitive.name
        if name == "scan":
            outs = _remat_scan(invals, eqn.params)
        elif name in ("pjit", "jit"):  # inline, so that scans inside get rewritten too
            inner = eqn.params["jaxpr"]
            outs = _eval(inner.jaxpr, inner.consts, invals)
        else:
            params = eqn.primitive.get_bind_params(eqn.params)
            outs = eqn.primitive.bind(*invals, **params)
            outs = outs if eqn.primitive.multiple_results else [outs]
        for v, x in zip(eqn.outvars, outs, strict=True):
            env[v] = x
    return [read(v) for v in jaxpr.outvars]


def _remat_scan(invals: list, params: dict) -> list:
    """The scan of ``params`` on ``invals``, its body checkpointed (and rewritten). Not
    unrolled: unrolling the checkpointed body multiplied the compile time (8 minutes for 4
    steps of the benchmark's RK4 ODE under load) for a gain the loop overhead does not repay."""
    body: Any = params["jaxpr"]
    num_consts, num_carry = params["num_consts"], params["num_carry"]
    consts = invals[:num_consts]
    carry = invals[num_consts : num_consts + num_carry]
    xs = invals[num_consts + num_carry :]

    @jax.checkpoint
    def step(carry, x):
        outs = _eval(body.jaxpr, body.consts, [*consts, *carry, *x])
        return outs[:num_carry], outs[num_carry:]

    carry, ys = jax.lax.scan(
        step,
        carry,
        xs,
        length=params["length"],
        reverse=params["reverse"],
        unroll=params["unroll"],
    )
    return [*carry, *ys]


def gram_log_det_grad(
    generator: Callable, u: Float[Array, " dim"], pmat: Float[Array, "obs dim"], mode: str
) -> Float[Array, " dim"]:
    """∇ ½ log det(J Jᵀ) = Σᵢⱼ Pᵢⱼ ∇Jᵢⱼ at ``u``, with P = (J Jᵀ)⁻¹ J held fixed.

    Args:
        generator: ``u -> G(u)`` (for speed, wrapped by :func:`remat_scans`).
        u: the point.
        pmat: P at ``u`` (no derivative flows through it).
        mode: ``"fwd"``: one reverse pass over the M forward directions of the Jacobian map
            (cheap when the forward Jacobian is); ``"rev"``: Σᵢ Hᵢ Pᵢ, the N Hessian–vector
            products of the outputs Gᵢ along the rows of P, each forward over reverse.
    """
    pmat = jax.lax.stop_gradient(pmat)
    if mode == "fwd":
        return jax.vjp(jax.jacfwd(generator), u)[1](pmat)[0]
    num_outputs = pmat.shape[0]

    def hvp(row, basis):  # Hᵢ Pᵢ = d/dε ∇Gᵢ(u + ε Pᵢ)
        return jax.jvp(lambda v: jax.vjp(generator, v)[1](basis)[0], (u,), (row,))[1]

    eye = jnp.eye(num_outputs, dtype=pmat.dtype)
    return jnp.sum(jax.vmap(hvp)(pmat, eye), axis=0)


def half_log_det_grad(
    generator: Callable,
    u: Float[Array, " dim"],
    jac: Float[Array, "obs dim"],
    gram_inverse: Float[Array, "obs obs"],
) -> Float[Array, " dim"]:
    """∇ ½ log det(J Jᵀ) at ``u``: one reverse pass over N forward directions.

    Args:
        generator: ``u -> G(u)`` (for speed, wrapped by :func:`remat_scans`).
        u: the point.
        jac: J(u), held fixed (no derivative flows through it).
        gram_inverse: (J Jᵀ)⁻¹ at ``u``, held fixed.
    """
    jac = jax.lax.stop_gradient(jac)
    weights = jax.lax.stop_gradient(gram_inverse)

    def trace(v):
        # columns: J(v) wᵢ for the N rows wᵢ of J; tr(A J J(v)ᵀ) = Σᵢⱼ Aⱼᵢ (J(v) wᵢ)ⱼ
        jw = jax.vmap(lambda w: jax.jvp(generator, (v,), (w,))[1], out_axes=1)(jac)
        return jnp.sum(weights * jw)

    return jax.grad(trace)(u)
