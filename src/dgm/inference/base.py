"""The sampler convention, the shared Metropolis step, and the multi-chain driver.

Every kernel in :mod:`dgm.inference` has one shape: ``init(position) -> state`` and
``step(key, state, params) -> (state, info)`` for one chain, where ``params`` is a
NamedTuple of tunable values (``HMCParams``, ``CHMCParams``, the ABC samplers' params).
Array-valued params are traced, so adaptation changes them without recompiling; a Python
``int`` in params (a fixed step count) is a compile-time constant. :class:`Kernel`
bundles the two functions with a default ``params``; :func:`dgm.inference.adaptation.warmup`
takes any such kernel and returns adapted params; :class:`ChainRunner` runs chains of it.

The driver runs ``num_chains`` chains by ``vmap`` (or ``lax.map``) inside one compiled
``scan`` over a *chunk* of iterations. Chunks let a progress bar move, let a long run
checkpoint, and let Ctrl-C keep the draws made so far. Iteration ``i`` of chain ``c`` uses
``fold_in(key_c, i)``, so a run split into chunks, or interrupted and resumed from its
checkpoint, gives bit-identical draws. Chains are spread over the available devices (one
group per device, dispatched asynchronously).
"""

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P
from jaxtyping import Array, Bool, Float, PRNGKeyArray, PyTree

from dgm.config import check_choice, check_positive, is_int
from dgm.inference import mesh as mesh_lib
from dgm.inference._compiled import ChunkOutcome, CompiledCache, run_chunks, skip_unless


class Kernel(NamedTuple):
    """A transition kernel and its default tunables.

    Attributes:
        init: ``init(position) -> state``.
        step: ``step(key, state, params) -> (state, info)``, pure, for one chain.
        params: the tunables bound by the constructor (a NamedTuple), passed as
            ``kernel.step(key, state, kernel.params)``, or replaced by adapted ones.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> from dgm.inference.hmc import hmc
        >>> kernel = hmc(lambda x: -0.5 * jnp.sum(x**2), step_size=0.5, num_steps=5)
        >>> state, info = kernel.step(jax.random.key(0), kernel.init(jnp.zeros(2)), kernel.params)
    """

    init: Callable
    step: Callable
    params: Any


def metropolis(
    key: PRNGKeyArray, log_ratio: Float[Array, ""], proposal: PyTree, state: PyTree
) -> tuple[PyTree, Float[Array, ""], Bool[Array, ""]]:
    """Accept ``proposal`` with probability ``min(1, exp(log_ratio))``, else keep ``state``.

    A NaN ``log_ratio`` counts as −∞ (reject): kernels pass −∞ for a proposal they
    already know to reject (a divergence, a failed projection).

    Returns:
        ``(new_state, accept_prob, is_accepted)``.
    """
    log_ratio = jnp.where(jnp.isnan(log_ratio), -jnp.inf, log_ratio)
    accept_prob = jnp.exp(jnp.minimum(0.0, log_ratio))
    is_accepted = jax.random.uniform(key, dtype=accept_prob.dtype) < accept_prob
    new = jax.tree.map(lambda a, b: jnp.where(is_accepted, a, b), proposal, state)
    return new, accept_prob, is_accepted


class ChainResult(NamedTuple):
    """What :meth:`ChainRunner.run` returns (NumPy arrays, chains first).

    With a checkpoint, ``draws``, ``infos``, ``num_done`` and ``wall_s`` cover the whole
    run, the iterations of earlier (interrupted) calls included.
    """

    states: Any  # final states, leading axis chains (JAX arrays)
    draws: Any  # extract_fn(state) per iteration: (chains, iterations, ...)
    infos: Any  # step info per iteration: (chains, iterations, ...)
    num_done: int  # iterations completed (< requested if interrupted)
    interrupted: bool
    wall_s: float  # sampling time of the run (earlier calls' too), compilation excluded
    compile_s: float  # compilation time of this call


def _device_array(x) -> jax.Array:
    """``x`` on the device: a NumPy value is copied there (``jnp.asarray`` compiles a small
    program per shape for it), anything else goes through ``jnp.asarray``."""
    return jax.device_put(x) if isinstance(x, np.ndarray | np.generic) else jnp.asarray(x)


def _split_params(params) -> tuple[Any, Any]:
    """``(traced, static)``: Python ints stay static (compile-time), the rest are arrays."""
    is_static = [is_int(x) for x in jax.tree.leaves(params)]
    leaves, treedef = jax.tree.flatten(params)
    traced = [None if s else _device_array(x) for x, s in zip(leaves, is_static, strict=True)]
    static = tuple(int(x) if s else None for x, s in zip(leaves, is_static, strict=True))
    return treedef.unflatten(traced), (treedef, static)


