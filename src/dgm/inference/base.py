"""Kernel container and the multi-chain driver.

The driver runs ``num_chains`` chains of a single-chain ``step(key, state, params)`` by
``vmap`` inside one compiled ``scan`` over a *chunk* of iterations. Chunks let a
progress bar move, let a long run checkpoint, and let Ctrl-C keep the draws made so far.
Iteration ``i`` of chain ``c`` uses ``fold_in(key_c, i)``, so a run split into chunks,
or interrupted and resumed, gives bit-identical draws. Chains are spread over the
available devices (one group per device, dispatched asynchronously).
"""

import time
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class Kernel(NamedTuple):
    """A transition kernel: ``init(position) -> state``, ``step(key, state) -> (state, info)``."""

    init: Callable
    step: Callable


class ChainResult(NamedTuple):
    """What :meth:`ChainRunner.run` returns (NumPy arrays, chains first)."""

    states: Any  # final states, leading axis chains (JAX arrays)
    draws: Any  # extract_fn(state) per iteration: (chains, iterations, ...)
    infos: Any  # step info per iteration: (chains, iterations, ...)
    num_done: int  # iterations completed (< requested if interrupted)
    interrupted: bool
    wall_s: float  # sampling time, compilation excluded
    compile_s: float


def _signature(tree) -> tuple:
    leaves, treedef = jax.tree.flatten(tree)
    return (treedef, tuple((np.shape(x), jnp.result_type(x)) for x in leaves))


