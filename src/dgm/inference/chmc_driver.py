"""The machinery behind :meth:`dgm.conditioning.ConditionedGenerator.sample`.

Structural settings (:class:`SamplerSettings`), the chain runners for a conditioned
generator (:func:`build_runner`: fixed or dynamic trajectories, with or without step-size
adaptation), the warm-up run (:func:`run_adaptive`), the checks of ``sample``'s arguments
(:func:`check_sample_args`) and the ArviZ conversion (:func:`to_inference_data`).

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS; Hoffman & Gelman (2014) for the step-size adaptation.
"""

import collections
import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float

from dgm._types import check_key
from dgm.config import check_choice, check_positive, is_int, is_real
from dgm.inference import adaptive_step, constrained_hmc, dynamic_chmc
from dgm.inference.base import ChainRunner
from dgm.inference.manifold import SMALL_GRAM, DenseCholesky, ManifoldSystem, gauss_newton
from dgm.inference.starts import TypicalStarts


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Structural settings of the constrained sampler (changing one recompiles)."""

    num_geodesic_steps: int = 3
    tol: float = 1e-8
    max_iters: int = 100
    check_reverse: bool = True
    chunk_size: int = 50
    chain_map: str = "map"
    trajectory: str = "fixed"


class ObservedParams(NamedTuple):
    """A chain's observation and its kernel params (both traced: a new observation of the
    same shape reuses the compiled sampler)."""

    y_obs: Float[Array, " obs"]
    params: Any


_RUNNERS: collections.OrderedDict = collections.OrderedDict()
MAX_CACHED_RUNNERS = 32


def build_runner(
    system: ManifoldSystem, settings: SamplerSettings, kind: str = "fixed", cache_key=None
) -> ChainRunner:
    """A runner of constrained HMC on ``system.generator(u) = y``, ``y`` a traced param.

    Its step takes :class:`ObservedParams` (one per chain: run it with
    ``per_chain_params=True``). With a ``cache_key`` (hashable: the generator function and
    whatever else defines ``system``), runners are shared through a module-level cache of
    the :data:`MAX_CACHED_RUNNERS` most recent, so conditioning the same generator again
    (on any observation) reuses the compiled chunks.

    Args:
        kind: ``"fixed"`` (the given step size), ``"adaptive"`` (dual averaging during
            warm-up, :mod:`~dgm.inference.adaptive_step`) or ``"search"`` (the initial
            step-size search, one iteration).
    """
    key = None if cache_key is None else (cache_key, settings, kind)
    if key is not None and key in _RUNNERS:
        _RUNNERS.move_to_end(key)
        return _RUNNERS[key]
    build = {"fixed": constrained_hmc, "dynamic": dynamic_chmc}[settings.trajectory]
    wrap = {"fixed": lambda step: step, "adaptive": adaptive_step.adaptive_kernel}
    wrap["search"] = adaptive_step.search_kernel
    structural = (
        settings.num_geodesic_steps, settings.tol, settings.max_iters, settings.check_reverse
    )  # fmt: skip

    def step(key, state, params: ObservedParams):
        kernel = wrap[kind](build.build_kernel(system.at(params.y_obs), params.y_obs, *structural))
        return kernel(key, state, params.params)

    def extract(state):  # the draw and its log density (ArviZ's `lp`)
        state = state if kind == "fixed" else state.state
        return state.position, -state.potential

    chunk_size = 1 if kind == "search" else settings.chunk_size
    runner = ChainRunner(step, extract, chunk_size=chunk_size, chain_map=settings.chain_map)
    if key is not None:
        _RUNNERS[key] = runner
        while len(_RUNNERS) > MAX_CACHED_RUNNERS:
            _RUNNERS.popitem(last=False)
    return runner


class Helpers(NamedTuple):
    """Compiled functions of a conditioned generator besides the chain runs (batched over
    chains): initial states ``(u, y)``, residuals ``max |G(u) − y|``, Jacobian ranks, Gauss–Newton,
    and the typical-set starts."""

    init_states: Callable
    residuals: Callable
    ranks: Callable
    newton: Callable
    typical_starts: TypicalStarts


_HELPERS: collections.OrderedDict = collections.OrderedDict()


def compiled_helpers(system: ManifoldSystem, cache_key=None) -> Helpers:
    """:class:`Helpers` of ``system``, shared (as :func:`build_runner`'s runners) per
    ``cache_key``."""
    if cache_key is not None and cache_key in _HELPERS:
        _HELPERS.move_to_end(cache_key)
        return _HELPERS[cache_key]

    def residual(u, y):
        return jnp.max(jnp.abs(system.constraint(u, y)))

    def newton(u, y, tol, n):
        return gauss_newton(system, u, y, tol, n)

    helpers = Helpers(
        jax.jit(jax.vmap(lambda u, y: constrained_hmc.init(system.at(y), u))),
        jax.jit(jax.vmap(residual)),
        jax.jit(jax.vmap(lambda u: jnp.linalg.matrix_rank(system.jacobian(u)))),
        jax.jit(jax.vmap(newton, (0, 0, None, None)), static_argnums=3),
        TypicalStarts(system),
    )
    if cache_key is not None:
        _HELPERS[cache_key] = helpers
        while len(_HELPERS) > MAX_CACHED_RUNNERS:
            _HELPERS.popitem(last=False)
    return helpers


def clear_caches() -> None:
    """Forget every cached runner and helper (and so their compiled programs): the next
    conditioning of any generator traces and compiles afresh."""
    _RUNNERS.clear()
    _HELPERS.clear()


def per_chain(tree, num_chains: int):
    """Every array leaf of ``tree`` broadcast to a leading chains axis, on the host (Python
    ints, which are compile-time constants, stay as they are)."""
    return jax.tree.map(
        lambda x: x if is_int(x) else np.broadcast_to(x, (num_chains, *np.shape(x))),
        tree,
    )


@functools.partial(jax.jit, static_argnums=(1, 2))
def chain_keys(obs_keys, num_chains: int, adapting: bool) -> tuple:
    """``(key_init, search keys or None, chain keys)`` of each observation's run (one
    observation key per row of ``obs_keys``; one compiled program)."""

    def one(key):
        key_init, key_chains = jax.random.split(key)
        if not adapting:
            return key_init, None, jax.random.split(key_chains, num_chains)
        key_search, key_chains = jax.random.split(key_chains)
        return (
            key_init,
            jax.random.split(key_search, num_chains),
            jax.random.split(key_chains, num_chains),
        )

    return jax.vmap(one)(obs_keys)


def run_fixed(runner, keys, init_states, params, y_chains, total: int, run: dict):
    """Chains with a fixed step size; ``y_chains`` is each chain's observation."""
    num_chains = y_chains.shape[0]
    obs_params = ObservedParams(y_chains, per_chain(params, num_chains))
    result = runner("fixed").run(keys, init_states, obs_params, total, per_chain_params=True, **run)
    return result, np.full(num_chains, float(params.step_size))


