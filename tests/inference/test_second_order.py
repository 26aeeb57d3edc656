"""The generic gradient of ½ log det(J Jᵀ) (dgm.inference.second_order) against autodiff of
``slogdet``, in float64, on random generators with scans (an RK4 ODE) and without (an MLP),
for forward- and reverse-mode Jacobians; and a planted bug (P without the Gram solve) that
the same check catches."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.manifold import ManifoldSystem
from dgm.inference.second_order import gram_log_det_grad, remat_scans


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
    (mlp, 5, 2),
    (mlp, 8, 3),
    (mlp, 6, 5),
    pytest.param(ode, 6, 4, marks=SLOW),
    pytest.param(ode, 9, 6, marks=SLOW),
]


def reference(gen, u):
    def half_log_det(v):
        jac = jax.jacfwd(gen)(v)
        return 0.5 * jnp.linalg.slogdet(jac @ jac.T)[1]

    return jax.grad(half_log_det)(u)


def max_error(grad_fn, gen, m, seed):
    u = jax.random.normal(jax.random.key(seed), (m,), jnp.float64)
    ref = reference(gen, u)
    got = grad_fn(u)
    return float(jnp.max(jnp.abs(got - ref)) / jnp.maximum(1.0, jnp.max(jnp.abs(ref))))


@pytest.mark.parametrize("make, m, n", CASES)
@pytest.mark.parametrize("mode", ["fwd", "rev"])
def test_gradient_equals_autodiff_of_slogdet(x64, make, m, n, mode):
    gen = make(jax.random.key(m * n), m, n)
    system = ManifoldSystem(gen, m, n, jacobian=mode)
    assert system.second_order == "remat"

    @jax.jit
    def grad(u):
        jac, factor = system.cache(u)
        return system.potential_grad(u, jac, factor) - u

    for seed in range(2):
        assert max_error(grad, gen, m, seed) < 1e-10


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
    np.testing.assert_array_equal(rg(u), gen(u))
    np.testing.assert_allclose(jax.jacrev(rg)(u), jax.jacfwd(gen)(u), rtol=1e-12, atol=1e-13)
    assert "remat" in _primitives(jax.make_jaxpr(rg)(u).jaxpr)  # the scans were rewritten


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
