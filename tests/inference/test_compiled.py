"""The drivers' shared compile cache and chunk loop."""

import jax
import jax.numpy as jnp
import pytest

from dgm.inference._compiled import ChunkOutcome, CompiledCache, run_chunks, signature


def test_cache_compiles_once_per_signature_and_device():
    cache = CompiledCache(jax.jit(lambda x, s: s * x))
    exe, seconds = cache.get((jnp.ones(3), 2.0))
    assert seconds > 0 and cache.num_compiles == 1
    exe2, seconds = cache.get((jnp.zeros(3), 5.0))  # same shapes: cached
    assert exe2 is exe and seconds == 0.0
    assert float(exe(jnp.ones(3), 3.0)[0]) == 3.0
    cache.get((jnp.ones(4), 2.0))  # new shape
    cache.get((jnp.ones(3), 2.0), device=jax.devices()[-1])  # new device key
    assert cache.num_compiles == 3
    assert signature((jnp.ones(3), 2.0)) == signature((jnp.zeros(3), 1.0))
    assert signature(jnp.ones(3)) != signature(jnp.ones(3, jnp.int32))


def test_run_chunks_sizes_stop_and_postfix():
    calls = []

    def chunk(done, todo):
        calls.append((done, todo))
        return todo

    assert run_chunks(25, 10, chunk, progress=True, desc="test") == (25, False)
    assert calls == [(0, 10), (10, 10), (20, 5)]

    def stops(done, todo):  # the second chunk meets a stopping rule after 3 iterations
        return ChunkOutcome(3, stop=True, postfix={"accept": "0.5"}) if done else todo

    assert run_chunks(100, 10, stops, progress=True, desc="test") == (13, False)


def test_run_chunks_turns_ctrl_c_into_interrupted():
    def chunk(done, todo):
        if done >= 20:
            raise KeyboardInterrupt
        return todo

    assert run_chunks(100, 10, chunk, progress=True, desc="test") == (20, True)
    with pytest.raises(ValueError, match="`chunk_size` must be a positive int; got 0"):
        run_chunks(10, 0, chunk)
