"""Shared type aliases, and the check of a PRNG key argument."""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

LogDensityFn = Callable[[Any], Float[Array, ""]]
GeneratorFn = Callable[[Float[Array, " dim"]], Float[Array, " obs"]]


def check_key(key: Any, name: str = "key", *, stack_for: str | None = None) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``key`` is one PRNG key: a typed
    ``jax.random.key(seed)`` or a raw ``jax.random.PRNGKey(seed)`` (NumPyro's examples).
    With ``stack_for`` (what the stack is for, for the message) a 1-d stack of keys passes
    too."""
    extra = 1 if stack_for else 0  # the stack's axis
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape[-1:] == (2,)
    if not ((typed and key.ndim <= extra) or (raw and key.ndim <= 1 + extra)):
        also = f", or {stack_for}" if stack_for else ""
        raise ValueError(
            f"`{name}` must be one PRNG key (jax.random.key(seed) or PRNGKey(seed)){also}; "
            f"got {key!r}"
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