def _join_params(traced, static) -> Any:
    treedef, values = static
    leaves = jax.tree.leaves(traced, is_leaf=lambda x: x is None)
    return treedef.unflatten(
        [v if v is not None else x for x, v in zip(leaves, values, strict=True)]
    )


class ChainRunner:
    """Compile a chunk of a kernel's ``step`` for many chains once per shape; run it repeatedly.

    Args:
        step_fn: ``step(key, state, params) -> (state, info)`` for one chain (a
            :class:`Kernel`'s ``step``).
        extract_fn: what to record from each state (default: ``state.position``).
        chunk_size: iterations per compiled call.
        chain_map: how the chains of one device run: ``"vmap"`` (batched; best for
            kernels of fixed length) or ``"map"`` (``lax.map``, one chain after another;
            best for kernels with data-dependent loops, such as constrained HMC, where a
            batched ``while_loop`` runs every chain to the slowest chain's count, unless
            the loop body batches well: constrained HMC with a banded Gram factor, see
            ``dgm.condition(...).sample(chain_map=...)``).
        devices: the devices the chains are spread over (default: every device of every
            process, see :mod:`dgm.inference.mesh`); the draws do not depend on it.
    """

    def __init__(
        self,
        step_fn: Callable,
        extract_fn: Callable | None = None,
        chunk_size: int = 100,
        chain_map: str = "vmap",
        devices: Sequence | None = None,
    ):
        check_positive("chunk_size", chunk_size, integer=True)
        check_choice("chain_map", chain_map, ("vmap", "map"))
        self.step_fn = step_fn
        self.extract_fn = extract_fn or (lambda s: s.position)
        self.chunk_size = chunk_size
        self.devices = None if devices is None else list(devices)
        self._caches: dict[Any, CompiledCache] = {}  # per static params and mesh

        def chunk(keys, start, stop, states, traced, *, static):
            split, per_chain, key_impl = static
            if key_impl is not None:  # typed keys travel as their raw data
                keys = jax.random.wrap_key_data(keys, impl=key_impl)

            def one_chain(key, state, traced):
                params = _join_params(traced, split)

                def advance(state, i):
                    return step_fn(jax.random.fold_in(key, i), state, params)

                def body(state, i):
                    # past the run's end: skipped (`i < stop` is the same for every chain)
                    new, info = skip_unless(i < stop, advance, state, i)
                    return new, (self.extract_fn(new), info)

                return jax.lax.scan(body, state, start + jnp.arange(chunk_size))

            if chain_map == "map":
                if per_chain:
                    xs = (keys, states, traced)
                    states, (draws, infos) = jax.lax.map(lambda a: one_chain(*a), xs)
                else:
                    xs = (keys, states)
                    states, (draws, infos) = jax.lax.map(lambda a: one_chain(*a, traced), xs)
            else:
                in_axes = (0, 0, 0 if per_chain else None)
                states, (draws, infos) = jax.vmap(one_chain, in_axes)(keys, states, traced)
            return states, draws, infos

        self._chunk = chunk

    @property
    def num_compiles(self) -> int:
        """Executables compiled so far (one per shapes, static params and device mesh)."""
        return sum(cache.num_compiles for cache in self._caches.values())

    def _executable(self, args, static, mesh) -> tuple[Callable, float]:
        if (static, mesh) not in self._caches:
            chains = P(mesh_lib.AXIS)
            per_chain = static[1]
            in_specs = (chains, P(), P(), chains, chains if per_chain else P())
            fn = functools.partial(self._chunk, static=static)
            self._caches[static, mesh] = CompiledCache(mesh_lib.shard_chains(fn, mesh, in_specs))
        return self._caches[static, mesh].get(args, mesh)

    def run(
        self,
        keys: Any,
        states: Any,
        params: Any,
        num_iterations: int,
        *,
        progress: bool = False,
        desc: str = "sampling",
        accept_fn: Callable | None = None,
        checkpoint: str | Path | None = None,
        per_chain_params: bool = False,
    ) -> ChainResult:
        """Run all chains for ``num_iterations`` iterations (the last chunk's surplus
        iterations leave the state unchanged and are dropped).

        Args:
            keys: one key per chain.
            states: batched initial states (leading axis chains).
            params: the kernel's tunables, shared by all chains, or with
                ``per_chain_params`` one set per chain (every array leaf has a leading
                chains axis; e.g. the output of a ``vmap``-ed
                :func:`~dgm.inference.adaptation.warmup`).
            num_iterations: iterations of the whole run.
            accept_fn: ``info -> acceptance array`` for the progress bar's running mean.
            checkpoint: ``.npz`` path, written atomically after every chunk (states, draws,
                infos, sampling time, the chains' keys). If it exists, the run continues
                from it: its states replace ``states``, its iterations count towards
                ``num_iterations`` (giving the same draws as an uninterrupted run) and its
                time towards ``wall_s``; one written with other ``keys`` (another seed) is
                refused.

        Returns:
            :class:`ChainResult`. Ctrl-C ends the run after the chunk in flight (the result
            says ``interrupted``); Ctrl-C before any iteration exists re-raises.
        """
        check_positive("num_iterations", num_iterations, integer=True)
        key_data, key_impl = _key_data(keys)
        chain_keys = np.asarray(key_data)  # saved with the chains, checked on resume
        previous, first, wall_s = None, 0, 0.0
        if checkpoint is not None and Path(checkpoint).exists():
            template = self._templates(keys[0], states, params, per_chain_params)
            previous = _load_chains(checkpoint, states, template, chain_keys)
            states, first, wall_s = previous["states"], previous["num_done"], previous["wall_s"]
        traced, split = _split_params(params)
        num_chains = jax.tree.leaves(states)[0].shape[0]
        keys = key_data
        if keys.shape[:1] != (num_chains,):
            raise ValueError(
                f"`keys` must hold one key per chain ({num_chains}, the leading axis of "
                f"`states`); got key data of shape {keys.shape}"
            )
        mesh = mesh_lib.make_mesh(num_chains, self.devices)
        static = (split, per_chain_params, key_impl)
        padded = mesh_lib.padded_size(num_chains, mesh)
        keys, states = mesh_lib.put(mesh_lib.pad((keys, states), padded), mesh)
        if per_chain_params:
            traced = mesh_lib.put(mesh_lib.pad(traced, padded), mesh)
        else:
            traced = mesh_lib.put(traced, mesh, P())
        parts = [(previous["draws"], previous["infos"])] if previous else []
        # One dict updated in one call, so a Ctrl-C between statements never leaves the
        # states, the draws and the count describing different iterations.
        run = {"states": states, "parts": parts, "done": first, "compile_s": 0.0, "wall_s": wall_s}
        accepted = [0.0]

        def run_chunk(done: int, todo: int) -> ChunkOutcome:
            t0 = time.perf_counter()
            bounds = (np.asarray(first + done), np.asarray(num_iterations))
            states, chunk, c = self._run_chunk(keys, bounds, run["states"], traced, static, mesh)
            chunk = _head(mesh_lib.gather(chunk), num_chains, todo)
            run.update(
                states=states,
                parts=[*run["parts"], chunk],
                done=first + done + todo,
                compile_s=run["compile_s"] + c,
                wall_s=run["wall_s"] + time.perf_counter() - t0 - c,
            )
            if checkpoint is not None:
                host_states = mesh_lib.unpad(mesh_lib.gather(states), num_chains)
                if jax.process_index() == 0:  # one writer; every process reads on resume
                    parts = _cat_time(run["parts"])
                    _save_chains(
                        checkpoint, run["done"], run["wall_s"], host_states, parts, chain_keys
                    )
            if accept_fn is None:
                return ChunkOutcome(todo)
            accepted[0] += float(np.sum(np.mean(accept_fn(chunk[1]), axis=0)))
            return ChunkOutcome(todo, postfix={"accept": f"{accepted[0] / (done + todo):.3f}"})

        interrupted = False
        if first < num_iterations:
            _, interrupted = run_chunks(
                num_iterations - first, self.chunk_size, run_chunk, progress=progress, desc=desc
            )
        if not run["parts"]:
            raise KeyboardInterrupt  # interrupted before any iteration existed
        draws, infos = _cat_time(run["parts"])
        states = _local(run["states"], num_chains)
        return ChainResult(
            states, draws, infos, run["done"], interrupted, run["wall_s"], run["compile_s"]
        )

    def _run_chunk(self, keys, bounds, states, traced, static, mesh):
        """One compiled chunk on every device of ``mesh``: ``(states, (draws, infos),
        compile_s)``, all with the padded chains axis, sharded over the mesh."""
        args = (keys, *mesh_lib.put(bounds, mesh, P()), states, traced)
        exe, compile_s = self._executable(args, static, mesh)
        out = None
        try:
            out = jax.block_until_ready(exe(*args))
        except KeyboardInterrupt:
            _finish_quietly(out)  # never leave a computation running into shutdown
            raise
        new_states, draws, infos = out
        return new_states, (draws, infos), compile_s

    def _templates(self, key, states, params, per_chain: bool):
        """Shapes of one chain's ``(draws, info)`` per iteration (for checkpoint loading)."""
        one = jax.tree.map(lambda x: x[0], states)
        if per_chain:
            # chain 0's params, as device arrays (the step's annotations say Array)
            params = jax.tree.map(
                lambda x: jax.device_put(np.asarray(x)[0]) if np.ndim(x) else x, params
            )

        def probe(state):
            new, info = self.step_fn(key, state, params)
            return self.extract_fn(new), info

        return jax.eval_shape(probe, one)


