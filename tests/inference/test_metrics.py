"""Euclidean metrics: momentum covariance M, kinetic energy ½ pᵀM⁻¹p, input checks.

Dtype-agnostic: runs with x64 on or off (float32 draws, tolerances sized for them).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.metrics import (
    check_inverse_mass_matrix,
    kinetic_energy,
    sample_momentum,
    velocity,
)

INV_DENSE = np.array([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]])
INV_DIAG = np.array([2.0, 1.0, 0.5])
NUM_DRAWS = 200_000

CASES = {
    "dense": (INV_DENSE, np.linalg.inv(INV_DENSE)),
    "diagonal": (INV_DIAG, np.diag(1.0 / INV_DIAG)),
    "scalar": (np.asarray(4.0), np.eye(3) / 4.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_momentum_covariance_is_mass_matrix(case):
    """Cov(p) = M within Monte Carlo error (entry sd ≈ sqrt((M_ii M_jj + M_ij²)/n) < 0.004)."""
    inv, mass = CASES[case]
    keys = jax.random.split(jax.random.key(0), NUM_DRAWS)
    p = jax.jit(
        jax.vmap(
            lambda k: sample_momentum(k, jnp.asarray(inv, jnp.float32), jnp.zeros(3, jnp.float32))
        )
    )(keys)
    p = np.asarray(p, np.float64)
    assert p.shape == (NUM_DRAWS, 3)
    np.testing.assert_allclose(p.mean(0), 0.0, atol=0.02)
    np.testing.assert_allclose(np.cov(p.T), mass, atol=0.02)


@pytest.mark.parametrize("case", list(CASES))
def test_kinetic_energy_and_velocity_closed_form(case):
    inv, _ = CASES[case]
    p = np.array([0.3, -1.2, 0.7])
    full = inv * np.eye(3) if np.ndim(inv) == 0 else (np.diag(inv) if np.ndim(inv) == 1 else inv)
    inv_j, p_j = jnp.asarray(inv, jnp.float32), jnp.asarray(p, jnp.float32)
    np.testing.assert_allclose(float(kinetic_energy(p_j, inv_j)), 0.5 * p @ full @ p, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(velocity(p_j, inv_j)), full @ p, rtol=1e-5)


def test_momentum_keeps_position_dtype():
    p = sample_momentum(jax.random.key(1), jnp.ones(3, jnp.float32), jnp.zeros(3, jnp.float32))
    assert p.dtype == jnp.float32


@pytest.mark.parametrize(
    ("imm", "match"),
    [
        (np.ones((2, 2, 2)), r"1 \(diagonal\) or 2 \(dense\) dimensions; got shape \(2, 2, 2\)"),
        (np.asarray(1.0), r"1 \(diagonal\) or 2 \(dense\) dimensions; got shape \(\)"),
        (np.ones(4), r"must have size 3 along each axis; got shape \(4,\)"),
        (np.ones((3, 2)), r"must have size 3 along each axis; got shape \(3, 2\)"),
    ],
)
def test_check_inverse_mass_matrix_errors(imm, match):
    with pytest.raises(ValueError, match=match):
        check_inverse_mass_matrix(imm, 3)


def test_check_inverse_mass_matrix_accepts_good_shapes():
    check_inverse_mass_matrix(np.ones(3), 3)
    check_inverse_mass_matrix(np.eye(3), 3)