def run_adaptive(runner, keys, init_states, params, y_chains, lengths: tuple, run: dict):
    """Warm-up with dual averaging, then sampling, as one chain run.

    Args:
        runner: ``kind -> ChainRunner`` (``"search"`` and ``"adaptive"``).
        keys: ``(search keys, chain keys)``, one per chain each.
        init_states: batched constrained HMC states (leading axis chains).
        params: the kernel's params; their step size starts the search.
        y_chains: each chain's observation.
        lengths: ``(num_warmup, total iterations, target acceptance)``.
        run: keyword arguments of :meth:`ChainRunner.run` (``checkpoint`` among them).

    Returns:
        ``(ChainResult with the inner kernel's states, each chain's adapted step size)``.
    """
    num_warmup, total, target = lengths
    keys_search, keys_chains = keys
    num_chains = y_chains.shape[0]
    eps = jnp.asarray(params.step_size)
    states = jax.vmap(lambda s: adaptive_step.init(s, eps))(init_states)
    num_adapt, num_dual = adaptive_step.schedule(num_warmup)
    full = adaptive_step.AdaptiveParams(
        params, jnp.asarray(target, jnp.float64), jnp.asarray(num_adapt), jnp.asarray(num_dual)
    )
    obs_params = ObservedParams(y_chains, per_chain(full, num_chains))
    search_compile_s = 0.0
    if run["checkpoint"] is None or not Path(run["checkpoint"]).exists():
        search = runner("search").run(keys_search, states, obs_params, 1, per_chain_params=True)
        states, search_compile_s = search.states, search.compile_s
    result = runner("adaptive").run(
        keys_chains, states, obs_params, total, per_chain_params=True, **run
    )
    step_sizes = np.asarray(jax.vmap(adaptive_step.final_step_size, (0, None))(result.states, full))
    compile_s = result.compile_s + search_compile_s  # both runners' compilation
    return result._replace(states=result.states.state, compile_s=compile_s), step_sizes


