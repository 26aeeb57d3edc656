"""Shared type aliases."""

from collections.abc import Callable
from typing import Any

from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray, PyTree

LogDensityFn = Callable[[Any], Float[Array, ""]]
GeneratorFn = Callable[[Float[Array, " dim"]], Float[Array, " obs"]]

__all__ = ["Array", "ArrayLike", "Float", "GeneratorFn", "LogDensityFn", "PRNGKeyArray", "PyTree"]
