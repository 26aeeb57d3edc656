"""ABC baselines on a generator ``y = G(u)``, ``u = [theta (num_params) ; noise (rest)] ~ N(0, I)``.

Four samplers of the ABC posterior with tolerance ``epsilon``, all on the same generator
that constrained HMC conditions exactly:

* rejection ABC (uniform kernel), batched inside one compiled ``lax.map`` (here);
* pseudo-marginal ABC-MCMC (PMMH): Gaussian random walk on ``theta``, fresh noise at
  every proposal;
* pseudo-marginal slice sampling ABC (Murray & Graham 2016, "APM EllSS + EllSS"):
  elliptical slice sampling of ``noise | theta`` then of ``theta | noise``;
* ABC-HMC: HMC on all of ``u`` with a Gaussian kernel (one
  :func:`dgm.inference.hmc.transition` on the ε-dependent log density).

Kernels are ``log f(y) = log 1[‖y − y_obs‖₂ < ε]`` (``"uniform"``) or
``log f(y) = −½ Σ((y − y_obs)/ε)²`` (``"gaussian"``). The three MCMC samplers live in
:mod:`dgm.inference.abc_mcmc` and are re-exported here (``abc.pmmh(...)``): each has a
params NamedTuple (``PMMHParams(epsilon, scale)``, ``SliceABCParams(epsilon)``,
``ABCHMCParams(epsilon, step_size, num_steps_min, num_steps_max)``), a
``build_*_kernel(generator_fn, y_obs, ...) -> step(key, state, params)`` and a validating
constructor returning :class:`~dgm.inference.base.Kernel` ``(init, step, params)``. Each
info reports ``num_simulations`` (evaluations of ``G``).

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
from jaxtyping import Array, ArrayLike, Bool, Float, PRNGKeyArray

from dgm.config import check_positive
from dgm.inference._abc_common import KERNELS, check_inputs, check_position, log_abc_kernel
from dgm.inference.abc_mcmc import (
    ABCHMCInfo,
    ABCHMCParams,
    PMMHInfo,
    PMMHParams,
    SliceABCInfo,
    SliceABCParams,
    SplitABCState,
    abc_hmc,
    abc_hmc_init,
    abc_hmc_log_density,
    build_abc_hmc_kernel,
    build_pmmh_kernel,
    build_slice_abc_kernel,
    pmmh,
    slice_abc,
    split_abc_init,
)
from dgm.inference.elliptical_slice import elliptical_slice

__all__ = [
    "KERNELS",
    "ABCHMCInfo",
    "ABCHMCParams",
    "PMMHInfo",
    "PMMHParams",
    "RejectionBatch",
    "RejectionResult",
    "SliceABCInfo",
    "SliceABCParams",
    "SplitABCState",
    "abc_hmc",
    "abc_hmc_init",
    "abc_hmc_log_density",
    "build_abc_hmc_kernel",
    "build_pmmh_kernel",
    "build_slice_abc_kernel",
    "check_inputs",
    "check_position",
    "elliptical_slice",
    "log_abc_kernel",
    "pmmh",
    "rejection_abc",
    "rejection_sample",
    "slice_abc",
    "split_abc_init",
]


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
        check_positive(name, val, integer=True)
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
