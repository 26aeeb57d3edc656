"""ABC baselines on a generator ``y = G(u)``, ``u = [theta (num_params) ; noise (rest)] ~ N(0, I)``.

Four samplers of the ABC posterior with tolerance ``epsilon``, all on the same generator
that constrained HMC conditions exactly:

* rejection ABC (uniform kernel), batched inside one compiled ``lax.map``;
* pseudo-marginal ABC-MCMC (PMMH): Gaussian random walk on ``theta``, fresh noise at
  every proposal;
* pseudo-marginal slice sampling ABC (Murray & Graham 2016, "APM EllSS + EllSS"):
  elliptical slice sampling of ``noise | theta`` then of ``theta | noise``;
* ABC-HMC: HMC on all of ``u`` with a Gaussian kernel (a thin wrapper on
  :mod:`dgm.inference.hmc`).

Kernels are ``log f(y) = log 1[‖y − y_obs‖₂ < ε]`` (``"uniform"``) or
``log f(y) = −½ Σ((y − y_obs)/ε)²`` (``"gaussian"``). Every transition is a pure
``step(key, state, ...) -> (state, info)`` with NamedTuple state and info; each info
reports ``num_simulations`` (evaluations of ``G``). The convenience constructors
(:func:`pmmh`, :func:`slice_abc`, :func:`abc_hmc`) validate raw input and return a
:class:`~dgm.inference.base.Kernel` with ``init(u)`` and ``step(key, state)``.

References:
    Pritchard et al. (1999); Marjoram et al. (2003), "Markov chain Monte Carlo without
    likelihoods"; Andrieu & Roberts (2009), pseudo-marginal MCMC; Murray, Adams & MacKay
    (2010), elliptical slice sampling; Murray & Graham (2016), "Pseudo-marginal slice
    sampling"; Graham & Storkey (2017), AISTATS, §5 baselines.
"""

import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Bool, Float, Int, PRNGKeyArray

from dgm.inference.base import Kernel
from dgm.inference.elliptical_slice import elliptical_slice
from dgm.inference.hmc import HMCState, _check_steps
from dgm.inference.hmc import build_kernel as build_hmc_kernel
from dgm.inference.hmc import init as hmc_init

KERNELS = ("uniform", "gaussian")


# --------------------------------------------------------------------------- kernels


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


def _log_ratio(new: Float[Array, ""], old: Float[Array, ""]) -> Float[Array, ""]:
    """``new − old``, with −inf for an impossible proposal (so −inf − (−inf) never gives NaN)."""
    return jnp.where(jnp.isfinite(new), new - old, -jnp.inf)


# ------------------------------------------------------------------------ validation


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
    if not isinstance(input_dim, int | np.integer) or input_dim < 1:
        raise ValueError(f"`input_dim` must be a positive int; got {input_dim!r}")
    if num_params is not None and (
        not isinstance(num_params, int | np.integer) or not 1 <= num_params < input_dim
    ):
        raise ValueError(
            f"`num_params` must be an int in [1, input_dim - 1] = [1, {input_dim - 1}]; "
            f"got {num_params!r}"
        )
    if kernel not in KERNELS:
        raise ValueError(f"`kernel` must be one of {KERNELS}; got {kernel!r}")
    _check_positive("epsilon", epsilon)
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


def _check_positive(name: str, value) -> None:
    arr = np.asarray(value)
    if arr.ndim != 0 or not np.isfinite(arr) or not arr > 0:
        raise ValueError(f"`{name}` must be a positive finite scalar; got {value!r}")


def _check_count(name: str, value) -> None:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < 1:
        raise ValueError(f"`{name}` must be a positive int; got {value!r}")


def _check_position(position, input_dim: int) -> Array:
    position = jnp.asarray(position)
    if position.shape != (input_dim,):
        raise ValueError(
            f"`position` must be the full input u of shape ({input_dim},); "
            f"got shape {position.shape}"
        )
    return position


# ------------------------------------------------------------------------- rejection