def _finish_quietly(outs) -> None:
    """Wait for dispatched work even through further Ctrl-C presses."""
    while True:
        try:
            jax.block_until_ready(outs)
            return
        except KeyboardInterrupt:
            continue


def _save_chains(path, done: int, wall_s: float, states, parts, keys) -> None:
    from dgm.runs import save_npz

    draws, infos = parts
    arrays = {"num_done": done, "wall_s": wall_s, "keys": keys}
    for prefix, tree in (("state", states), ("draws", draws), ("info", infos)):
        for i, leaf in enumerate(jax.tree.leaves(tree)):
            arrays[f"{prefix}_{i}"] = np.asarray(leaf)
    save_npz(path, **arrays)


def _load_chains(path, states, template, keys) -> dict:
    """The checkpoint at ``path`` as ``{num_done, wall_s, states, draws, infos}``; ``keys``
    (raw key data) must be those it was written with (older checkpoints hold none)."""
    from dgm.runs import load_npz

    data = load_npz(path)
    loaded = _unflatten(data, "state", states)
    for new, old in zip(jax.tree.leaves(loaded), jax.tree.leaves(states), strict=True):
        if new.shape != old.shape:
            raise ValueError(
                f"checkpoint {path} holds chain states of shape {new.shape}; this run has "
                f"{old.shape}: use the same number of chains, or another checkpoint path"
            )
    if "keys" in data and not np.array_equal(data["keys"], keys):
        raise ValueError(
            f"checkpoint {path} was written by chains with other keys (another seed); use "
            "the same keys, or another checkpoint path"
        )
    draws_like, infos_like = template
    return {
        "num_done": int(data["num_done"]),
        "wall_s": float(data["wall_s"]) if "wall_s" in data else 0.0,  # older checkpoints
        "states": jax.tree.map(jnp.asarray, loaded),
        "draws": _unflatten(data, "draws", draws_like),
        "infos": _unflatten(data, "info", infos_like),
    }


