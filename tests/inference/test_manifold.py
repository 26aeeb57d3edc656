"""The manifold toolkit: Gram factors against dense linear algebra, Gauss–Newton starts,
the tangent and quasi-Newton projections, and φ's gradient against plain autodiff.

All in float64 (the module's fixture enables it), with no statistics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.manifold import (
    DenseCholesky,
    ManifoldSystem,
    TriangularBlockGram,
    gauss_newton,
    project_onto_manifold,
    project_tangent,
)


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):
        yield


def sphere(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


D_ELLIPSOID = np.array([1.0, 1.5, 2.5])


def ellipsoid(u):
    return jnp.sqrt(jnp.sum((jnp.asarray(D_ELLIPSOID) * u) ** 2, keepdims=True))


A = np.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])


def linear(u):
    return jnp.asarray(A) @ u[:2] + 0.5 * u[2:]


def block_jacobian(num_obs=7, num_leading=3, seed=0):
    """J = [J_a | J_t] with J_t lower triangular and well conditioned."""
    rng = np.random.default_rng(seed)
    j_a = rng.normal(size=(num_obs, num_leading))
    j_t = np.tril(0.3 * rng.normal(size=(num_obs, num_obs)), -1) + np.diag(
        rng.uniform(0.5, 2.0, num_obs) * rng.choice([-1.0, 1.0], num_obs)
    )
    return jnp.asarray(np.concatenate([j_a, j_t], axis=1))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
def test_dense_cholesky_matches_lapack_and_dense_solve(n):
    """The unrolled small-Gram path (n ≤ SMALL_GRAM) and LAPACK's (n > 4) agree with
    NumPy's Cholesky, solve and log-determinant."""
    rng = np.random.default_rng(n)
    a = rng.normal(size=(n, n + 2))
    factor = DenseCholesky.from_jacobian(jnp.asarray(a))
    np.testing.assert_allclose(factor.lower, np.linalg.cholesky(a @ a.T), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(factor.half_log_det(), 0.5 * np.linalg.slogdet(a @ a.T)[1])
    for rhs in (rng.normal(size=n), rng.normal(size=(n, 5))):
        expected = np.linalg.solve(a @ a.T, rhs)
        np.testing.assert_allclose(factor.solve(jnp.asarray(rhs)), expected, rtol=1e-9)


def test_triangular_block_gram_matches_dense():
    jac = block_jacobian()
    gram = np.asarray(jac @ jac.T)
    factor = TriangularBlockGram.from_jacobian(jac, 3)
    rhs = np.random.default_rng(1).normal(size=(7, 4))
    np.testing.assert_allclose(factor.solve(jnp.asarray(rhs)), np.linalg.solve(gram, rhs))
    np.testing.assert_allclose(
        factor.solve(jnp.asarray(rhs[:, 0])), np.linalg.solve(gram, rhs[:, 0])
    )
    np.testing.assert_allclose(factor.half_log_det(), 0.5 * np.linalg.slogdet(gram)[1])


def test_factor_is_finite_flags_a_failed_factorisation():
    assert bool(DenseCholesky.from_jacobian(block_jacobian()).is_finite())
    bad = DenseCholesky.from_gram(-jnp.eye(6))  # not positive definite: NaN pivots
    assert not bool(bad.is_finite())
    assert not bool(DenseCholesky.from_gram(-jnp.eye(2)).is_finite())  # unrolled path


def test_gram_factor_fn_must_return_a_gram_factor():
    plain = ManifoldSystem(sphere, 3, 1, gram_factor_fn=lambda u, j: j @ j.T)
    with pytest.raises(TypeError, match="`gram_factor_fn` must return an AbstractGramFactor"):
        plain.factor_type()
    assert ManifoldSystem(sphere, 3, 1).factor_type() is DenseCholesky
    assert not ManifoldSystem(sphere, 3, 1).uses_lapack_cholesky  # 1 row: unrolled


@pytest.mark.parametrize("variant", ["dense", "block"])
def test_tangent_projection_is_orthogonal_projection(variant):
    """Π(v) equals v minus its component in the row space of J (QR reference), J Π(v) = 0,
    and Π is idempotent."""
    jac = block_jacobian()
    factor = (
        DenseCholesky.from_jacobian(jac)
        if variant == "dense"
        else TriangularBlockGram.from_jacobian(jac, 3)
    )
    v = jax.random.normal(jax.random.key(0), (jac.shape[1],), jnp.float64)
    pv = project_tangent(v, jac, factor)
    q = np.linalg.qr(np.asarray(jac).T)[0]
    np.testing.assert_allclose(pv, np.asarray(v) - q @ (q.T @ np.asarray(v)), atol=1e-12)
    np.testing.assert_allclose(jac @ pv, 0.0, atol=1e-12)
    np.testing.assert_allclose(project_tangent(pv, jac, factor), pv, atol=1e-12)


def test_projection_onto_manifold_converges_along_anchor_rows():
    """A point pushed off the ellipsoid returns to it (residual < tol) by moving along
    the anchor's Jacobian rows only; too few iterations report non-convergence."""
    system = ManifoldSystem(ellipsoid, 3, 1)
    y = jnp.ones(1)
    u = jnp.array([1.0, 0.0, 0.0])
    jac, factor = system.cache(u)
    x = u + jnp.array([0.05, 0.1, -0.08])
    out = project_onto_manifold(system, x, y, jac, factor, 1e-10, 50)
    assert bool(out.converged) and int(out.num_iters) > 1
    assert float(jnp.max(jnp.abs(system.constraint(out.position, y)))) < 1e-10
    move = np.asarray(out.position - x)
    np.testing.assert_allclose(move - (move @ jac[0]) * jac[0] / (jac[0] @ jac[0]), 0, atol=1e-14)
    assert not bool(project_onto_manifold(system, x, y, jac, factor, 1e-10, 1).converged)
    far = project_onto_manifold(system, x + jnp.nan, y, jac, factor, 1e-10, 50)
    assert not bool(far.converged)


def test_projection_tests_the_outputs_before_its_update():
    """PROJECT stops on ‖c‖∞ < tol for the outputs at the iterate *before* its update (the
    paper's code), so one update always follows the test and the step length never enters.

    On the x-axis of the ellipsoid scaled by s (G = s‖D u‖, J = s e₁ at (1, 0, 0)), a start
    d off along the axis has c = s d and is moved onto the manifold exactly by one update:
    - already within tol (s = 1, d = 1e-10): converged after 1 iteration, and moved (by
      1e-10) onto the manifold;
    - a flat map (s = 1e-4, d = 1e-5, so c = 1e-9 < tol): converged after 1 iteration
      with a step of 1e-5 ≫ tol (a test on the step would have gone on);
    - a steep map (s = 1e4, d = 1e-11, so c = 1e-7 > tol): 2 iterations although the first
      step is 1e-11 ≪ tol (a test on the step would have stopped), and with
      ``max_iters=1`` not converged.

    Planted by hand in manifold.py (then reverted), each fails this test: the test on c
    after the update (1 iteration on the steep map), on the step length (2 on the flat
    map), no update once converged (the start comes back unmoved).
    """
    tol = 1e-8
    u = jnp.array([1.0, 0.0, 0.0])
    for scale, d, iters in ((1.0, 1e-10, 1), (1e-4, 1e-5, 1), (1e4, 1e-11, 2)):
        system = ManifoldSystem(lambda v, s=scale: s * ellipsoid(v), 3, 1)
        y = jnp.array([scale])
        jac, factor = system.cache(u)
        x = u.at[0].add(d)
        out = project_onto_manifold(system, x, y, jac, factor, tol, 50)
        assert bool(out.converged) and int(out.num_iters) == iters, (scale, int(out.num_iters))
        np.testing.assert_allclose(out.position, u, rtol=0, atol=1e-15)
        assert float(jnp.max(jnp.abs(out.position - x))) > 0.5 * d
    one = project_onto_manifold(system, x, y, jac, factor, tol, 1)
    assert not bool(one.converged) and int(one.num_iters) == 1
    assert float(jnp.max(jnp.abs(one.position - x))) < tol  # it moved less than tol


@pytest.mark.parametrize(
    ("generator", "dim", "y"), [(sphere, 3, [1.0]), (linear, 5, [0.7, -1.1, 0.4])]
)
def test_gauss_newton_lands_on_manifold(generator, dim, y):
    y = jnp.asarray(y)
    system = ManifoldSystem(generator, dim, y.shape[0])
    starts = jax.random.normal(jax.random.key(4), (3, dim), jnp.float64)
    u = jax.jit(jax.vmap(lambda s: gauss_newton(system, s, y, 1e-11, 100)))(starts)
    residual = jax.vmap(lambda v: jnp.max(jnp.abs(system.constraint(v, y))))(u)
    assert float(jnp.max(residual)) < 1e-10


def test_gradient_of_potential_matches_autodiff():
    """∇φ by one VJP of the Jacobian map with P = (J Jᵀ)⁻¹ J equals autodiff through slogdet."""
    system = ManifoldSystem(ellipsoid, 3, 1)
    u = jnp.array([0.3, 0.2, 0.1])

    def phi(v):
        j = jax.jacfwd(ellipsoid)(v)
        return 0.5 * v @ v + 0.5 * jnp.linalg.slogdet(j @ j.T)[1]

    value, grad, _, _ = system.potential_and_grad(u)
    np.testing.assert_allclose(value, phi(u), rtol=1e-12)
    np.testing.assert_allclose(grad, jax.grad(phi)(u), rtol=1e-10)


def test_block_gram_system_matches_dense_system():
    """φ, ∇φ and the projection with TriangularBlockGram equal the dense system's on a
    generator whose trailing inputs enter additively (J = [A | 0.5 I])."""
    dense = ManifoldSystem(linear, 5, 3)
    block = ManifoldSystem(
        linear, 5, 3, gram_factor_fn=lambda u, j: TriangularBlockGram.from_jacobian(j, 2)
    )
    assert block.factor_type() is TriangularBlockGram and not block.uses_lapack_cholesky
    u = jnp.array([0.3, -0.2, 0.5, 1.0, -0.4])
    for got, want in zip(
        block.potential_and_grad(u)[:2], dense.potential_and_grad(u)[:2], strict=True
    ):
        np.testing.assert_allclose(got, want, rtol=1e-12)