def check_sample_args(args: dict, system: ManifoldSystem) -> str:
    """Validate ``sample``'s arguments (each error names one); return the chain map."""
    check_key(args["key"], stack_for="one per observation of a `y_obs` batch")
    for name in ("num_chains", "num_samples", "num_geodesic_steps", "max_iters", "chunk_size"):
        check_positive(name, args[name], integer=True)
    num_warmup = args["num_warmup"]
    if not is_int(num_warmup) or num_warmup < 0:
        raise ValueError(f"`num_warmup` must be a non-negative int; got {num_warmup!r}")
    for name in ("step_size", "tol"):
        value = args[name]
        if not (is_real(value) and np.isfinite(value) and value > 0):
            raise ValueError(f"`{name}` must be a positive number; got {value!r}")
    adaptive_step.check_target_accept(args["target_accept"])
    for name in ("check_reverse", "progress_bar", "adapt"):
        if not isinstance(args[name], bool):
            raise ValueError(f"`{name}` must be a bool; got {args[name]!r}")
    path = args["checkpoint"]
    if path is not None and not isinstance(path, str | Path):
        raise ValueError(f"`checkpoint` must be a str or Path; got {type(path).__name__}")
    check_choice("trajectory", args["trajectory"], ("fixed", "dynamic"))
    dynamic_chmc.check_max_depth(args["max_depth"])
    return _check_chain_map(args["chain_map"], system)


def resolve_trajectory(trajectory: Any, num_steps: Any) -> tuple[Any, Any]:
    """``(trajectory, num_steps)`` from ``sample``'s arguments: ``trajectory=None`` is
    ``"fixed"`` when ``num_steps`` is given, else ``"dynamic"``; ``num_steps=None`` is
    ``(4, 8)``. ``num_steps`` with ``trajectory="dynamic"`` raises ``ValueError`` (it would
    be ignored)."""
    if trajectory is None:
        trajectory = "dynamic" if num_steps is None else "fixed"
    elif trajectory == "dynamic" and num_steps is not None:
        raise ValueError(
            f"`num_steps` sets fixed-length trajectories; got num_steps={num_steps!r} with "
            "trajectory='dynamic' (leave num_steps out, or use trajectory='fixed')"
        )
    return trajectory, (4, 8) if num_steps is None else num_steps


def _check_chain_map(chain_map: Any, system: ManifoldSystem) -> str:
    check_choice("chain_map", chain_map, ("map", "vmap", "auto"))
    structured = system.factor_type() is not DenseCholesky
    if chain_map == "auto":  # never vmap a LAPACK Cholesky, even inside another factor
        chain_map = "vmap" if structured and not system.uses_lapack_cholesky else "map"
    if chain_map == "vmap" and system.uses_lapack_cholesky:
        raise ValueError(
            "`chain_map` 'vmap' needs a structured Gram factor with no LAPACK Cholesky "
            f"(a DenseCholesky of more than {SMALL_GRAM} rows, alone or inside another "
            f"factor, e.g. a Woodbury factor of more than {SMALL_GRAM} latents; "
            f"{system.output_dim} outputs here): it hangs under vmap on several "
            "host devices in jaxlib 0.10.2; use 'map'"
        )
    return chain_map


def run_attrs(args: dict, lo: int, hi: int, step_sizes, adapting: bool) -> dict:
    """The run attributes ``sample`` records (besides the settings and timings)."""
    attrs = {"step_size": float(np.mean(step_sizes)), "num_steps_low": lo}
    attrs |= {"num_steps_high": hi, "adapted": int(adapting)}
    if args["trajectory"] == "dynamic":
        del attrs["num_steps_low"], attrs["num_steps_high"]
        attrs["max_depth"] = args["max_depth"]
    if adapting:
        attrs["target_accept"] = float(args["target_accept"])
    return attrs


