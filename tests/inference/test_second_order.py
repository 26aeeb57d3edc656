"""The generic gradient of ½ log det(J Jᵀ) (dgm.inference.second_order) against autodiff of
``slogdet``, in float64, on random generators with scans (an RK4 ODE) and without (an MLP),
for forward- and reverse-mode Jacobians, whole (``remat``) and projected on the tangent
space (``tangent``); and planted bugs (P without the Gram solve; a tangent basis that is not
the null space of J) that the same checks catch."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.manifold import ManifoldSystem, project_tangent
from dgm.inference.second_order import (
    choose_second_order,
    gram_log_det_grad,
    loop_kinds,
    remat_scans,
    tangent_log_det_grad,
)


def mlp(key, m, n):
    k1, k2 = jax.random.split(key)
    w1 = jax.random.normal(k1, (m, 8)) / np.sqrt(m)
    w2 = jax.random.normal(k2, (8, n))
    return lambda u: jnp.tanh(u @ w1) @ w2 + 0.5 * u[:n]


def ode(key, m, n):
    """RK4 predator–prey-like system: params u[:2], state observed at n // 2 times (inner
    and outer scans, the inner one inside a jit), multiplicative noise from u[2:]."""
    del key

    @jax.jit
    def advance(x, a, b):
        def rk4(x, _):
            f = lambda x: jnp.stack([a * x[0] - x[0] * x[1], x[0] * x[1] - b * x[1]])  # noqa: E731
            k1 = f(x)
            k2 = f(x + 0.05 * k1)
            k3 = f(x + 0.05 * k2)
            k4 = f(x + 0.1 * k3)
            return x + 0.1 / 6 * (k1 + 2 * k2 + 2 * k3 + k4), None

        return jax.lax.scan(rk4, x, None, length=7)[0]

    def gen(u):
        a, b = jnp.exp(0.3 * u[:2])

        def obs(x, _):
            x = advance(x, a, b)
            return x, x

        xs = jax.lax.scan(obs, jnp.array([1.0, 0.5]), None, length=n // 2)[1]
        return xs.reshape(-1)[:n] * jnp.exp(0.1 * u[m - n :])

    return gen


SLOW = pytest.mark.slow
CASES = [
    pytest.param(mlp, 5, 2, marks=SLOW),
    (mlp, 8, 3),
    pytest.param(mlp, 6, 5, marks=SLOW),
    pytest.param(ode, 6, 4, marks=SLOW),
    pytest.param(ode, 9, 6, marks=SLOW),
]


def reference(gen, u):
    def half_log_det(v):
        jac = jax.jacfwd(gen)(v)
        return 0.5 * jnp.linalg.slogdet(jac @ jac.T)[1]

    return jax.grad(half_log_det)(u)


def max_error(grad_fn, gen, m, seed, tangential=False):
    """Largest error of ``grad_fn(u)`` against the reference gradient (both projected on
    the tangent space of J(u) when ``tangential``), relative to the reference's size."""
    u = jax.random.normal(jax.random.key(seed), (m,), jnp.float64)
    ref = reference(gen, u)
    got = grad_fn(u)
    if tangential:
        jac = jax.jacfwd(gen)(u)
        project = lambda v: v - jac.T @ jnp.linalg.solve(jac @ jac.T, jac @ v)  # noqa: E731
        ref, got = project(ref), project(got)
    return float(jnp.max(jnp.abs(got - ref)) / jnp.maximum(1.0, jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("make, m, n", CASES)
@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_gradient_equals_autodiff_of_slogdet(x64, make, m, n, mode):
    gen = make(jax.random.key(m * n), m, n)
    system = ManifoldSystem(gen, m, n, jacobian=mode, second_order="remat")

    @jax.jit
    def grad(u):
        jac, factor = system.cache(u)
        return system.potential_grad(u, jac, factor) - u

    for seed in range(2):
        assert max_error(grad, gen, m, seed) < 1e-10


@pytest.mark.parametrize("make, m, n", CASES)
def test_tangent_route_equals_the_projected_gradient(x64, make, m, n):
    """The forward-only route: its tangential part is exact and its normal part zero."""
    gen = make(jax.random.key(m * n), m, n)
    system = ManifoldSystem(gen, m, n, jacobian="fwd", second_order="tangent")

    @jax.jit
    def grad(u):
        jac, factor = system.cache(u)
        return system.potential_grad(u, jac, factor) - u, jac, factor

    for seed in range(2):
        assert max_error(lambda u: grad(u)[0], gen, m, seed, tangential=True) < 1e-10
    got, jac, factor = grad(jax.random.normal(jax.random.key(0), (m,), jnp.float64))
    np.testing.assert_allclose(project_tangent(got, jac, factor), got, atol=1e-12)


def test_planted_bug_tangent_basis_off_the_null_space_is_caught(x64):
    """The route's directions taken from the wrong columns of the QR factor of Jᵀ (the
    row space of J, partly): the check above fails."""
    m, n = 8, 3
    gen = mlp(jax.random.key(m * n), m, n)

    def buggy(u):
        jac = jax.jacfwd(gen)(u)
        q = jnp.linalg.qr(jac.T, mode="complete")[0]
        pmat = jnp.linalg.solve(jac @ jac.T, jac)
        # the route with ``basis`` made of q's first columns: the null space of a wrong "J"
        return tangent_log_det_grad(gen, u, q[:, m - n :].T, pmat)

    assert max_error(jax.jit(buggy), gen, m, 0, tangential=True) > 1e-3


def test_auto_takes_the_tangent_route_for_loops_with_few_tangent_directions():
    gen = ode(None, 6, 4)
    assert loop_kinds(gen, jnp.zeros(6)) == {"scan"}
    assert not loop_kinds(mlp(jax.random.key(0), 8, 3), jnp.zeros(8))
    assert choose_second_order(gen, 6, 4) == "tangent"
    assert ManifoldSystem(gen, 6, 4, jacobian="fwd").second_order == "tangent"
    assert ManifoldSystem(gen, 6, 4, jacobian="rev").second_order == "remat"
    assert (
        ManifoldSystem(mlp(jax.random.key(0), 8, 3), 8, 3, jacobian="fwd").second_order == "remat"
    )
    assert choose_second_order(gen, 40, 4) == "remat"  # too many tangent directions

    def halvings(u):  # a while loop with a data-dependent trip count: no reverse pass exists
        return jax.lax.while_loop(lambda x: x[0] > 1.0, lambda x: 0.5 * x, u[:4] ** 2 + 3.0)

    assert loop_kinds(halvings, jnp.zeros(40)) == {"while"}
    assert choose_second_order(halvings, 40, 4) == "tangent"
    with pytest.raises(ValueError, match="needs `jacobian='fwd'`"):
        ManifoldSystem(gen, 6, 4, jacobian="rev", second_order="tangent")


def test_planted_bug_without_the_gram_solve_is_caught(x64):
    """P = J instead of (J Jᵀ)⁻¹ J: the check above fails by orders of magnitude."""
    m, n = 8, 3
    gen = mlp(jax.random.key(m * n), m, n)
    rg = remat_scans(gen)
    buggy = jax.jit(lambda u: gram_log_det_grad(rg, u, jax.jacfwd(gen)(u), "fwd"))
    assert max_error(buggy, gen, m, 0) > 1e-3


@SLOW
def test_planted_bug_on_the_ode_is_caught(x64):
    gen = ode(None, 6, 4)
    rg = remat_scans(gen)
    buggy = jax.jit(lambda u: gram_log_det_grad(rg, u, jax.jacfwd(gen)(u), "rev"))
    assert max_error(buggy, gen, 6, 0) > 1e-3


def test_remat_scans_keeps_values_and_first_derivatives(x64):
    gen = ode(None, 4, 2)
    u = jax.random.normal(jax.random.key(3), (4,), jnp.float64)
    rg = remat_scans(gen)
    np.testing.assert_array_equal(rg(u), gen(u))  # derivatives: the ODE cases above
    names = _primitives(jax.make_jaxpr(rg)(u).jaxpr)
    assert any(n.startswith("remat") or n == "checkpoint" for n in names)  # scans rewritten


def _primitives(jaxpr) -> set:
    """Names of the primitives in ``jaxpr`` and in the jaxprs of its equations' params."""
    names = set()
    for eqn in jaxpr.eqns:
        names.add(eqn.primitive.name)
        for value in eqn.params.values():
            inner = getattr(value, "jaxpr", value)
            if hasattr(inner, "eqns"):
                names |= _primitives(inner)
    return names
