"""Shared type aliases, and the check of a PRNG key argument."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

LogDensityFn = Callable[[Any], Float[Array, ""]]
GeneratorFn = Callable[[Float[Array, " dim"]], Float[Array, " obs"]]


def check_key(key: Any, name: str = "key") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``key`` is one PRNG key: a typed
    ``jax.random.key(seed)`` or a raw ``jax.random.PRNGKey(seed)`` (NumPyro's examples)."""
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not ((typed and key.ndim == 0) or raw):
        raise ValueError(
            f"`{name}` must be one PRNG key (jax.random.key(seed) or PRNGKey(seed)); got {key!r}"
        )


__all__ = [
    "Array",
    "ArrayLike",
    "Float",
    "GeneratorFn",
    "LogDensityFn",
    "PRNGKeyArray",
    "PyTree",
    "check_key",
]