def observation_keys(key, num_obs: int, batched: bool):
    """One key per observation: ``split(key, num_obs)`` for a batch (one key for one
    observation), or, given a stack of ``num_obs`` keys (typed ``(num_obs,)`` or raw
    ``(num_obs, 2)``) with a batch, those keys as they are."""
    is_stack = key.ndim == (1 if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else 2)
    if not is_stack:
        return jax.random.split(key, num_obs) if batched else jnp.stack([key])
    if not batched or key.shape[0] != num_obs:
        raise ValueError(
            f"`key` with {key.shape[0]} keys needs a `y_obs` batch of as many rows; got "
            + (f"{num_obs} rows" if batched else "one observation")
        )
    return key


def check_y_batch(y_obs: Any, default: jax.Array) -> tuple[jax.Array, bool]:
    """``(observations as a float64 (num_obs, N) array, whether a batch was given)``;
    ``y_obs`` is None (``default``), a vector of ``default``'s size, or ``(num_obs, N)``."""
    if y_obs is None:
        return default[None], False
    n = default.shape[0]
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
    if y.ndim not in (1, 2) or y.shape[-1] != n or y.shape[0] == 0:
        raise ValueError(
            f"`y_obs` must have shape ({n},) or (num_obs, {n}), as the conditioned "
            f"observation; got {tuple(y.shape)}"
        )
    bad = ~np.all(np.isfinite(np.asarray(y)).reshape(-1, n), axis=1)
    if np.any(bad):
        where = f"row {int(np.argmax(bad))} " if y.ndim == 2 else ""
        raise ValueError(f"`y_obs` must be finite; {where}contains NaN or inf")
    return (y, True) if y.ndim == 2 else (y[None], False)


def split_obs(tree, num_chains: int):
    """Every leaf ``(num_obs × num_chains, draws, ...)`` as ``(num_chains, draws, num_obs,
    ...)`` (chains of observation ``i`` are rows ``i·num_chains`` to ``(i+1)·num_chains``)."""

    def one(x):
        x = np.asarray(x)
        x = x.reshape(-1, num_chains, *x.shape[1:])
        return np.moveaxis(x, 0, 2)

    return jax.tree.map(one, tree)


# sample_stats names (ArviZ's where it has one) of the CHMCInfo fields
STAT_NAMES = {
    "accept_prob": "acceptance_rate",
    "is_accepted": "is_accepted",
    "is_divergent": "diverging",
    "projection_failed": "projection_failed",
    "is_irreversible": "irreversible",
    "num_steps": "n_steps",
    "energy_error": "energy_error",
    "energy": "energy",
    "constraint_residual": "constraint_residual",
    "tree_depth": "tree_depth",  # dynamic trajectories only
}


def to_inference_data(posterior: dict, infos: Any, y_obs, attrs: dict, extra_stats=None, dims=None):
    """ArviZ ``InferenceData`` of constrained HMC draws: ``posterior`` (``u`` first, over
    ``u_dim``, then derived quantities, their axes named by ``dims``), ``sample_stats`` (the
    :data:`STAT_NAMES` fields ``infos`` has, a ``CHMCInfo`` or a ``DCHMCInfo``, then
    ``extra_stats``), ``observed_data`` and ``attrs`` on the posterior and sample-stats
    groups."""
    import arviz as az

    stats = {name: getattr(infos, f) for f, name in STAT_NAMES.items() if hasattr(infos, f)}
    stats |= extra_stats or {}
    observed = {"y": np.asarray(y_obs)}
    dims = {"u": ["u_dim"], **(dims or {})}
    if observed["y"].ndim == 2:  # a batch of observations: an `obs` dimension everywhere
        dims = {name: ["obs", *dims.get(name, [])] for name in (*posterior, *stats)}
        dims |= {"y": ["obs", "y_dim"]}
    else:  # the same name as a batch's (ArviZ's default would be `y_dim_0`)
        dims |= {"y": ["y_dim"]}
    idata = az.from_dict(posterior, sample_stats=stats, observed_data=observed, dims=dims)
    for group in (idata.posterior, idata.sample_stats):
        # an attribute named like a variable would shadow it (`ds.step_size`)
        group.attrs.update({k: v for k, v in attrs.items() if k not in group.data_vars})
    return idata
