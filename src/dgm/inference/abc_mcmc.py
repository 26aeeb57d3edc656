"""The ABC MCMC samplers: PMMH, pseudo-marginal slice sampling, ABC-HMC (see :mod:`.abc`).

Each follows the sampler convention of :mod:`dgm.inference.base`: a params NamedTuple of
tunables (:class:`PMMHParams`, :class:`SliceABCParams`, :class:`ABCHMCParams`; ε among
them, so settings that differ only in ε share one compiled runner), a
``build_*_kernel(generator_fn, y_obs, ...) -> step(key, state, params)`` with the
structural choices bound, and a validating constructor returning
``Kernel(init, step, params)``. PMMH and ABC-HMC accept through
:func:`dgm.inference.base.metropolis`.
"""

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jaxtyping import Array, ArrayLike, Bool, Float, Int

from dgm.config import check_positive, check_positive_scalar
from dgm.inference import hmc
from dgm.inference._abc_common import check_inputs, check_position, log_abc_kernel
from dgm.inference.base import Kernel, metropolis
from dgm.inference.elliptical_slice import elliptical_slice

# ------------------------------------------------------------ pseudo-marginal state


class SplitABCState(NamedTuple):
    """State of the pseudo-marginal samplers (PMMH and slice-sampling ABC): the input u
    split into parameters and the noise behind the current kernel estimate."""

    params: Float[Array, " num_params"]
    noise: Float[Array, " noise"]
    log_kernel: Float[Array, ""]  # log f(G([params; noise]))

    @property
    def position(self) -> Float[Array, "*batch dim"]:
        return jnp.concatenate([self.params, self.noise], axis=-1)


def split_abc_init(
    position: Float[Array, " dim"],
    generator_fn: Callable,
    y_obs,
    epsilon,
    num_params: int,
    kernel: str,
) -> SplitABCState:
    """Pseudo-marginal state at ``u = position`` (its noise gives the kernel estimate)."""
    log_k = log_abc_kernel(generator_fn(position), y_obs, epsilon, kernel)
    return SplitABCState(position[:num_params], position[num_params:], log_k)


def _split_init_fn(generator_fn, y_obs, epsilon, input_dim, num_params, kernel) -> Callable:
    def init_fn(position):
        position = check_position(position, input_dim)
        return split_abc_init(position, generator_fn, y_obs, epsilon, num_params, kernel)

    return init_fn


# ------------------------------------------------------------------------------ PMMH


class PMMHParams(NamedTuple):
    epsilon: Float[ArrayLike, ""]  # kernel tolerance
    scale: Float[ArrayLike, ""]  # random-walk scale on theta


class PMMHInfo(NamedTuple):
    accept_prob: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    num_simulations: Int[Array, ""]


def build_pmmh_kernel(generator_fn: Callable, y_obs: Float[Array, " obs"], kernel: str) -> Callable:
    """Pseudo-marginal ABC-MCMC (Marjoram et al. 2003; Andrieu & Roberts 2009).

    Returns:
        ``step(key, state, params: PMMHParams) -> (SplitABCState, PMMHInfo)``: propose
        ``theta' = theta + scale * N(0, I)`` with fresh ``noise' ~ N(0, I)``; accept with
        probability ``min(1, f(y') N(theta') / (f(y) N(theta)))``. One simulation per step.
    """

    def step(key, state: SplitABCState, params: PMMHParams):
        key_walk, key_noise, key_accept = jax.random.split(key, 3)
        theta = state.params + params.scale * jax.random.normal(
            key_walk, state.params.shape, state.params.dtype
        )
        noise = jax.random.normal(key_noise, state.noise.shape, state.noise.dtype)
        y = generator_fn(jnp.concatenate([theta, noise]))
        log_k = log_abc_kernel(y, y_obs, params.epsilon, kernel)
        new_target = log_k - 0.5 * jnp.sum(theta**2)
        old_target = state.log_kernel - 0.5 * jnp.sum(state.params**2)
        # −inf − (−inf) = NaN: metropolis rejects it, as it rejects any −inf proposal.
        proposal = SplitABCState(theta, noise, log_k)
        new, accept_prob, is_accepted = metropolis(
            key_accept, new_target - old_target, proposal, state
        )
        return new, PMMHInfo(accept_prob, is_accepted, jnp.asarray(1, jnp.int32))

    return step