class RejectionBatch(NamedTuple):
    """Every simulation of a rejection run (batches first)."""

    params: Float[Array, "batches batch num_params"]
    distance: Float[Array, "batches batch"]
    is_accepted: Bool[Array, "batches batch"]


class RejectionResult(NamedTuple):
    """What :func:`rejection_abc` returns (NumPy)."""

    params: np.ndarray  # (num_accepted, num_params)
    num_accepted: int
    num_simulations: int
    accept_rate: float
    wall_s: float = 0.0  # simulation time, compilation excluded
    compile_s: float = 0.0


def rejection_sample(
    key: PRNGKeyArray,
    generator_fn: Callable,
    y_obs: Float[Array, " obs"],
    epsilon,
    input_dim: int,
    num_params: int,
    num_batches: int,
    batch_size: int,
) -> RejectionBatch:
    """Simulate ``num_batches * batch_size`` prior draws (``lax.map`` over batches; jittable).

    A draw is accepted when ``‖G(u) − y_obs‖₂ < epsilon``.
    """

    def one_batch(batch_key):
        u = jax.random.normal(batch_key, (batch_size, input_dim), y_obs.dtype)
        y = jax.vmap(generator_fn)(u)
        distance = jnp.sqrt(jnp.sum((y - y_obs[None, :]) ** 2, axis=-1))
        return RejectionBatch(u[:, :num_params], distance, distance < epsilon)

    return jax.lax.map(one_batch, jax.random.split(key, num_batches))


_rejection_jit = jax.jit(rejection_sample, static_argnums=(1, 4, 5, 6, 7))


def rejection_abc(
    key: PRNGKeyArray,
    generator_fn: Callable,
    y_obs: ArrayLike,
    epsilon: ArrayLike,
    *,
    input_dim: int,
    num_params: int,
    num_simulations: int,
    batch_size: int = 10_000,
    batches_per_call: int = 100,
) -> RejectionResult:
    """Rejection ABC with the uniform kernel: keep prior draws within ε of ``y_obs``.

    The work is split into equal compiled calls (one compilation) of at most
    ``batches_per_call`` batches each, call ``i`` keyed by ``fold_in(key, i)``, so at most
    ``batches_per_call * batch_size`` draws are held at once. ``num_simulations`` is
    rounded up to fill the calls; the number actually used is returned.

    Returns:
        accepted ``params`` (num_accepted, num_params), ``num_accepted``,
        ``num_simulations`` (actually used), ``accept_rate``, and ``wall_s`` (simulation
        time) and ``compile_s`` (the one ahead-of-time compilation), measured apart.
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, num_params, epsilon, "uniform")
    for name, val in (
        ("num_simulations", num_simulations),
        ("batch_size", batch_size),
        ("batches_per_call", batches_per_call),
    ):
        _check_count(name, val)
    batch_size = min(batch_size, num_simulations)
    num_batches = -(-num_simulations // batch_size)
    num_calls = -(-num_batches // batches_per_call)
    n = -(-num_batches // num_calls)  # batches per call, equal for every call
    t0 = time.perf_counter()
    lowered = _rejection_jit.lower(
        key, generator_fn, y_obs, epsilon, input_dim, num_params, n, batch_size
    )
    compiled = lowered.compile()  # static arguments are bound; calls take the rest
    compile_s = time.perf_counter() - t0
    kept = []
    t0 = time.perf_counter()
    for call in range(num_calls):
        out = compiled(jax.random.fold_in(key, call), y_obs, epsilon)
        mask = np.asarray(out.is_accepted).reshape(-1)
        kept.append(np.asarray(out.params).reshape(-1, num_params)[mask])
    wall_s = time.perf_counter() - t0
    params = np.concatenate(kept, axis=0)
    total = num_calls * n * batch_size
    return RejectionResult(params, len(params), total, len(params) / total, wall_s, compile_s)


# ------------------------------------------------------------------------------ PMMH


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


class PMMHInfo(NamedTuple):
    accept_prob: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    num_simulations: Int[Array, ""]


def build_pmmh_kernel(generator_fn: Callable, num_params: int, kernel: str) -> Callable:
    """Pseudo-marginal ABC-MCMC (Marjoram et al. 2003; Andrieu & Roberts 2009).

    Returns:
        ``step(key, state, y_obs, epsilon, scale) -> (SplitABCState, PMMHInfo)``: propose
        ``theta' = theta + scale * N(0, I)`` with fresh ``noise' ~ N(0, I)``; accept with
        probability ``min(1, f(y') N(theta') / (f(y) N(theta)))``. One simulation per step.
    """

    def step(key, state, y_obs, epsilon, scale):
        key_walk, key_noise, key_accept = jax.random.split(key, 3)
        params = state.params + scale * jax.random.normal(
            key_walk, state.params.shape, state.params.dtype
        )
        noise = jax.random.normal(key_noise, state.noise.shape, state.noise.dtype)
        log_k = log_abc_kernel(
            generator_fn(jnp.concatenate([params, noise])), y_obs, epsilon, kernel
        )
        new_target = log_k - 0.5 * jnp.sum(params**2)
        old_target = state.log_kernel - 0.5 * jnp.sum(state.params**2)
        log_accept = jnp.minimum(0.0, _log_ratio(new_target, old_target))
        is_accepted = jnp.log(jax.random.uniform(key_accept, dtype=log_k.dtype)) < log_accept
        proposal = SplitABCState(params, noise, log_k)
        new = jax.tree.map(lambda a, b: jnp.where(is_accepted, a, b), proposal, state)
        return new, PMMHInfo(jnp.exp(log_accept), is_accepted, jnp.asarray(1, jnp.int32))

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
    """PMMH ABC with bound settings: ``Kernel(init(u), step(key, state))``.

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
        >>> state, info = k.step(jax.random.key(0), k.init(jnp.zeros(4)))
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, num_params, epsilon, kernel)
    _check_positive("scale", scale)
    raw = build_pmmh_kernel(generator_fn, num_params, kernel)

    def init_fn(position):
        position = _check_position(position, input_dim)
        return split_abc_init(position, generator_fn, y_obs, epsilon, num_params, kernel)

    return Kernel(init_fn, lambda key, state: raw(key, state, y_obs, epsilon, scale))


