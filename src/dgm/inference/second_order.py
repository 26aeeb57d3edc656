"""The gradient of ½ log det(J Jᵀ) for any generator, in a few Jacobians' cost.

Two routes, chosen by :func:`choose_second_order` (``ManifoldSystem(second_order="auto")``):

* **tangent** (forward only): the sampler only ever uses the *tangential* part of ∇φ (every
  kick is followed by the tangent projection Π_u, and the start's uphill moves project too),
  so it is enough to know the d = M − N directional derivatives of ½ log det(J Jᵀ) along an
  orthonormal basis T of the null space of J(u):

      tᵀ ∇ ½ log det(J Jᵀ) = tr(Pᵀ ∂_t J) = tr(Rᵀ Pᵀ ∂_t (J R)),

  with R an orthonormal basis of J's row space (P vanishes on the null space): d
  forward-over-forward passes sharing the primal and N first-order tangents, then
  Π ∇ = T (Tᵀ ∇). No reverse pass at all, which is what makes it fast through an ODE
  solver's ``lax.scan`` on XLA:CPU (see below); its cost grows with d · N, so it is chosen
  for generators with loops and few tangent directions. The returned vector's tangential
  part is exact; its normal part is left out (zero).
* **remat** (one reverse pass): the whole gradient. With P = (J Jᵀ)⁻¹ J held fixed,
  ∇ ½ log det(J Jᵀ) = Σᵢⱼ Pᵢⱼ ∇Jᵢⱼ = ``vjp(jacfwd(G))(P)`` (forward-mode J) or Σᵢ Hᵢ Pᵢ,
  the N Hessian–vector products of the outputs Gᵢ along the rows of P (reverse-mode J).

On XLA:CPU a reverse pass through a ``lax.scan`` (an ODE solver's time steps) is slow for
a reason other than arithmetic: every residual saved for the backward pass is its own
stacked buffer, written and read by its own kernel on every iteration, and the transposed
body compiles to some 60 small kernels per iteration (measured: the gradient of the sum of
the benchmark simulator's outputs costs 200 evaluations of it). :func:`remat_scans`
rewrites a function so that every scan body (nested ones and those inside ``jit``
included) is wrapped in ``jax.checkpoint``, which saves only each iteration's carry
(3–4× faster); the tangent route avoids the reverse pass altogether. See
``benchmarks/bench_generic_step.py`` and ``benchmarks/README.md`` for the measured costs.

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


def loop_kinds(fn: Callable, *args) -> set[str]:
    """The loop primitives (``"scan"``, ``"while"``) in ``fn``'s jaxpr at ``args`` (arrays
    or shape/dtype structs), nested ones and those inside ``jit``, ``cond`` or
    ``checkpoint`` included."""
    specs = [jax.ShapeDtypeStruct(jnp.shape(a), jnp.result_type(a)) for a in args]
    return _loop_kinds(jax.make_jaxpr(fn)(*specs).jaxpr)


def _loop_kinds(jaxpr) -> set[str]:
    kinds = set()
    for eqn in jaxpr.eqns:
        if eqn.primitive.name in ("scan", "while"):
            kinds.add(eqn.primitive.name)
        for value in eqn.params.values():
            for item in value if isinstance(value, tuple | list) else (value,):
                inner = getattr(item, "jaxpr", item)
                if hasattr(inner, "eqns"):
                    kinds |= _loop_kinds(inner)
    return kinds


#: The largest tangent dimension d = M − N for which ``"auto"`` takes the forward-only
#: route on a generator with ``scan`` loops. Measured on the RK4 predator–prey simulator of
#: ``benchmarks/bench_generic_step.py`` (M = 20 + d, N = 20, idle): the whole integrator step
#: with the tangent route is 2.9× (d = 4), 2.2× (8) and 2.2× (16) faster than with the
#: reverse pass through the checkpointed scans, so the crossover lies above 16; kept there
#: because the route's cost grows with d · N.
MAX_TANGENT_DIM = 16


def choose_second_order(generator: Callable, input_dim: int, output_dim: int) -> str:
    """``"tangent"`` for a generator with ``scan`` loops and at most
    :data:`MAX_TANGENT_DIM` tangent directions, or with a ``while`` loop (which no reverse
    pass goes through); else ``"remat"`` (the reverse pass is then cheap, or the forward
    route's d · N cost too high). The generator is traced on a float64 input (the
    sampler's), else float32; ``"remat"`` if neither traces."""
    for x64 in (True, False):
        with jax.enable_x64(x64):
            u = jax.ShapeDtypeStruct((input_dim,), jnp.float64 if x64 else jnp.float32)
            try:
                kinds = loop_kinds(generator, u)
            except Exception:  # noqa: BLE001, S112 - the generator's own dtype rules
                continue
        few = input_dim - output_dim <= MAX_TANGENT_DIM
        return "tangent" if "while" in kinds or (kinds and few) else "remat"
    return "remat"


def tangent_log_det_grad(
    generator: Callable,
    u: Float[Array, " dim"],
    jac: Float[Array, "obs dim"],
    pmat: Float[Array, "obs dim"],
) -> Float[Array, " dim"]:
    """Π_u ∇ ½ log det(J Jᵀ) at ``u`` by d = M − N forward-over-forward passes (each
    over N inner directions).

    Args:
        generator: ``u -> G(u)``.
        u: the point.
        jac: J(u) (its null space gives the directions; no derivative flows through it).
        pmat: P = (J Jᵀ)⁻¹ J at ``u``, held fixed.

    Returns:
        T Tᵀ ∇ ½ log det(J Jᵀ) for an orthonormal basis T of the null space of J: the
        tangential part of the gradient, exact; the normal part is zero.
    """
    jac = jax.lax.stop_gradient(jac)
    pmat = jax.lax.stop_gradient(pmat)
    num_outputs = jac.shape[0]
    q, _ = jnp.linalg.qr(jac.T, mode="complete")
    rows, basis = q[:, :num_outputs], q[:, num_outputs:]  # row space and null space of J
    # tr(Pᵀ ∂_t J) is a trace over the inputs, so any orthonormal basis of them serves;
    # P vanishes on the null space, so the N row-space directions suffice (not all M).

    def jac_on_rows(v):  # J(v) R, (N, N): N forward directions
        return jax.vmap(lambda r: jax.jvp(generator, (v,), (r,))[1], out_axes=1)(rows.T)

    # ∂_t (J R) for every tangent direction t: the primal and inner tangents are shared
    d_jac = jax.vmap(lambda t: jax.jvp(jac_on_rows, (u,), (t,))[1])(basis.T)  # (d, N, N)
    return basis @ jnp.einsum("knr,nr->k", d_jac, pmat @ rows)


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