def _unflatten(data: dict, prefix: str, like):
    leaves, treedef = jax.tree.flatten(like)
    try:
        return treedef.unflatten([data[f"{prefix}_{i}"] for i in range(len(leaves))])
    except KeyError as err:
        raise ValueError(
            f"checkpoint lacks {err}: it was written by another sampler or another dgm version"
        ) from None


def device_groups(num_chains: int) -> list[tuple[Any, np.ndarray]]:
    """``(device, chain indices)`` per device of the chain mesh (:mod:`dgm.inference.mesh`):
    equal groups; a count that does not divide is padded, so the last group may be short."""
    mesh = mesh_lib.make_mesh(num_chains)
    per = mesh_lib.padded_size(num_chains, mesh) // mesh.size
    return [
        (d, np.arange(i * per, min((i + 1) * per, num_chains)))
        for i, d in enumerate(mesh.devices.flat)
    ]


def chain_seconds(wall_s: float, num_chains: int) -> float:
    """Each chain's share of ``wall_s`` of device time: the chains of a device run side by
    side, so ``wall_s`` × devices / chains (:func:`device_groups`). Per-chain rates (ESS/s,
    ms per step) divide by this, so they do not change with how many chains share a device."""
    return wall_s * len(device_groups(num_chains)) / num_chains


def _key_data(keys) -> tuple[Any, str | None]:
    """Raw key data and the typed keys' implementation (None for raw uint32 keys)."""
    if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(keys), str(jax.random.key_impl(keys))
    return keys, None


def _local(tree, num_chains: int):
    """The first ``num_chains`` rows as arrays of this process (gathered when the mesh
    spans several processes)."""
    if jax.process_count() == 1:
        return mesh_lib.unpad(tree, num_chains)
    return jax.tree.map(jnp.asarray, mesh_lib.unpad(mesh_lib.gather(tree), num_chains))


def _head(tree, num_chains: int, num: int):
    """The first ``num_chains`` chains and ``num`` iterations of every leaf (NumPy)."""
    return jax.tree.map(lambda x: np.asarray(x)[:num_chains, :num], tree)


def _cat_time(parts):
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)


def _progress(total: int, desc: str, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="it", leave=False, dynamic_ncols=True)
