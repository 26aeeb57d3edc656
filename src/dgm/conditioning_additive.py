"""Condition a generator with additive Gaussian output noise, ``y = f(z) + σ n``, exactly.

``dgm.condition_additive_noise(f, y_obs, latent_dim, sigma)`` is :func:`dgm.condition` for
the generator ``u = [z | n] ↦ f(z) + σ n`` (``u ~ N(0, I_{k+N})``), with the structure used:
the Jacobian ``[J_f | σ I]`` from k passes through ``f`` instead of k + N, the Gram matrix
through its k×k capacitance matrix when k < N
(:class:`~dgm.inference.additive_noise.WoodburyGram`), and chains started on the manifold in
closed form (``z`` a prior draw, ``n = (y − f(z)) / σ``).

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS, §4 (the MNIST and pose generators have this form).
"""

import warnings
from typing import Any

import jax
import jax.numpy as jnp

from dgm.conditioning import (
    ConditionedGenerator,
    _check_y_obs,
    check_derived,
    check_floating_output,
)
from dgm.inference.additive_noise import AdditiveNoise


def condition_additive_noise(
    f: Any,
    y_obs: Any,
    latent_dim: Any,
    sigma: Any,
    *,
    derived: Any = None,
    dims: Any = None,
    jacobian: Any = "auto",
    gram: Any = "auto",
) -> ConditionedGenerator:
    """Condition ``y = f(z) + σ n`` (z, n standard normal) on an observed ``y``.

    The returned posterior is over all inputs ``u = [z | n]`` (``latent_dim + len(y_obs)``
    of them); ``posterior.system.generator`` is ``u ↦ f(u[:k]) + σ u[k:]`` and
    ``posterior.additive_noise`` the :class:`~dgm.inference.additive_noise.AdditiveNoise`
    (closed-form inputs on the manifold, the latent log density).

    Args:
        f: JAX-differentiable ``z (latent_dim,) -> (len(y_obs),)``.
        y_obs: the observed output (a finite vector).
        latent_dim: k, the number of inputs of ``f``.
        sigma: σ > 0, the output noise scale.
        derived: named functions of ``u`` recorded with the draws.
        dims: optional axis names of derived quantities, as in :func:`dgm.condition`.
        jacobian: ``"auto"``, ``"fwd"``, ``"rev"`` (how ``J_f`` is formed by autodiff), or
            a differentiable function ``z -> J_f(z)`` of shape ``(len(y_obs), latent_dim)``
            that uses what is known about ``f`` (a closed-form Jacobian).
        gram: ``"auto"`` (Woodbury when k < N, else dense), ``"woodbury"`` or ``"dense"``.

    Raises:
        ValueError: for a bad size, σ, option, a ``y_obs`` that is not a finite vector, or
            an ``f`` whose output does not match ``y_obs``.

    Example:
        >>> import jax, jax.numpy as jnp, dgm
        >>> posterior = dgm.condition_additive_noise(
        ...     lambda z: jnp.tanh(z) @ jnp.ones((2, 5)), jnp.zeros(5), 2, 0.1)
        >>> idata = posterior.sample(jax.random.key(0), num_chains=2, num_samples=10,
        ...                          step_size=0.1, num_steps=(2, 3), progress_bar=False)
    """
    if not callable(f):
        raise ValueError(f"`f` must be callable; got {type(f).__name__}")
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
    if y.ndim != 1:
        raise ValueError(f"`y_obs` must be a vector; got shape {tuple(y.shape)}")
    noise = AdditiveNoise(f, latent_dim, int(y.shape[0]), sigma, jacobian, gram)
    _check_f(f, latent_dim, y.shape)
    if callable(jacobian):
        _check_jacobian(jacobian, latent_dim, (int(y.shape[0]), latent_dim))
    y = _check_y_obs(noise.generator, y, noise.input_dim)
    dims = check_derived(derived, dims, noise.input_dim)

    def init_fn(key, y_obs):  # any observation (`sample(..., y_obs=...)` passes its own)
        z = jax.random.normal(key, (noise.latent_dim,), jnp.float64)
        return noise.input_on_manifold(z, y_obs)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = ConditionedGenerator(
            noise.generator,
            y,
            noise.input_dim,
            derived,
            noise.jacobian,
            noise.gram_factor,
            init_fn,
            log_det_grad_fn=noise.log_det_grad,
            dims=dims,
        )
    posterior.additive_noise = noise
    return posterior


def _check_f(f, latent_dim: int, shape: tuple) -> None:
    """``f`` maps a ``(latent_dim,)`` vector to one of ``shape`` (that of ``y_obs``)."""
    with jax.enable_x64(True):
        try:
            out = jax.eval_shape(f, jax.ShapeDtypeStruct((latent_dim,), jnp.float64))
        except Exception as err:  # the user's function failed to trace
            raise ValueError(f"`f` failed on an input of shape ({latent_dim},): {err}") from err
    if getattr(out, "shape", None) != shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`f` must return a vector of shape {shape} to match `y_obs`; got {got}")
    check_floating_output("f", "z", out)


def _check_jacobian(jac_fn, latent_dim: int, shape: tuple) -> None:
    """A custom ``jacobian`` maps a ``(latent_dim,)`` vector to a ``shape`` matrix."""
    with jax.enable_x64(True):
        try:
            out = jax.eval_shape(jac_fn, jax.ShapeDtypeStruct((latent_dim,), jnp.float64))
        except Exception as err:
            raise ValueError(
                f"`jacobian` failed on an input of shape ({latent_dim},): {err}"
            ) from err
    if getattr(out, "shape", None) != shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(f"`jacobian` must return a matrix of shape {shape} (N × k); got {got}")
