"""Leapfrog: reversibility, second-order energy error, an exact orbit (no randomness)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.integrators import IntegratorState, leapfrog
from dgm.inference.metrics import kinetic_energy


@pytest.fixture(scope="module", autouse=True)
def _x64():
    """Reversibility is checked to 1e-12: float64."""
    with jax.enable_x64(True):
        yield


def quartic_log_density(x):
    """Non-Gaussian, anisotropic target."""
    return -0.5 * jnp.sum(x**2 / jnp.array([1.0, 0.25])) - 0.1 * jnp.sum(x**4)


@pytest.mark.parametrize("imm", [np.array([1.0, 0.5]), np.array([[1.0, 0.3], [0.3, 0.5]])])
def test_leapfrog_is_reversible(imm):
    imm = jnp.asarray(imm)  # under x64 (built here, not at collection)
    logp, grad = jax.value_and_grad(quartic_log_density)(jnp.array([0.7, -0.4]))
    start = IntegratorState(jnp.array([0.7, -0.4]), jnp.array([0.3, 1.1]), logp, grad)
    step = jax.jit(lambda s: leapfrog(s, jnp.asarray(0.1), quartic_log_density, imm))
    s = start
    for _ in range(25):
        s = step(s)
    assert not np.allclose(s.position, start.position, atol=1e-2)  # it did move
    s = s._replace(momentum=-s.momentum)
    for _ in range(25):
        s = step(s)
    np.testing.assert_allclose(s.position, start.position, atol=1e-12)
    np.testing.assert_allclose(-s.momentum, start.momentum, atol=1e-12)


def _energy_error(step_size: float, imm) -> float:
    q0, p0 = jnp.array([0.7, -0.4]), jnp.array([0.3, 1.1])
    logp, grad = jax.value_and_grad(quartic_log_density)(q0)
    s = IntegratorState(q0, p0, logp, grad)
    num_steps = round(1.0 / step_size)
    s = jax.lax.fori_loop(
        0, num_steps, lambda _, s: leapfrog(s, jnp.asarray(step_size), quartic_log_density, imm), s
    )
    h0 = -logp + kinetic_energy(p0, imm)
    return float(jnp.abs(-s.log_density + kinetic_energy(s.momentum, imm) - h0))


@pytest.mark.parametrize("imm", [np.array([1.0, 0.5]), np.array([[1.0, 0.3], [0.3, 0.5]])])
def test_energy_error_scales_as_step_size_squared(imm):
    imm = jnp.asarray(imm)
    sizes = np.array([0.1, 0.05, 0.025, 0.0125])
    errors = np.array([_energy_error(h, imm) for h in sizes])
    slope = np.polyfit(np.log(sizes), np.log(errors), 1)[0]
    assert abs(slope - 2.0) < 0.3, (slope, errors)


def test_harmonic_oscillator_exact_orbit():
    """q'' = -q from (q, p) = (0, 1): after time 1 the orbit is at (sin 1, cos 1)."""
    logp_fn = lambda q: -0.5 * jnp.sum(q**2)  # noqa: E731
    q0 = jnp.zeros(1)
    s = IntegratorState(q0, jnp.ones(1), *jax.value_and_grad(logp_fn)(q0))
    h = 1e-3
    s = jax.lax.fori_loop(
        0, 1000, lambda _, s: leapfrog(s, jnp.asarray(h), logp_fn, jnp.ones(1)), s
    )
    np.testing.assert_allclose(s.position, [np.sin(1.0)], atol=1e-6)
    np.testing.assert_allclose(s.momentum, [np.cos(1.0)], atol=1e-6)
