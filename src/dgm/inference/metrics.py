"""Euclidean metrics: momentum draws and kinetic energy for identity, diagonal or dense mass.

The tunable quantity is the *inverse* mass matrix, passed to every function so that
adaptation can change it without recompiling: a vector for a diagonal metric, a matrix
for a dense one, or a scalar (a multiple of the identity; 1 for the identity).
"""

import jax
import jax.numpy as jnp
import jax.scipy.linalg as jsl
from jaxtyping import Array, Float, PRNGKeyArray

InverseMass = Float[Array, ""] | Float[Array, " dim"] | Float[Array, "dim dim"]


def check_inverse_mass_matrix(inverse_mass_matrix, dim: int) -> None:
    """Raise ``ValueError`` for an inverse mass matrix of the wrong rank or size."""
    shape = jnp.shape(inverse_mass_matrix)
    if len(shape) not in (1, 2):
        raise ValueError(
            "`inverse_mass_matrix` must have 1 (diagonal) or 2 (dense) dimensions; "
            f"got shape {shape}."
        )
    if any(s != dim for s in shape):
        raise ValueError(
            f"`inverse_mass_matrix` must have size {dim} along each axis; got shape {shape}."
        )


def sample_momentum(
    key: PRNGKeyArray, inverse_mass_matrix: InverseMass, position: Float[Array, " dim"]
) -> Float[Array, " dim"]:
    """Draw p ~ N(0, M) where M is the mass matrix."""
    z = jax.random.normal(key, position.shape, position.dtype)
    if inverse_mass_matrix.ndim <= 1:
        return z / jnp.sqrt(inverse_mass_matrix)
    chol = jnp.linalg.cholesky(inverse_mass_matrix)  # M^-1 = L L^T  =>  M = L^-T L^-1
    return jsl.solve_triangular(chol.T, z, lower=False)


def velocity(p: Float[Array, " dim"], inverse_mass_matrix: InverseMass) -> Float[Array, " dim"]:
    """M^-1 p."""
    if inverse_mass_matrix.ndim <= 1:
        return inverse_mass_matrix * p
    return inverse_mass_matrix @ p


def kinetic_energy(p: Float[Array, " dim"], inverse_mass_matrix: InverseMass) -> Float[Array, ""]:
    """½ pᵀ M⁻¹ p."""
    return 0.5 * jnp.dot(p, velocity(p, inverse_mass_matrix))
