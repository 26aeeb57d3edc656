"""``dgm.sample``: a log density in, ArviZ draws out; NUTS with windowed warm-up by default.

One call warms up every chain (:func:`dgm.inference.adaptation.warmup`: dual-averaging step
size and a diagonal or dense inverse mass matrix from Stan's windows, each chain on its
own) and then samples with the adapted values (:class:`~dgm.inference.base.ChainRunner`).
The compiled warm-up and sampling functions are kept per log density and structural
setting, so a second call with the same shapes compiles nothing.

Example:
    >>> import jax, jax.numpy as jnp, dgm
    >>> idata = dgm.sample(lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(3), key=jax.random.key(0),
    ...                    num_warmup=200, num_samples=200, num_chains=2)
    >>> idata.posterior["x"].shape
    (2, 200, 3)
"""

import dataclasses
import functools
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from dgm import _sigint, diagnostics
from dgm._types import check_key
from dgm.config import (
    all_finite,
    as_python_number,
    check_choice,
    check_positive,
    is_int,
    is_real,
)
from dgm.inference import hmc, nuts
from dgm.inference import mesh as mesh_lib
from dgm.inference._compiled import CompiledCache
from dgm.inference.adaptation import warmup
from dgm.inference.base import ChainRunner, _join_params, _key_data, _split_params
from dgm.inference.dynamic import check_max_depth

# Stan's default windows: initial buffer + first slow window + terminal buffer.
FULL_SCHEDULE = 75 + 25 + 50
MIN_WINDOWED = 20  # below this, build_schedule adapts no mass matrix at all

STAT_NAMES = {  # sample_stats names (ArviZ's) of the NUTSInfo / HMCInfo fields
    "accept_prob": "acceptance_rate",
    "is_divergent": "diverging",
    "energy": "energy",
    "energy_error": "energy_error",
    "tree_depth": "tree_depth",
    "num_steps": "n_steps",
}


class _Compiled:
    """The kernel, the compiled warm-up and the chain runner of one structural setting."""

    def __init__(self, log_density_fn, kernel, metric, num_warmup, target_accept, options):
        chunk_size, chain_map = options
        self.kernel = kernel
        self.runner = ChainRunner(
            kernel.step, _draw_and_lp, chunk_size=chunk_size, chain_map=chain_map
        )
        self._static = _split_params(kernel.params)[1]

        def warm(keys, states, params, *, key_impl):
            keys = keys if key_impl is None else jax.random.wrap_key_data(keys, impl=key_impl)
            params = self.with_static(params)

            def one(key, state):
                return warmup(
                    key, kernel, state, num_warmup, params=params, metric=metric,
                    log_density_fn=log_density_fn, target_accept=target_accept,
                )  # fmt: skip

            if chain_map == "map":
                return jax.lax.map(lambda a: one(*a), (keys, states))
            return jax.vmap(one)(keys, states)

        self._warm = warm
        self._warmups: dict = {}  # per device mesh and key implementation
        self.init = jax.jit(jax.vmap(kernel.init))

    def warmup(self, keys, states, params) -> tuple[Any, float, float]:
        """Every chain's warm-up, the chains spread over the devices as sampling spreads
        them: ``(the warm-up's output on the host, compile_s, wall_s)``."""
        num_chains = keys.shape[0]
        keys, key_impl = _key_data(keys)
        mesh = mesh_lib.make_mesh(num_chains)
        if (mesh, key_impl) not in self._warmups:
            chains = P(mesh_lib.AXIS)
            fn = functools.partial(self._warm, key_impl=key_impl)
            sharded = mesh_lib.shard_chains(fn, mesh, (chains, chains, P()))
            self._warmups[mesh, key_impl] = CompiledCache(sharded)
        padded = mesh_lib.padded_size(num_chains, mesh)
        args = (
            *mesh_lib.put(mesh_lib.pad((keys, states), padded), mesh),
            mesh_lib.put(params, mesh, P()),
        )
        exe, compile_s = self._warmups[mesh, key_impl].get(args, mesh)
        t0 = time.perf_counter()
        out = jax.block_until_ready(exe(*args))
        wall_s = time.perf_counter() - t0
        return mesh_lib.unpad(mesh_lib.gather(out), num_chains), compile_s, wall_s

    def with_static(self, params):
        """``params`` with the kernel's Python ints (max depth, step counts) put back."""
        return _join_params(params, self._static)


def _draw_and_lp(state: hmc.HMCState) -> tuple:
    """What a chain records per iteration: the draw and its log density (ArviZ's ``lp``)."""
    return state.position, state.log_density


