"""What every ABC sampler shares: the ABC kernels ``log f(y)`` and input validation."""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Float

from dgm.config import check_choice, check_positive, check_positive_scalar

KERNELS = ("uniform", "gaussian")


def log_abc_kernel(
    y: Float[Array, " obs"], y_obs: Float[Array, " obs"], epsilon, kernel: str
) -> Float[Array, ""]:
    """``log f(y)``: 0 / −inf inside / outside the ε-ball (uniform) or −½‖(y − y_obs)/ε‖²."""
    diff = y - y_obs
    if kernel == "uniform":
        inside = jnp.sum(diff**2) < epsilon**2
        return jnp.where(inside, jnp.zeros((), y.dtype), -jnp.inf)
    if kernel == "gaussian":
        return -0.5 * jnp.sum((diff / epsilon) ** 2)
    raise ValueError(f"`kernel` must be one of {KERNELS}; got {kernel!r}")


def check_inputs(
    generator_fn: Callable,
    y_obs: ArrayLike,
    input_dim: int,
    num_params: int | None,
    epsilon: ArrayLike,
    kernel: str = "gaussian",
) -> Array:
    """Validate the common ABC arguments; return ``y_obs`` as a float array.

    Raises:
        ValueError: naming the argument, what was expected and what arrived.
    """
    check_positive("input_dim", input_dim, integer=True)
    if num_params is not None and (
        not isinstance(num_params, int) or not 1 <= num_params < input_dim
    ):
        raise ValueError(
            f"`num_params` must be an int in [1, input_dim - 1] = [1, {input_dim - 1}]; "
            f"got {num_params!r}"
        )
    check_choice("kernel", kernel, KERNELS)
    check_positive_scalar("epsilon", epsilon)
    y_obs = jnp.asarray(y_obs)
    if not jnp.issubdtype(y_obs.dtype, jnp.floating):
        y_obs = y_obs.astype(jnp.result_type(float))
    if y_obs.ndim != 1:
        raise ValueError(f"`y_obs` must be a vector; got shape {y_obs.shape}")
    spec = jax.ShapeDtypeStruct((input_dim,), y_obs.dtype)
    out = jax.eval_shape(generator_fn, spec)
    if not hasattr(out, "shape") or out.shape != y_obs.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`y_obs` must match the generator's output shape: `generator_fn` maps an input "
            f"of shape ({input_dim},) to {got}, but `y_obs` has shape {y_obs.shape}"
        )
    return y_obs


def check_position(position: ArrayLike, input_dim: int) -> Array:
    """``position`` as an array of shape ``(input_dim,)``; ``ValueError`` otherwise."""
    position = jnp.asarray(position)
    if position.shape != (input_dim,):
        raise ValueError(
            f"`position` must be the full input u of shape ({input_dim},); "
            f"got shape {position.shape}"
        )
    return position
