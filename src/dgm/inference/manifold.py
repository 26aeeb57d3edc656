"""The constraint system of a generator conditioned on its output: c(u) = G(u) − y.

Everything the constrained sampler needs about the manifold {u : G(u) = y}: the
Jacobian J (forward or reverse mode, chosen by shape), a factor of the Gram matrix
J Jᵀ (an :class:`AbstractGramFactor`: a dense Cholesky by default, or a structured
factorisation), the tangent-space projection, the quasi-Newton projection onto the
manifold, the Gauss–Newton solver that finds starting points on it, and the potential
energy φ(u) = ½ uᵀu + ½ log det(J Jᵀ) with its gradient. The input density is N(0, I).

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS, §3 and Algorithm 1; Barth et al. (1995) for the projection.
"""

import abc
import copy
from collections.abc import Callable
from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.config import num_positional
from dgm.inference.second_order import (
    choose_second_order,
    gram_log_det_grad,
    remat_scans,
    tangent_log_det_grad,
)

# Up to this many constraints, the Gram Cholesky and its solves are unrolled into scalar
# operations: on a 1×1 or 3×3 Gram matrix, LAPACK's per-call overhead dominates the step.
SMALL_GRAM = 4


class AbstractGramFactor(eqx.Module):
    """A factorisation of the Gram matrix J Jᵀ at one point (a pytree: it is chain state).

    A subclass applies (J Jᵀ)⁻¹ and gives ½ log det(J Jᵀ); whatever it needs from J it
    holds itself, so callers pass right-hand sides only.
    """

    @abc.abstractmethod
    def solve(self, rhs: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        """(J Jᵀ)⁻¹ rhs for ``rhs`` of shape ``(obs,)`` or ``(obs, k)``."""

    @abc.abstractmethod
    def half_log_det(self) -> Float[Array, ""]:
        """½ log det(J Jᵀ)."""

    def is_finite(self) -> Bool[Array, ""]:
        """Whether every array of the factor is finite (a failed factorisation is not)."""
        leaves = jax.tree.leaves(self)
        return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def cholesky_lower(gram: Float[Array, "obs obs"]) -> Float[Array, "obs obs"]:
    """Lower Cholesky factor of a Gram matrix (unrolled for at most ``SMALL_GRAM`` rows)."""
    n = gram.shape[0]
    if n > SMALL_GRAM:
        return jnp.linalg.cholesky(gram)
    rows = [[jnp.zeros((), gram.dtype)] * n for _ in range(n)]
    for j in range(n):
        d = gram[j, j] - sum((rows[j][k] ** 2 for k in range(j)), jnp.zeros((), gram.dtype))
        rows[j][j] = jnp.sqrt(d)  # NaN for a non-positive pivot, as LAPACK's result
        for i in range(j + 1, n):
            s = sum((rows[i][k] * rows[j][k] for k in range(j)), jnp.zeros((), gram.dtype))
            rows[i][j] = (gram[i, j] - s) / rows[j][j]
    return jnp.stack([jnp.stack(r) for r in rows])


def cholesky_solve(
    lower: Float[Array, "obs obs"], rhs: Float[Array, "obs ..."]
) -> Float[Array, "obs ..."]:
    """(L Lᵀ)⁻¹ rhs for a lower factor L (unrolled for at most ``SMALL_GRAM`` rows)."""
    n = lower.shape[0]
    if n > SMALL_GRAM:
        return jsl.cho_solve((lower, True), rhs)
    z = []
    for i in range(n):  # L z = rhs
        z.append((rhs[i] - sum((lower[i, k] * z[k] for k in range(i)), 0.0)) / lower[i, i])
    x = [None] * n
    for i in reversed(range(n)):  # Lᵀ x = z
        x[i] = (z[i] - sum((lower[k, i] * x[k] for k in range(i + 1, n)), 0.0)) / lower[i, i]
    return jnp.stack(x)


class DenseCholesky(AbstractGramFactor):
    """J Jᵀ = L Lᵀ with L dense lower triangular: O(obs³) to build, any Jacobian.

    ½ log det(J Jᵀ) = Σ log Lᵢᵢ. Up to ``SMALL_GRAM`` rows the factorisation and the
    solves are unrolled scalar code; above, LAPACK's.
    """

    lower: Float[Array, "obs obs"]

    @staticmethod
    def from_gram(gram: Float[Array, "obs obs"]) -> "DenseCholesky":
        return DenseCholesky(cholesky_lower(gram))

    @staticmethod
    def from_jacobian(jac: Float[Array, "obs dim"]) -> "DenseCholesky":
        return DenseCholesky(cholesky_lower(jac @ jac.T))

    def solve(self, rhs: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        return cholesky_solve(self.lower, rhs)

    def half_log_det(self) -> Float[Array, ""]:
        return jnp.sum(jnp.log(jnp.diagonal(self.lower)))


class TriangularInverse(eqx.Module):
    """J_t⁻¹ and J_t⁻ᵀ applied by triangular solves (the default of :class:`TriangularBlockGram`).

    J_t and J_tᵀ are kept as contiguous arrays, made once per factor: sliced out of J and
    transposed inside every solve, XLA CPU copied the block on each Newton iteration.
    """

    lower: Float[Array, "obs obs"]  # J_t
    upper: Float[Array, "obs obs"]  # J_tᵀ

    def matvec(self, x: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        return jsl.solve_triangular(self.lower, x, lower=True)

    def rmatvec(self, x: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        return jsl.solve_triangular(self.upper, x, lower=False)


class TriangularBlockGram(AbstractGramFactor):
    """Gram factor of J = [J_a | J_t] with J_t (obs × obs) lower triangular and J_a narrow.

    J Jᵀ = J_t (I + B Bᵀ) J_tᵀ with B = J_t⁻¹ J_a, so (J Jᵀ)⁻¹ r costs two triangular
    solves with J_t and a k×k Woodbury solve with I + Bᵀ B (k = J_a's columns): no
    obs×obs Gram product and no obs×obs Cholesky. This is the shape of a generator whose
    last ``obs`` inputs enter additively and in order (e.g. Euler–Maruyama noise). By the
    determinant lemma, ½ log det(J Jᵀ) = Σ log|diag J_t| + ½ log det(I + Bᵀ B).

    A model that knows J_t⁻¹ in closed form (the Jacobian of its inverse noise map, often
    banded) passes it as ``inverse``: a pytree with ``matvec(x) = J_t⁻¹ x`` and
    ``rmatvec(x) = J_t⁻ᵀ x`` for ``x`` of shape ``(obs,)`` or ``(obs, k)``. Banded products
    replace the triangular solves, and they batch well over ``vmap``-ed chains.

    Build it with :meth:`from_jacobian`; pass ``TriangularBlockGram.from_jacobian`` (with
    ``num_leading`` bound) as ``gram_factor_fn`` of :class:`ManifoldSystem`.
    """

    b: Float[Array, "obs lead"]
    small: DenseCholesky  # of I + Bᵀ B
    half_log_det_value: Float[Array, ""]
    inverse: Any  # applies J_t⁻¹ and J_t⁻ᵀ (a TriangularInverse by default)

    @staticmethod
    def from_jacobian(
        jac: Float[Array, "obs dim"], num_leading: int, inverse: Any = None
    ) -> "TriangularBlockGram":
        jac_t = jac[:, num_leading:]
        if inverse is None:
            inverse = TriangularInverse(jac_t, jac_t.T)
        b = inverse.matvec(jac[:, :num_leading])
        small = DenseCholesky.from_gram(jnp.eye(num_leading, dtype=jac.dtype) + b.T @ b)
        half_log_det = jnp.sum(jnp.log(jnp.abs(jnp.diagonal(jac_t)))) + small.half_log_det()
        return TriangularBlockGram(b, small, half_log_det, inverse)

    def solve(self, rhs: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        """(J Jᵀ)⁻¹ rhs = J_t⁻ᵀ (I − B (I + Bᵀ B)⁻¹ Bᵀ) J_t⁻¹ rhs."""
        s = self.inverse.matvec(rhs)
        s = s - self.b @ self.small.solve(self.b.T @ s)
        return self.inverse.rmatvec(s)

    def half_log_det(self) -> Float[Array, ""]:
        return self.half_log_det_value


class ProjectionResult(NamedTuple):
    position: Float[Array, " dim"]
    converged: Bool[Array, ""]
    num_iters: Int[Array, ""]


class ManifoldSystem:
    """Constraint functions of ``generator(u) = y`` for inputs ``u ~ N(0, I)``.

    Args:
        generator: ``G(u)``, one input vector of size ``input_dim`` to one output vector.
        input_dim: M, the number of inputs.
        output_dim: N ≤ M, the number of outputs.
        jacobian: ``"fwd"`` (M JVPs), ``"rev"`` (N VJPs) or ``"auto"`` (forward unless
            M > 2N: forward passes are cheaper per pass, notably through ``scan``); or a
            function ``u -> J`` exploiting the generator's structure (e.g.
            :meth:`dgm.inference.additive_noise.AdditiveNoise.jacobian`), differentiable
            in u (∇φ takes a VJP through it).
        gram_factor_fn: optional ``(u, J) -> AbstractGramFactor`` exploiting the
            Jacobian's structure (e.g. :class:`TriangularBlockGram`); by default
            :meth:`DenseCholesky.from_jacobian`.
        half_log_det_fn: optional ``u -> ½ log det(J Jᵀ)``, exact at least on the manifold
            (it may differ off it); or ``(u, y) -> …`` for any observation ``y``, used once
            :meth:`at` binds ``y`` (unbound, the system uses the default). φ and ∇φ then
            use it instead of the Gram factor and the second-order term: the sampler only
            evaluates φ on the manifold and only uses the tangential part of ∇φ (every kick
            is followed by the tangent projection), and both agree with the default there.
            A model with a closed-form inverse noise map can make this term cheap (see
            :meth:`dgm.models.lotka_volterra.LotkaVolterra.half_log_det_gram`).
        second_order: how ∇ ½ log det(J Jᵀ) is computed (:meth:`potential_grad`).
            ``"tangent"`` (default for a ``"fwd"`` Jacobian of a generator with ``scan``
            loops and at most :data:`~dgm.inference.second_order.MAX_TANGENT_DIM` tangent
            directions, or with a ``while`` loop): only its tangential part, which is all
            the sampler uses, by M − N forward-over-forward passes
            (:func:`~dgm.inference.second_order.tangent_log_det_grad`). ``"remat"``
            (default for other ``"fwd"``/``"rev"`` cases): through the generator with
            every ``lax.scan`` body checkpointed
            (:func:`~dgm.inference.second_order.remat_scans`), as one reverse pass over
            the forward-mode Jacobian (``"fwd"``) or N forward-over-reverse
            Hessian–vector products (``"rev"``). ``"vjp"`` (default for a custom Jacobian
            function): one reverse pass through the Jacobian map as given.
        log_det_grad_fn: optional ``(u, J, factor) -> ∇_u ½ log det(J Jᵀ)`` that knows the
            Jacobian's structure (e.g.
            :meth:`dgm.inference.additive_noise.AdditiveNoise.log_det_grad`: only the
            columns of J that depend on u); it replaces ``second_order``'s term. Ignored
            when ``half_log_det_fn`` is given.
    """

    def __init__(
        self,
        generator: Callable,
        input_dim: int,
        output_dim: int,
        jacobian: str | Callable = "auto",
        gram_factor_fn: Callable | None = None,
        half_log_det_fn: Callable | None = None,
        second_order: str = "auto",
        log_det_grad_fn: Callable | None = None,
    ):
        if log_det_grad_fn is not None and not callable(log_det_grad_fn):
            raise ValueError(
                "`log_det_grad_fn` must be a function (u, J, factor) -> gradient; "
                f"got {type(log_det_grad_fn).__name__}"
            )
        if second_order not in ("auto", "remat", "vjp", "tangent"):
            raise ValueError(
                f"`second_order` must be 'auto', 'remat', 'vjp' or 'tangent'; got {second_order!r}"
            )
        if not callable(jacobian) and jacobian not in ("auto", "fwd", "rev"):
            raise ValueError(
                f"`jacobian` must be 'auto', 'fwd', 'rev' or a function u -> J; got {jacobian!r}"
            )
        if jacobian == "auto":
            jacobian = "rev" if input_dim > 2 * output_dim else "fwd"
        self.generator = generator
        self.input_dim = input_dim
        self.output_dim = output_dim
        if callable(jacobian):
            self.jacobian_mode, self._jac = "custom", jacobian
        else:
            self.jacobian_mode = jacobian
            self._jac = jax.jacfwd(generator) if jacobian == "fwd" else jax.jacrev(generator)
        self._gram_factor_fn = gram_factor_fn
        self._log_det_grad_fn = log_det_grad_fn
        # a two-argument half_log_det_fn(u, y) waits for `at(y)`; the default serves till then
        takes_y = half_log_det_fn is not None and num_positional(half_log_det_fn) >= 2
        self._half_log_det_of_y = half_log_det_fn if takes_y else None
        self._half_log_det_fn = None if takes_y else half_log_det_fn
        if second_order == "tangent" and jacobian != "fwd":
            raise ValueError(
                "`second_order='tangent'` needs `jacobian='fwd'` (it differentiates the "
                f"forward-mode Jacobian); got jacobian={jacobian!r}"
            )
        if second_order == "auto":
            if callable(jacobian):
                second_order = "vjp"
            elif jacobian == "fwd":
                second_order = choose_second_order(generator, input_dim, output_dim)
            else:
                second_order = "remat"
        self.second_order = second_order
        self._second_order_generator = remat_scans(generator)

    @property
    def serves_any_observation(self) -> bool:
        """False when a one-argument ``half_log_det_fn`` ties φ to one observation's
        manifold (then only that observation may be sampled)."""
        return self._half_log_det_fn is None or self._half_log_det_of_y is not None

    def at(self, y: Float[Array, " obs"]) -> "ManifoldSystem":
        """This system on the manifold G(u) = ``y``: a two-argument ``half_log_det_fn(u, y)``
        bound to ``y`` (for a traced ``y`` too); the system itself when it has none."""
        if self._half_log_det_of_y is None:
            return self
        bound = copy.copy(self)
        bound._half_log_det_fn = lambda u: self._half_log_det_of_y(u, y)
        return bound

    def factor_type(self) -> type:
        """The class of the Gram factor :meth:`gram_factor` returns (found by tracing).

        Raises:
            TypeError: if ``gram_factor_fn`` returns something other than an
                :class:`AbstractGramFactor`.
        """
        u = jax.ShapeDtypeStruct((self.input_dim,), jnp.float32)
        jac = jax.ShapeDtypeStruct((self.output_dim, self.input_dim), jnp.float32)
        out = jax.eval_shape(self.gram_factor, u, jac)
        if not isinstance(out, AbstractGramFactor):
            raise TypeError(
                "`gram_factor_fn` must return an AbstractGramFactor (e.g. "
                f"DenseCholesky.from_jacobian(J) or TriangularBlockGram); got {type(out).__name__}"
            )
        return type(out)

    @property
    def uses_lapack_cholesky(self) -> bool:
        """Whether the Gram factor is, or holds, a :class:`DenseCholesky` of more than
        ``SMALL_GRAM`` rows (LAPACK's Cholesky), e.g. the k×k capacitance matrix of a
        Woodbury factor with k > ``SMALL_GRAM``."""
        u = jax.ShapeDtypeStruct((self.input_dim,), jnp.float32)
        jac = jax.ShapeDtypeStruct((self.output_dim, self.input_dim), jnp.float32)
        factor = jax.eval_shape(self.gram_factor, u, jac)
        is_chol = lambda x: isinstance(x, DenseCholesky)  # noqa: E731
        return any(
            is_chol(x) and x.lower.shape[0] > SMALL_GRAM
            for x in jax.tree.leaves(factor, is_leaf=is_chol)
        )

    def constraint(self, u: Float[Array, " dim"], y: Float[Array, " obs"]) -> Float[Array, " obs"]:
        return self.generator(u) - y

    def jacobian(self, u: Float[Array, " dim"]) -> Float[Array, "obs dim"]:
        return self._jac(u)

    def gram_factor(self, u: Float[Array, " dim"], jac: Float[Array, "obs dim"]):
        """The :class:`AbstractGramFactor` of J Jᵀ at u."""
        if self._gram_factor_fn is not None:
            return self._gram_factor_fn(u, jac)
        return DenseCholesky.from_jacobian(jac)

    def cache(self, u: Float[Array, " dim"]) -> tuple[Float[Array, "obs dim"], Any]:
        """``(J(u), Gram factor of J Jᵀ)``."""
        jac = self.jacobian(u)
        return jac, self.gram_factor(u, jac)

    def potential(self, u: Float[Array, " dim"], factor: AbstractGramFactor) -> Float[Array, ""]:
        """φ(u) = ½ uᵀu + ½ log det(J Jᵀ)."""
        if self._half_log_det_fn is not None:
            return 0.5 * jnp.dot(u, u) + self._half_log_det_fn(u)
        return 0.5 * jnp.dot(u, u) + factor.half_log_det()

    def potential_grad(
        self, u: Float[Array, " dim"], jac: Float[Array, "obs dim"], factor: AbstractGramFactor
    ) -> Float[Array, " dim"]:
        """∇φ(u) = u + Σᵢⱼ Pᵢⱼ ∂Jᵢⱼ/∂u with P = (J Jᵀ)⁻¹ J held fixed.

        From d(½ log det G) = ½ tr(G⁻¹ dG) with G = J Jᵀ: the second term is one reverse
        pass through the Jacobian map, ``vjp(J)(P)``, so no derivative passes through the
        factorisation; P costs one solve with M right-hand sides. With
        ``second_order="tangent"`` the second term is only its tangential part (the
        sampler projects every kick onto the tangent space, so Π_u ∇φ is exact).
        """
        if self._half_log_det_fn is not None:
            return u + jax.grad(self._half_log_det_fn)(u)
        if self._log_det_grad_fn is not None:
            return u + self._log_det_grad_fn(u, jac, factor)
        pmat = factor.solve(jac)
        if self.second_order == "vjp":
            return u + jax.vjp(self._jac, u)[1](pmat)[0]
        if self.second_order == "tangent":
            return u + tangent_log_det_grad(self.generator, u, jac, pmat)
        return u + gram_log_det_grad(self._second_order_generator, u, pmat, self.jacobian_mode)

    def potential_and_grad(self, u: Float[Array, " dim"]):
        """φ(u), ∇φ(u) and the cache ``(J, Gram factor)`` at u."""
        jac, factor = self.cache(u)
        return self.potential(u, factor), self.potential_grad(u, jac, factor), jac, factor


def project_tangent(
    v: Float[Array, " dim"], jac: Float[Array, "obs dim"], factor: AbstractGramFactor
) -> Float[Array, " dim"]:
    """Π(v) = v − Jᵀ (J Jᵀ)⁻¹ J v: the component of v in the tangent space (null space of J)."""
    # wᵀJ, not Jᵀw: the same sums, without XLA:CPU copying Jᵀ out of J on every call
    return v - factor.solve(jac @ v) @ jac


def project_onto_manifold(
    system: ManifoldSystem,
    x: Float[Array, " dim"],
    y: Float[Array, " obs"],
    anchor_jac: Float[Array, "obs dim"],
    anchor_factor: AbstractGramFactor,
    tol: float,
    max_iters: int,
) -> ProjectionResult:
    """Symmetric quasi-Newton projection of ``x`` onto G(u) = y along the anchor's rows.

    Solves G(x − J_aᵀ λ) = y by v ← v − J_aᵀ (J_a J_aᵀ)⁻¹ c(v), with the anchor Jacobian
    fixed. As in the paper's code the convergence test ‖c‖∞ < tol uses c from before
    the update, so one more update follows the tolerance being met. A non-finite c, or
    ``max_iters`` iterations without convergence, returns ``converged = False``.
    """

    def cond(carry):
        i, _, done, bad = carry
        return (i < max_iters) & ~done & ~bad

    def body(carry):
        i, v, _, _ = carry
        c = system.constraint(v, y)
        bad = ~jnp.all(jnp.isfinite(c))
        v_new = v - anchor_factor.solve(c) @ anchor_jac  # not J_aᵀ λ: see project_tangent
        done = jnp.max(jnp.abs(c)) < tol
        return i + 1, jnp.where(bad, v, v_new), done, bad

    init = (jnp.asarray(0), x, jnp.asarray(False), jnp.asarray(False))
    iters, v, done, bad = jax.lax.while_loop(cond, body, init)
    return ProjectionResult(v, done & ~bad & jnp.all(jnp.isfinite(v)), iters)


def gauss_newton(
    system: ManifoldSystem,
    u: Float[Array, " dim"],
    y: Float[Array, " obs"],
    tol: Float[ArrayLike, ""],
    max_iters: int,
) -> Float[Array, " dim"]:
    """A point near ``u`` on G(u) = y: minimum-norm Gauss–Newton with step halving.

    Each iteration steps by −Jᵀ (J Jᵀ)⁻¹ c(u) with J at the current iterate, halving the
    step (down to 1e-6) until max |c| decreases; it stops when max |c| ≤ ``tol`` or after
    ``max_iters`` iterations (the caller checks the residual). For starting points only:
    the sampler's own projection is :func:`project_onto_manifold`.
    """

    def residual(v):
        return jnp.max(jnp.abs(system.constraint(v, y)))

    def cond(carry):
        i, _, res = carry
        return (i < max_iters) & (res > tol)

    def body(carry):
        i, u, res = carry
        jac, factor = system.cache(u)
        delta = jac.T @ factor.solve(system.constraint(u, y))

        def shrink(state):
            alpha, _ = state
            return alpha * 0.5, residual(u - 0.5 * alpha * delta)

        def too_big(state):
            alpha, r = state
            return (alpha > 1e-6) & ~(r < res)

        alpha, r = jax.lax.while_loop(
            too_big, shrink, (jnp.asarray(1.0, u.dtype), residual(u - delta))
        )
        u_new = jnp.where(r < res, u - alpha * delta, u)
        return i + 1, u_new, jnp.minimum(r, res)

    _, u, _ = jax.lax.while_loop(cond, body, (0, u, residual(u)))
    return u