@functools.lru_cache(maxsize=16)
def _compiled(log_density_fn, kind, metric, num_warmup, target_accept, max_depth, num_steps,
              options) -> _Compiled:  # fmt: skip
    if kind == "nuts":
        kernel = nuts.nuts(log_density_fn, max_depth=max_depth)
    else:
        kernel = hmc.hmc(log_density_fn, step_size=1.0, num_steps=num_steps)
    return _Compiled(log_density_fn, kernel, metric, num_warmup, target_accept, options)


def sample(
    log_density_fn: Any,
    init_params: Any,
    *,
    key: Any,
    num_warmup: Any = 1000,
    num_samples: Any = 1000,
    num_chains: Any = 4,
    kernel: Any = "nuts",
    step_size: Any = 1.0,
    metric: Any = "diagonal",
    target_accept: Any = 0.8,
    max_depth: Any = 10,
    num_steps: Any = 10,
    var_name: Any = "x",
    chain_map: Any = "vmap",
    chunk_size: Any = 250,
    progress_bar: Any = False,
):
    """Sample ``exp(log_density_fn)`` with NUTS (or HMC) after windowed adaptation.

    Args:
        log_density_fn: log density (up to a constant) of one position; JAX-traceable,
            returning a scalar.
        init_params: starting point: a vector (every chain starts there), one row per
            chain ``(num_chains, dim)``, or a pytree of parameters (a dict, possibly
            nested, or a NamedTuple of arrays, or one scalar), from which every chain
            starts; the log density then takes the same structure. Its (floating) dtype
            is the sampling dtype.
        key: a PRNG key (``jax.random.key(seed)``, or a raw ``jax.random.PRNGKey(seed)``).
        num_warmup: warm-up iterations per chain (discarded). 0 samples with ``step_size``
            and the identity metric as given. With a mass matrix to adapt it must be at least
            20; below 150 (Stan's 75 + 25 + 50 windows) the windows shrink (15% initial
            buffer, 10% terminal buffer, one slow window) with a warning.
        num_samples, num_chains: kept draws per chain, and chains.
        kernel: ``"nuts"`` (default) or ``"hmc"`` (``num_steps`` leapfrog steps per
            transition: an int, or an inclusive ``(low, high)`` range).
        step_size: the initial step size (the warm-up searches from it).
        metric: ``"diagonal"``, ``"dense"`` or ``"none"`` (identity; step size only).
        target_accept: the mean acceptance statistic dual averaging aims for, in (0, 1).
        max_depth: NUTS's most tree doublings (at most ``2^max_depth − 1`` steps).
        var_name: the posterior variable's name in the ArviZ output (for a vector or a
            scalar start; a pytree's leaves are named by their keys, joined by ``.``).
        chain_map: ``"vmap"`` or ``"map"`` (see :class:`~dgm.inference.base.ChainRunner`),
            for warm-up and sampling alike. ``"map"`` compiles faster (no batched
            loops), ``"vmap"`` runs cheap targets faster.
        chunk_size: sampling iterations per compiled call.
        progress_bar: show a progress bar while sampling.

    Returns:
        ``arviz.InferenceData``: ``posterior[var_name]`` of shape ``(chains, draws, dim)``
        (a pytree start: one variable per leaf, ``(chains, draws, *leaf shape)``),
        ``sample_stats`` (``acceptance_rate``, ``diverging``, ``energy``,
        ``energy_error``, ``tree_depth`` and ``n_steps`` for NUTS, ``step_size``, ``lp``:
        the log density of each draw), ``warmup_sample_stats`` (the same statistics
        during warm-up, when there was one, but ``step_size``, which changed as it
        adapted, and ``lp``),
        and attributes ``step_size`` (adapted, per chain), ``wall_s`` (sampling),
        ``warmup_s``, ``compile_s``, ``chains_stuck`` (chains that rejected every
        proposal; a :class:`~dgm.diagnostics.StuckChainWarning` names them),
        ``interrupted``: 1 when Ctrl-C during sampling ended it early (the draws made so
        far are kept, with a message on stderr; Ctrl-C during warm-up, or before the first
        chunk of draws, propagates).

    Raises:
        ValueError: for bad arguments (each message names the argument), or a start where
            the log density is not finite.
    """
    _check_args(locals())
    num_warmup, num_samples, num_chains, chunk_size, max_depth = map(
        as_python_number, (num_warmup, num_samples, num_chains, chunk_size, max_depth)
    )
    step_size, target_accept = as_python_number(step_size), as_python_number(target_accept)
    options = (chunk_size, chain_map)
    steps = tuple(num_steps) if isinstance(num_steps, list) else num_steps
    raveled = _Raveled.of(log_density_fn, init_params)
    if raveled is not None:
        log_density_fn, init_params = raveled, raveled.ravel(init_params)
    positions = _positions(init_params, num_chains)
    _check_scalar_output(log_density_fn, positions.shape[1], positions.dtype)
    fns = _compiled(
        log_density_fn, kernel, metric, num_warmup, float(target_accept), max_depth, steps, options
    )
    states = fns.init(positions)
    if not all_finite(states.log_density):
        raise ValueError("`init_params`: the log density is not finite at some starting point")
    key_warmup, key_sample = jax.random.split(key)
    dtype = positions.dtype
    params = fns.kernel.params._replace(step_size=jnp.asarray(step_size, dtype))
    params = params._replace(inverse_mass_matrix=_identity(metric, positions.shape[1], dtype))
    warmup_s = compile_s = 0.0
    warmup_infos = None
    per_chain = num_warmup > 0
    if per_chain:
        keys = jax.random.split(key_warmup, num_chains)
        out, compile_s, warmup_s = fns.warmup(keys, states, _split_params(params)[0])
        states, params = out.state, fns.with_static(out.params)
        warmup_infos = out.infos
    result = fns.runner.run(
        jax.random.split(key_sample, num_chains),
        states,
        params,
        num_samples,
        progress=progress_bar,
        desc=kernel.upper(),
        accept_fn=lambda info: info.accept_prob,
        per_chain_params=per_chain,
    )
    if result.interrupted:
        _sigint.note(
            f"interrupted after {result.num_done} of {num_samples} draws; keeping the draws so far"
        )
    step_sizes = np.broadcast_to(np.asarray(params.step_size), (num_chains,))
    draws, lp = map(np.asarray, result.draws)
    stuck = diagnostics.stuck_chains(draws)
    if stuck:
        message = diagnostics.stuck_warning(stuck, draws.shape[1])
        diagnostics.warn_caller(message, diagnostics.StuckChainWarning)
    attrs = {
        "sampler": kernel,
        "metric": metric,
        "step_size": step_sizes.tolist(),
        "wall_s": result.wall_s,
        "warmup_s": warmup_s,
        "compile_s": compile_s + result.compile_s,
        "num_warmup": num_warmup,
        "chains_stuck": len(stuck),
        "interrupted": int(result.interrupted),
    }
    if raveled is None:
        posterior, dims = {var_name: draws}, {var_name: [f"{var_name}_dim"]}
    else:
        posterior, dims = raveled.named_draws(draws, var_name), None
    stats = {"lp": lp, "step_size": np.broadcast_to(step_sizes[:, None], lp.shape)}
    return _inference_data(posterior, dims, result.infos, warmup_infos, stats, attrs)