# -------------------------------------------------------------- slice sampling ABC


class SliceABCInfo(NamedTuple):
    noise_moved: Bool[Array, ""]
    params_moved: Bool[Array, ""]
    noise_failed: Bool[Array, ""]  # hit max_slice_iters: state kept
    params_failed: Bool[Array, ""]
    num_simulations: Int[Array, ""]  # G evaluations in both updates


def build_slice_abc_kernel(
    generator_fn: Callable, num_params: int, kernel: str, max_slice_iters: int = 100
) -> Callable:
    """Pseudo-marginal slice sampling ABC: elliptical slice on noise | theta, then theta | noise.

    Each block's N(0, I) prior is the ellipse prior and ``f(G(u))`` is the likelihood
    factor. An update that hits ``max_slice_iters`` keeps its block and is flagged.

    Returns:
        ``step(key, state, y_obs, epsilon) -> (SplitABCState, SliceABCInfo)``.

    References:
        Murray & Graham (2016), "Pseudo-marginal slice sampling", AISTATS
        (``APMEllSSPlusEllSSSampler``).
    """

    def step(key, state, y_obs, epsilon):
        key_noise, key_params = jax.random.split(key)

        def ll_noise(noise):
            u = jnp.concatenate([state.params, noise])
            return log_abc_kernel(generator_fn(u), y_obs, epsilon, kernel)

        noise, log_k, noise_moved, n1 = elliptical_slice(
            key_noise, state.noise, state.log_kernel, ll_noise, max_slice_iters
        )

        def ll_params(params):
            u = jnp.concatenate([params, noise])
            return log_abc_kernel(generator_fn(u), y_obs, epsilon, kernel)

        params, log_k, params_moved, n2 = elliptical_slice(
            key_params, state.params, log_k, ll_params, max_slice_iters
        )
        info = SliceABCInfo(noise_moved, params_moved, ~noise_moved, ~params_moved, n1 + n2)
        return SplitABCState(params, noise, log_k), info

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
    """Slice-sampling ABC with bound settings: ``Kernel(init(u), step(key, state))``.

    Args:
        generator_fn: ``G(u)`` for one input vector of size ``input_dim``.
        y_obs: observed output (same shape as ``G(u)``).
        epsilon: kernel tolerance (> 0).
        input_dim, num_params: size of ``u`` and of its leading ``theta`` block.
        kernel: ``"uniform"`` or ``"gaussian"``.
        max_slice_iters: proposals per elliptical slice update before giving up.

    With the uniform kernel start inside the ε-ball (``state.log_kernel == 0``); from
    outside, every update fails and the state stays put.
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, num_params, epsilon, kernel)
    _check_count("max_slice_iters", max_slice_iters)
    raw = build_slice_abc_kernel(generator_fn, num_params, kernel, max_slice_iters)

    def init_fn(position):
        position = _check_position(position, input_dim)
        return split_abc_init(position, generator_fn, y_obs, epsilon, num_params, kernel)

    return Kernel(init_fn, lambda key, state: raw(key, state, y_obs, epsilon))


# --------------------------------------------------------------------------- ABC-HMC


class ABCHMCInfo(NamedTuple):
    accept_prob: Float[Array, ""]
    is_accepted: Bool[Array, ""]
    is_divergent: Bool[Array, ""]
    energy_error: Float[Array, ""]
    num_steps: Int[Array, ""]
    num_simulations: Int[Array, ""]  # one G (+ its VJP) per leapfrog step


def abc_hmc_log_density(generator_fn: Callable, y_obs, epsilon) -> Callable:
    """``log π(u) = −½‖y_obs − G(u)‖²/ε² − ½‖u‖²`` (Gaussian kernel in input space)."""

    def log_density(u):
        return log_abc_kernel(generator_fn(u), y_obs, epsilon, "gaussian") - 0.5 * jnp.sum(u**2)

    return log_density


def abc_hmc_init(
    position: Float[Array, " dim"], generator_fn: Callable, y_obs, epsilon
) -> HMCState:
    """ABC-HMC state at ``u = position`` (log density and gradient cached)."""
    return hmc_init(position, abc_hmc_log_density(generator_fn, y_obs, epsilon))


def build_abc_hmc_kernel(generator_fn: Callable, divergence_threshold: float = 1000.0) -> Callable:
    """ABC-HMC: isotropic HMC on all of ``u``, leapfrog, ``L ~ U{num_min..num_max}``.

    Returns:
        ``step(key, state, y_obs, epsilon, step_size, num_min, num_max)
        -> (HMCState, ABCHMCInfo)``.
    """
    raw = build_hmc_kernel(divergence_threshold)

    def step(key, state, y_obs, epsilon, step_size, num_min, num_max):
        log_density = abc_hmc_log_density(generator_fn, y_obs, epsilon)
        imm = jnp.ones_like(state.position)
        step_size = jnp.asarray(step_size, state.position.dtype)
        new, info = raw(key, state, log_density, step_size, imm, num_min, num_max)
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
    """ABC-HMC with bound settings: ``Kernel(init(u), step(key, state))``.

    Args:
        generator_fn: ``G(u)`` for one input vector of size ``input_dim``.
        y_obs: observed output (same shape as ``G(u)``).
        epsilon: Gaussian-kernel tolerance (> 0).
        step_size: leapfrog step size (> 0); identity metric.
        num_steps: fixed count or inclusive ``(low, high)`` range (spec: ``(10, 20)``).
    """
    y_obs = check_inputs(generator_fn, y_obs, input_dim, None, epsilon)
    _check_positive("step_size", step_size)
    lo, hi = _check_steps(num_steps)
    raw = build_abc_hmc_kernel(generator_fn)

    def init_fn(position):
        position = _check_position(position, input_dim)
        return abc_hmc_init(position, generator_fn, y_obs, epsilon)

    return Kernel(init_fn, lambda key, state: raw(key, state, y_obs, epsilon, step_size, lo, hi))