def pmmh(
    generator_fn: Callable,
    y_obs: ArrayLike,
    epsilon: ArrayLike,
    scale: ArrayLike,
    *,
    input_dim: int,
    num_params: int,
    kernel: str = "uniform",
) -> Kernel:
    """PMMH ABC: ``Kernel(init(u), step(key, state, params), PMMHParams(epsilon, scale))``.

    Args:
        generator_fn: ``G(u)`` for one input vector of size ``input_dim``.
        y_obs: observed output (same shape as ``G(u)``).
        epsilon: kernel tolerance (> 0).
        scale: random-walk scale ``s`` on ``theta`` (> 0).
        input_dim, num_params: size of ``u`` and of its leading ``theta`` block.
        kernel: ``"uniform"`` or ``"gaussian"``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> g = lambda u: u[:2] + 0.1 * u[2:]
        >>> k = pmmh(g, jnp.ones(2), 0.5, 0.3, input_dim=4, num_params=2, kernel="gaussian")
        >>> state, info = k.step(jax.random.key(0), k.init(jnp.zeros(4)), k.params)
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, num_params, epsilon, kernel)
    check_positive_scalar("scale", scale)
    init_fn = _split_init_fn(generator_fn, y_obs, epsilon, input_dim, num_params, kernel)
    step = build_pmmh_kernel(generator_fn, y_obs, kernel)
    return Kernel(init_fn, step, PMMHParams(jnp.asarray(epsilon), jnp.asarray(scale)))


# -------------------------------------------------------------- slice sampling ABC


class SliceABCParams(NamedTuple):
    epsilon: Float[ArrayLike, ""]  # kernel tolerance


class SliceABCInfo(NamedTuple):
    noise_moved: Bool[Array, ""]
    params_moved: Bool[Array, ""]
    noise_failed: Bool[Array, ""]  # hit max_slice_iters: state kept
    params_failed: Bool[Array, ""]
    num_simulations: Int[Array, ""]  # G evaluations in both updates


def build_slice_abc_kernel(
    generator_fn: Callable,
    y_obs: Float[Array, " obs"],
    kernel: str,
    max_slice_iters: int = 100,
) -> Callable:
    """Pseudo-marginal slice sampling ABC: elliptical slice on noise | theta, then theta | noise.

    Each block's N(0, I) prior is the ellipse prior and ``f(G(u))`` is the likelihood
    factor. An update that hits ``max_slice_iters`` keeps its block and is flagged.

    Returns:
        ``step(key, state, params: SliceABCParams) -> (SplitABCState, SliceABCInfo)``.

    References:
        Murray & Graham (2016), "Pseudo-marginal slice sampling", AISTATS
        (``APMEllSSPlusEllSSSampler``).
    """

    def step(key, state: SplitABCState, params: SliceABCParams):
        key_noise, key_params = jax.random.split(key)

        def ll_noise(noise):
            u = jnp.concatenate([state.params, noise])
            return log_abc_kernel(generator_fn(u), y_obs, params.epsilon, kernel)

        noise, log_k, noise_moved, n1 = elliptical_slice(
            key_noise, state.noise, state.log_kernel, ll_noise, max_slice_iters
        )

        def ll_params(theta):
            u = jnp.concatenate([theta, noise])
            return log_abc_kernel(generator_fn(u), y_obs, params.epsilon, kernel)

        theta, log_k, params_moved, n2 = elliptical_slice(
            key_params, state.params, log_k, ll_params, max_slice_iters
        )
        info = SliceABCInfo(noise_moved, params_moved, ~noise_moved, ~params_moved, n1 + n2)
        return SplitABCState(theta, noise, log_k), info

    return step


def slice_abc(
    generator_fn: Callable,
    y_obs: ArrayLike,
    epsilon: ArrayLike,
    *,
    input_dim: int,
    num_params: int,
    kernel: str = "uniform",
    max_slice_iters: int = 100,
) -> Kernel:
    """Slice-sampling ABC: ``Kernel(init(u), step(key, state, params), SliceABCParams)``.

    Args:
        generator_fn: ``G(u)`` for one input vector of size ``input_dim``.
        y_obs: observed output (same shape as ``G(u)``).
        epsilon: kernel tolerance (> 0).
        input_dim, num_params: size of ``u`` and of its leading ``theta`` block.
        kernel: ``"uniform"`` or ``"gaussian"``.
        max_slice_iters: proposals per elliptical slice update before giving up.

    With the uniform kernel start inside the ε-ball (``state.log_kernel == 0``). From
    outside, the slice level is −inf, so the first proposal inside the ball is accepted:
    the chain enters the ball (and stays), but its first draws are not from the target.
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, num_params, epsilon, kernel)
    check_positive("max_slice_iters", max_slice_iters, integer=True)
    init_fn = _split_init_fn(generator_fn, y_obs, epsilon, input_dim, num_params, kernel)
    step = build_slice_abc_kernel(generator_fn, y_obs, kernel, max_slice_iters)
    return Kernel(init_fn, step, SliceABCParams(jnp.asarray(epsilon)))