class ChainRunner:
    """Compile a chunk of ``step`` for many chains once per shape, then run it repeatedly.

    Args:
        step_fn: ``step(key, state, params) -> (state, info)`` for one chain; ``params``
            is a PyTree of tunable values (traced: changing them never recompiles).
        extract_fn: what to record from each state (default: ``state.position``).
        chunk_size: iterations per compiled call.
        chain_map: how the chains of one device run: ``"vmap"`` (batched; best for
            kernels of fixed length) or ``"map"`` (``lax.map``, one chain after another;
            best for kernels with data-dependent loops, such as constrained HMC, where a
            batched ``while_loop`` runs every chain to the slowest chain's count, unless
            the loop body batches well: constrained HMC with a banded Gram factor, see
            ``dgm.condition(...).sample(chain_map=...)``).
    """

    def __init__(
        self,
        step_fn: Callable,
        extract_fn: Callable | None = None,
        chunk_size=100,
        chain_map: str = "vmap",
    ):
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"`chunk_size` must be a positive int; got {chunk_size!r}")
        if chain_map not in ("vmap", "map"):
            raise ValueError(f"`chain_map` must be 'vmap' or 'map'; got {chain_map!r}")
        self.step_fn = step_fn
        self.extract_fn = extract_fn or (lambda s: s.position)
        self.chunk_size = chunk_size
        self._compiled: dict = {}
        self.num_compiles = 0

        def chunk(keys, start, stop, states, params):
            def one_chain(key, state):
                def body(state, i):
                    new, info = step_fn(jax.random.fold_in(key, i), state, params)
                    new = jax.tree.map(lambda a, b: jnp.where(i < stop, a, b), new, state)
                    return new, (self.extract_fn(new), info)

                return jax.lax.scan(body, state, start + jnp.arange(chunk_size))

            if chain_map == "map":
                states, (draws, infos) = jax.lax.map(lambda a: one_chain(*a), (keys, states))
            else:
                states, (draws, infos) = jax.vmap(one_chain)(keys, states)
            return states, draws, infos

        self._jitted = jax.jit(chunk)

    def _executable(self, args, device):
        sig = (_signature(args), device)
        if sig not in self._compiled:
            t0 = time.perf_counter()
            lowered = self._jitted.trace(*args).lower()
            self._compiled[sig] = lowered.compile()
            self.num_compiles += 1
            return self._compiled[sig], time.perf_counter() - t0
        return self._compiled[sig], 0.0

    def run(
        self,
        keys,
        states,
        params,
        num_iterations: int,
        *,
        start: int = 0,
        progress: bool = False,
        desc: str = "sampling",
        on_chunk: Callable | None = None,
        accept_fn: Callable | None = None,
    ) -> ChainResult:
        """Run all chains for ``num_iterations`` iterations (the last chunk's surplus
        iterations leave the state unchanged and are dropped).

        Args:
            keys: one key per chain.
            states: batched initial states (leading axis chains).
            params: tunable values shared by all chains.
            start: index of the first iteration (for resuming).
            on_chunk: called as ``on_chunk(num_done, states, draws, infos)`` after each chunk.
            accept_fn: ``info -> acceptance array`` for the progress bar's running mean.
        """
        num_chains = jax.tree.leaves(states)[0].shape[0]
        groups = _device_groups(num_chains)
        draws_parts, info_parts = [], []
        compile_s = wall_s = 0.0
        done, interrupted = 0, False
        bar = _progress(num_iterations, desc) if progress else None
        accepted_sum = 0.0
        try:
            while done < num_iterations:
                t_chunk = time.perf_counter()
                outs, chunk_compile = [], 0.0
                bounds = (jnp.asarray(start + done), jnp.asarray(start + num_iterations))
                # Every group's inputs are split off before any group runs: a slice taken
                # on device 0 after device 0's run was dispatched would wait for that run,
                # and the devices would take turns instead of running in parallel.
                group_args = [
                    (
                        device,
                        jax.device_put((keys[idx], *bounds, _take(states, idx), params), device),
                    )
                    for device, idx in groups
                ]
                for device, args in group_args:
                    exe, c = self._executable(args, device)
                    chunk_compile += c
                    outs.append(exe(*args))
                outs = jax.block_until_ready(outs)
                compile_s += chunk_compile
                wall_s += time.perf_counter() - t_chunk - chunk_compile
                states = _concat([o[0] for o in outs])
                take = min(self.chunk_size, num_iterations - done)
                chunk_draws = _head(_concat([o[1] for o in outs]), take)
                chunk_infos = _head(_concat([o[2] for o in outs]), take)
                draws_parts.append(chunk_draws)
                info_parts.append(chunk_infos)
                done += take
                if bar is not None:
                    if accept_fn is not None:
                        accepted_sum += float(np.sum(np.mean(accept_fn(chunk_infos), axis=0)))
                        bar.set_postfix(accept=f"{accepted_sum / done:.3f}")
                    bar.update(take)
                if on_chunk is not None:
                    on_chunk(start + done, states, _cat_time(draws_parts), _cat_time(info_parts))
        except KeyboardInterrupt:
            interrupted = True
        finally:
            if bar is not None:
                bar.close()
        return ChainResult(
            states,
            _cat_time(draws_parts),
            _cat_time(info_parts),
            done,
            interrupted,
            wall_s,
            compile_s,
        )


def _device_groups(num_chains: int) -> list[tuple[Any, np.ndarray]]:
    devices = jax.local_devices()
    n = len(devices)
    if n == 1 or num_chains % n != 0:
        return [(devices[0], np.arange(num_chains))]
    per = num_chains // n
    return [(d, np.arange(i * per, (i + 1) * per)) for i, d in enumerate(devices)]


def _head(tree, num: int):
    """The first ``num`` iterations of every leaf, as NumPy arrays."""
    return jax.tree.map(lambda x: np.asarray(x)[:, :num], tree)


def _take(tree, idx):
    return jax.tree.map(lambda x: x[idx], tree)


def _concat(trees):
    if len(trees) == 1:
        return trees[0]
    return jax.tree.map(
        lambda *xs: jnp.concatenate([jax.device_put(x, jax.local_devices()[0]) for x in xs]), *trees
    )


def _cat_time(parts):
    if not parts:
        return None
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *parts)


def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="it", leave=False, dynamic_ncols=True)