@dataclasses.dataclass(frozen=True)
class _Raveled:
    """A log density of a pytree as one of a flat vector. Hashable (the compile cache keys
    on it): the same function and structure give an equal object, so a second call with a
    pytree start compiles nothing either."""

    fn: Callable
    treedef: Any
    shapes: tuple[tuple[int, ...], ...]
    names: tuple[str, ...]

    @classmethod
    def of(cls, fn, init) -> "_Raveled | None":
        """For a dict, NamedTuple or scalar start; ``None`` for a vector or matrix."""
        structured = isinstance(init, Mapping) or hasattr(init, "_fields")
        if not structured and np.ndim(init) != 0:
            return None
        with_paths, treedef = jax.tree_util.tree_flatten_with_path(init)
        if not with_paths:
            raise ValueError("`init_params` is an empty pytree; expected parameters")
        names = tuple(".".join(_key_name(k) for k in path) for path, _ in with_paths)
        shapes = tuple(tuple(np.shape(leaf)) for _, leaf in with_paths)
        return cls(fn, treedef, shapes, names)

    def ravel(self, tree) -> jax.Array:
        leaves = [jnp.asarray(leaf) for leaf in jax.tree.leaves(tree)]
        dtype = jnp.result_type(*leaves, float)
        return jnp.concatenate([jnp.ravel(leaf).astype(dtype) for leaf in leaves])

    def unravel(self, x: jax.Array):
        """``x (..., dim)`` as the pytree, every leaf ``(..., *shape)``."""
        bounds = np.cumsum([math.prod(s) for s in self.shapes])[:-1]
        parts = jnp.split(x, bounds, axis=-1)
        leaves = [p.reshape(*x.shape[:-1], *s) for p, s in zip(parts, self.shapes, strict=True)]
        return jax.tree.unflatten(self.treedef, leaves)

    def __call__(self, x: jax.Array):
        return self.fn(self.unravel(x))

    def named_draws(self, draws: np.ndarray, var_name: str) -> dict:
        leaves = jax.tree.leaves(self.unravel(jnp.asarray(draws)))
        names = [n or var_name for n in self.names]  # a scalar start's leaf has no key
        return {n: np.asarray(leaf) for n, leaf in zip(names, leaves, strict=True)}


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