# --------------------------------------------------------------------------- ABC-HMC


class ABCHMCParams(NamedTuple):
    """Tunables of ABC-HMC; the step-count range as in :class:`~dgm.inference.hmc.HMCParams`
    (equal Python ints: a fixed, compile-time count)."""

    epsilon: Float[ArrayLike, ""]  # Gaussian-kernel tolerance
    step_size: Float[ArrayLike, ""]
    num_steps_min: Int[ArrayLike, ""]
    num_steps_max: Int[ArrayLike, ""]


class ABCHMCInfo(NamedTuple):
    accept_prob: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    is_divergent: Bool[Array, ""]
    energy_error: Float[Array, ""]
    energy: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_simulations: Int[Array, ""]  # one G (+ its VJP) per leapfrog step


def abc_hmc_log_density(generator_fn: Callable, y_obs, epsilon) -> Callable:
    """``log π(u) = −½‖y_obs − G(u)‖²/ε² − ½‖u‖²`` (Gaussian kernel in input space)."""

    def log_density(u):
        return log_abc_kernel(generator_fn(u), y_obs, epsilon, "gaussian") - 0.5 * jnp.sum(u**2)

    return log_density


def abc_hmc_init(
    position: Float[Array, " dim"], generator_fn: Callable, y_obs, epsilon
) -> hmc.HMCState:
    """ABC-HMC state at ``u = position`` (log density and gradient cached)."""
    return hmc.init(position, abc_hmc_log_density(generator_fn, y_obs, epsilon))


def build_abc_hmc_kernel(
    generator_fn: Callable, y_obs: Float[Array, " obs"], divergence_threshold: float = 1000.0
) -> Callable:
    """ABC-HMC: isotropic HMC on all of ``u``, leapfrog, ``L ~ U{num_min..num_max}``.

    Returns:
        ``step(key, state, params: ABCHMCParams) -> (HMCState, ABCHMCInfo)``: one
        :func:`dgm.inference.hmc.transition` on the ε-dependent log density.
    """

    def step(key, state: hmc.HMCState, params: ABCHMCParams):
        log_density = abc_hmc_log_density(generator_fn, y_obs, params.epsilon)
        hmc_params = hmc.HMCParams(
            params.step_size,
            jnp.ones_like(state.position),
            params.num_steps_min,
            params.num_steps_max,
        )
        new, info = hmc.transition(key, state, hmc_params, log_density, divergence_threshold)
        return new, ABCHMCInfo(*info, num_simulations=info.num_steps)

    return step


def abc_hmc(
    generator_fn: Callable,
    y_obs: ArrayLike,
    epsilon: ArrayLike,
    step_size: ArrayLike,
    *,
    input_dim: int,
    num_steps: int | tuple[int, int] = (10, 20),
) -> Kernel:
    """ABC-HMC: ``Kernel(init(u), step(key, state, params), ABCHMCParams)``.

    Args:
        generator_fn: ``G(u)`` for one input vector of size ``input_dim``.
        y_obs: observed output (same shape as ``G(u)``).
        epsilon: Gaussian-kernel tolerance (> 0).
        step_size: leapfrog step size (> 0); identity metric.
        num_steps: fixed count or inclusive ``(low, high)`` range (spec: ``(10, 20)``).
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, None, epsilon)
    check_positive_scalar("step_size", step_size)
    lo, hi = hmc.check_steps(num_steps)

    def init_fn(position):
        position = check_position(position, input_dim)
        return abc_hmc_init(position, generator_fn, y_obs, epsilon)

    params = ABCHMCParams(jnp.asarray(epsilon), jnp.asarray(step_size), lo, hi)
    return Kernel(init_fn, build_abc_hmc_kernel(generator_fn, y_obs), params)
