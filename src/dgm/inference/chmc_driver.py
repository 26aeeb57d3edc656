"""The machinery behind :meth:`dgm.conditioning.ConditionedGenerator.sample`.

Structural settings (:class:`SamplerSettings`), the chain runners for a conditioned
generator (:func:`build_runner`: fixed or dynamic trajectories, with or without step-size
adaptation), the warm-up run (:func:`run_adaptive`), the checks of ``sample``'s arguments
(:func:`check_sample_args`) and the ArviZ conversion (:func:`to_inference_data`).

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS; Hoffman & Gelman (2014) for the step-size adaptation.
"""

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgm.config import check_choice, check_positive
from dgm.inference import adaptive_step, constrained_hmc, dynamic_chmc
from dgm.inference.base import ChainRunner
from dgm.inference.manifold import SMALL_GRAM, DenseCholesky, ManifoldSystem


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


def build_runner(
    system: ManifoldSystem, y_obs: jax.Array, settings: SamplerSettings, kind: str = "fixed"
) -> ChainRunner:
    """A runner of constrained HMC on ``system.generator(u) = y_obs``.

    Args:
        kind: ``"fixed"`` (the given step size), ``"adaptive"`` (dual averaging during
            warm-up, :mod:`~dgm.inference.adaptive_step`) or ``"search"`` (the initial
            step-size search, one iteration).
    """
    build = {"fixed": constrained_hmc, "dynamic": dynamic_chmc}[settings.trajectory]
    step = build.build_kernel(
        system,
        y_obs,
        settings.num_geodesic_steps,
        settings.tol,
        settings.max_iters,
        settings.check_reverse,
    )
    extract, chunk_size = None, settings.chunk_size
    if kind != "fixed":
        extract = lambda s: s.state.position  # noqa: E731
    if kind == "adaptive":
        step = adaptive_step.adaptive_kernel(step)
    elif kind == "search":
        step, chunk_size = adaptive_step.search_kernel(step), 1
    return ChainRunner(step, extract, chunk_size=chunk_size, chain_map=settings.chain_map)


def run_adaptive(runner, key, init_states, params, lengths: tuple, run: dict):
    """Warm-up with dual averaging, then sampling, as one chain run.

    Args:
        runner: ``kind -> ChainRunner`` (``"search"`` and ``"adaptive"``).
        key: one PRNG key.
        init_states: batched constrained HMC states (leading axis chains).
        params: the kernel's params; their step size starts the search.
        lengths: ``(num_warmup, total iterations, target acceptance)``.
        run: keyword arguments of :meth:`ChainRunner.run` (``checkpoint`` among them).

    Returns:
        ``(ChainResult with the inner kernel's states, each chain's adapted step size)``.
    """
    num_warmup, total, target = lengths
    key_search, key_chains = jax.random.split(key)
    num_chains = jax.tree.leaves(init_states)[0].shape[0]
    eps = jnp.asarray(params.step_size)
    states = jax.vmap(lambda s: adaptive_step.init(s, eps))(init_states)
    num_adapt, num_dual = adaptive_step.schedule(num_warmup)
    full = adaptive_step.AdaptiveParams(
        params, jnp.asarray(target, jnp.float64), jnp.asarray(num_adapt), jnp.asarray(num_dual)
    )
    if run["checkpoint"] is None or not Path(run["checkpoint"]).exists():
        keys = jax.random.split(key_search, num_chains)
        states = runner("search").run(keys, states, full, 1).states
    keys = jax.random.split(key_chains, num_chains)
    result = runner("adaptive").run(keys, states, full, total, **run)
    step_sizes = np.asarray(jax.vmap(adaptive_step.final_step_size, (0, None))(result.states, full))
    return result._replace(states=result.states.state), step_sizes


def check_sample_args(args: dict, system: ManifoldSystem) -> str:
    """Validate ``sample``'s arguments (each error names one); return the chain map."""
    key = args["key"]
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed or raw):
        raise ValueError(f"`key` must be one PRNG key (jax.random.key(seed)); got {key!r}")
    for name in ("num_chains", "num_samples", "num_geodesic_steps", "max_iters", "chunk_size"):
        check_positive(name, args[name], integer=True)
    num_warmup = args["num_warmup"]
    if not isinstance(num_warmup, int) or isinstance(num_warmup, bool) or num_warmup < 0:
        raise ValueError(f"`num_warmup` must be a non-negative int; got {num_warmup!r}")
    for name in ("step_size", "tol"):
        value = args[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not (ok and np.isfinite(value) and value > 0):
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


# sample_stats names (ArviZ's where it has one) of the CHMCInfo fields
STAT_NAMES = {
    "accept_prob": "acceptance_rate",
    "is_accepted": "is_accepted",
    "is_divergent": "diverging",
    "projection_failed": "projection_failed",
    "is_irreversible": "irreversible",
    "num_steps": "n_steps",
    "energy_error": "energy_error",
    "constraint_residual": "constraint_residual",
    "tree_depth": "tree_depth",  # dynamic trajectories only
}


def to_inference_data(posterior: dict, infos: Any, y_obs, attrs: dict, extra_stats=None):
    """ArviZ ``InferenceData`` of constrained HMC draws: ``posterior`` (``u`` first, over
    ``u_dim``, then derived quantities), ``sample_stats`` (the :data:`STAT_NAMES` fields
    ``infos`` has, a ``CHMCInfo`` or a ``DCHMCInfo``, then ``extra_stats``),
    ``observed_data`` and ``attrs`` on the posterior and sample-stats groups."""
    import arviz as az

    stats = {name: getattr(infos, f) for f, name in STAT_NAMES.items() if hasattr(infos, f)}
    stats |= extra_stats or {}
    observed = {"y": np.asarray(y_obs)}
    idata = az.from_dict(
        posterior, sample_stats=stats, observed_data=observed, dims={"u": ["u_dim"]}
    )
    for group in (idata.posterior, idata.sample_stats):
        # an attribute named like a variable would shadow it (`ds.step_size`)
        group.attrs.update({k: v for k, v in attrs.items() if k not in group.data_vars})
    return idata