@functools.lru_cache(maxsize=16)
def _check_scalar_output(log_density_fn, dim: int, dtype) -> None:
    """Trace the log density once per function and shape: it must give a scalar."""
    out = jax.eval_shape(log_density_fn, jax.ShapeDtypeStruct((dim,), dtype))
    if not (hasattr(out, "shape") and out.shape == ()):
        got = f"shape {tuple(out.shape)}" if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"`log_density_fn` must return a scalar; got {got}")


def _positions(init_params, num_chains: int) -> jax.Array:
    x = jnp.asarray(init_params)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.result_type(float))
    if x.ndim == 1:
        x = jnp.broadcast_to(x, (num_chains, x.shape[0]))
    if x.ndim != 2 or x.shape[0] != num_chains or x.shape[1] < 1:
        raise ValueError(
            f"`init_params` must be a vector or have shape (num_chains={num_chains}, dim); "
            f"got shape {tuple(x.shape)}"
        )
    if not all_finite(x):
        raise ValueError("`init_params` must be finite; it contains NaN or inf")
    return x


def _identity(metric: str, dim: int, dtype) -> jax.Array:
    return jnp.eye(dim, dtype=dtype) if metric == "dense" else jnp.ones(dim, dtype)


def _check_args(args: dict) -> None:
    """Validate :func:`sample`'s raw arguments; each error names its argument."""
    if not callable(args["log_density_fn"]):
        raise ValueError(
            f"`log_density_fn` must be callable; got {type(args['log_density_fn']).__name__}"
        )
    check_key(args["key"])
    for name in ("num_samples", "num_chains", "chunk_size"):
        check_positive(name, args[name], integer=True)
    check_choice("kernel", args["kernel"], ("nuts", "hmc"))
    check_choice("metric", args["metric"], ("diagonal", "dense", "none"))
    check_choice("chain_map", args["chain_map"], ("vmap", "map"))
    check_max_depth(args["max_depth"])
    if args["kernel"] == "hmc":
        hmc.check_steps(args["num_steps"])
    step_size, target = args["step_size"], args["target_accept"]
    if not is_real(step_size) or not step_size > 0:
        raise ValueError(f"`step_size` must be a positive number; got {step_size!r}")
    if not is_real(target) or not 0 < target < 1:
        raise ValueError(f"`target_accept` must lie in (0, 1); got {target!r}")
    if not isinstance(args["var_name"], str) or not args["var_name"]:
        raise ValueError(f"`var_name` must be a non-empty str; got {args['var_name']!r}")
    _check_num_warmup(args["num_warmup"], args["metric"])


def _check_num_warmup(num_warmup, metric: str) -> None:
    if not is_int(num_warmup) or num_warmup < 0:
        raise ValueError(f"`num_warmup` must be an int >= 0; got {num_warmup!r}")
    if metric == "none" or num_warmup == 0:
        return
    if num_warmup < MIN_WINDOWED:
        raise ValueError(
            f"`num_warmup` must be 0 or at least {MIN_WINDOWED} to adapt a {metric} mass "
            f"matrix (Stan's windows need {FULL_SCHEDULE}); got {num_warmup}. Use "
            "metric='none' to adapt the step size only."
        )
    if num_warmup < FULL_SCHEDULE:
        diagnostics.warn_caller(
            f"num_warmup={num_warmup} is shorter than Stan's adaptation windows "
            f"(75 + 25 + 50 = {FULL_SCHEDULE}): they shrink to a {int(0.15 * num_warmup)}-"
            f"iteration initial buffer, one slow window and a {int(0.1 * num_warmup)}-"
            "iteration terminal buffer",
            UserWarning,
        )


def _stats(infos) -> dict:
    return {name: np.asarray(getattr(infos, f)) for f, name in STAT_NAMES.items()
            if hasattr(infos, f)}  # fmt: skip


def _inference_data(posterior: dict, dims, infos, warmup_infos, extra_stats, attrs: dict):
    """ArviZ data: the draws, their sample stats (``infos``'s and ``extra_stats``), and the
    warm-up's sample stats (ArviZ's ``warmup_sample_stats`` group) when there was one."""
    import arviz as az

    stats = _stats(infos) | extra_stats
    extra = {}
    if warmup_infos is not None:
        extra = {"warmup_sample_stats": _stats(warmup_infos), "save_warmup": True}
    idata = az.from_dict(posterior, sample_stats=stats, dims=dims, **extra)
    for group in (idata.posterior, idata.sample_stats):
        group.attrs.update(attrs)
    return idata
