"""The driver and the shared Metropolis step (base.py), on a toy random-walk kernel.

Dtype-agnostic: float32 states, so the tests pass with x64 on or off.
"""

import types
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference.base import ChainRunner, metropolis

NUM_CHAINS = 3


class RWState(NamedTuple):
    position: jax.Array
    log_density: jax.Array


class RWParams(NamedTuple):
    scale: jax.Array  # traced
    num_substeps: int  # static: a compile-time loop length


def _logp(x):
    return -0.5 * jnp.sum(x**2)


def rw_step(key, state, params):
    """``num_substeps`` random-walk Metropolis moves on N(0, I)."""
    scale = jnp.asarray(params.scale, state.position.dtype)

    def one(i, carry):
        state, _ = carry
        key_prop, key_acc = jax.random.split(jax.random.fold_in(key, i))
        x = state.position + scale * jax.random.normal(key_prop, state.position.shape, scale.dtype)
        proposal = RWState(x, _logp(x))
        new, prob, _ = metropolis(
            key_acc, proposal.log_density - state.log_density, proposal, state
        )
        return new, prob

    return jax.lax.fori_loop(0, params.num_substeps, one, (state, jnp.zeros((), scale.dtype)))


def _setup(num_chains=NUM_CHAINS, seed=0):
    x0 = jax.random.normal(jax.random.key(seed), (num_chains, 2), jnp.float32)
    states = RWState(x0, jax.vmap(_logp)(x0))
    keys = jax.random.split(jax.random.key(seed + 1), num_chains)
    return keys, states, RWParams(jnp.asarray(0.8, jnp.float32), 2)


# ------------------------------------------------------------------------ metropolis


@pytest.mark.parametrize("log_ratio", [-2.0, -0.1, 0.0, 1.5, -np.inf])
def test_metropolis_closed_form(log_ratio):
    """accept_prob = min(1, e^r); accepted iff U(key) < accept_prob; the kept tree follows."""
    key = jax.random.key(4)
    new, prob, acc = metropolis(
        key, jnp.float32(log_ratio), {"x": jnp.ones(2)}, {"x": jnp.zeros(2)}
    )
    expected = min(1.0, float(np.exp(log_ratio)))
    np.testing.assert_allclose(float(prob), expected, rtol=1e-6)
    u = float(jax.random.uniform(key, dtype=jnp.float32))
    assert bool(acc) == (u < expected)
    np.testing.assert_array_equal(np.asarray(new["x"]), np.full(2, float(bool(acc))))


def test_metropolis_acceptance_frequency():
    """Over many keys the acceptance frequency is e^r (z < 5)."""
    keys = jax.random.split(jax.random.key(5), 20_000)
    r = jnp.log(jnp.float32(0.3))
    acc = jax.vmap(lambda k: metropolis(k, r, jnp.ones(()), jnp.zeros(()))[2])(keys)
    freq = float(np.mean(acc))
    assert abs(freq - 0.3) / np.sqrt(0.3 * 0.7 / 20_000) < 5, freq


def test_metropolis_nan_rejects():
    for seed in range(20):
        new, prob, acc = metropolis(jax.random.key(seed), jnp.float32(np.nan), 1.0, 0.0)
        assert float(prob) == 0.0 and not bool(acc) and float(new) == 0.0


# ------------------------------------------------------------------------ the driver


def test_chunked_equals_unchunked():
    keys, states, params = _setup()
    whole = ChainRunner(rw_step, chunk_size=25).run(keys, states, params, 23)
    chunked = ChainRunner(rw_step, chunk_size=4).run(keys, states, params, 23)
    assert whole.draws.shape == chunked.draws.shape == (NUM_CHAINS, 23, 2)
    np.testing.assert_array_equal(chunked.draws, whole.draws)
    np.testing.assert_array_equal(chunked.infos, whole.infos)
    np.testing.assert_array_equal(np.asarray(chunked.states.position), whole.draws[:, -1])


def test_surplus_iterations_of_the_last_chunk_are_not_computed():
    """7 iterations in chunks of 4: the second chunk's surplus iteration is skipped, not
    computed and discarded (a host callback counts the steps actually run); with
    ``jnp.where`` masking (the old driver) it counted 24 = 3 chains × 8."""
    calls = []

    def counted_step(key, state, params):
        jax.debug.callback(lambda: calls.append(1))
        return rw_step(key, state, params)

    keys, states, params = _setup()
    runner = ChainRunner(counted_step, chunk_size=4, chain_map="map", devices=jax.devices()[:1])
    out = runner.run(keys, states, params, 7)  # one device: no padding chains
    assert out.draws.shape == (NUM_CHAINS, 7, 2)
    assert len(calls) == NUM_CHAINS * 7


def test_a_run_compiles_its_chunk_and_nothing_else(compiles):
    """Padding the chains to a multiple of the devices, placing them and cutting the padding
    off again happen on the host: a first run of 5 chains (6 rows on 2 devices) compiles its
    chunk and nothing else. With JAX operations for these (the old driver) the same run
    compiled 21 more programs, one per operation and leaf shape. (Shapes no other test
    uses, so no program is already in JAX's cache.)"""
    x0 = jax.random.normal(jax.random.key(3), (5, 7), jnp.float32)
    states = RWState(x0, jax.vmap(_logp)(x0))
    keys = jax.random.split(jax.random.key(4), 5)
    params = RWParams(jnp.asarray(0.5, jnp.float32), 1)
    runner = ChainRunner(rw_step, chunk_size=3)
    compiles.clear()
    out = runner.run(keys, states, params, 4)
    assert len(compiles) == 1 and runner.num_compiles == 1
    assert out.draws.shape == (5, 4, 7) and out.states.position.shape == (5, 7)


def test_one_key_per_chain_is_required():
    keys, states, params = _setup()
    with pytest.raises(ValueError, match="`keys` must hold one key per chain"):
        ChainRunner(rw_step).run(keys[:-1], states, params, 5)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    keys, states, params = _setup()
    path = tmp_path / "chains.npz"
    runner = ChainRunner(rw_step, chunk_size=5)
    full = runner.run(keys, states, params, 17)
    first = runner.run(keys, states, params, 10, checkpoint=path)
    assert first.num_done == 10 and path.exists()
    resumed = runner.run(keys, states, params, 17, checkpoint=path)
    assert resumed.num_done == 17 and not resumed.interrupted
    np.testing.assert_array_equal(resumed.draws, full.draws)
    np.testing.assert_array_equal(resumed.infos, full.infos)
    np.testing.assert_array_equal(
        np.asarray(resumed.states.position), np.asarray(full.states.position)
    )


def test_resumed_wall_time_includes_the_earlier_calls(tmp_path, monkeypatch):
    """A run continued from its checkpoint reports the time of the whole run, so ESS/s
    and ms per step of a resumed run are not inflated (they were: ``wall_s`` covered the
    last call only). A fake clock makes every chunk take 1 s."""
    from dgm.inference import base

    ticks = iter(range(1000))
    monkeypatch.setattr(base, "time", types.SimpleNamespace(perf_counter=lambda: next(ticks)))
    keys, states, params = _setup()
    runner = ChainRunner(rw_step, chunk_size=5)
    real = runner._run_chunk
    monkeypatch.setattr(runner, "_run_chunk", lambda *a: (*real(*a)[:2], 0.0))  # no compile
    path = tmp_path / "chains.npz"
    assert runner.run(keys, states, params, 10, checkpoint=path).wall_s == 2.0
    assert runner.run(keys, states, params, 17, checkpoint=path).wall_s == 4.0


def test_checkpoint_of_other_shape_is_refused(tmp_path):
    keys, states, params = _setup()
    path = tmp_path / "chains.npz"
    ChainRunner(rw_step, chunk_size=5).run(keys, states, params, 5, checkpoint=path)
    keys4, states4, _ = _setup(num_chains=4)
    with pytest.raises(ValueError, match="use the same number of chains"):
        ChainRunner(rw_step, chunk_size=5).run(keys4, states4, params, 10, checkpoint=path)


def test_checkpoint_of_other_keys_is_refused(tmp_path):
    """A run with another seed's keys continued the saved chains: its draws were the first
    seed's up to the checkpoint, so two seeds gave one answer (or a mix of two runs)."""
    keys, states, params = _setup()
    path = tmp_path / "chains.npz"
    runner = ChainRunner(rw_step, chunk_size=5)
    runner.run(keys, states, params, 10, checkpoint=path)
    other = jax.random.split(jax.random.key(7), NUM_CHAINS)
    with pytest.raises(ValueError, match="written by chains with other keys"):
        runner.run(other, states, params, 17, checkpoint=path)
    assert runner.run(keys, states, params, 17, checkpoint=path).num_done == 17


def test_map_equals_vmap():
    keys, states, params = _setup()
    out = {
        how: ChainRunner(rw_step, chunk_size=6, chain_map=how).run(keys, states, params, 9)
        for how in ("vmap", "map")
    }
    np.testing.assert_allclose(out["map"].draws, out["vmap"].draws, rtol=1e-6, atol=1e-6)


def _interrupt_on_call(runner, n, monkeypatch):
    """Make the ``n``-th compiled chunk raise KeyboardInterrupt (as Ctrl-C does)."""
    real, calls = runner._run_chunk, {"n": 0}

    def chunk(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(runner, "_run_chunk", chunk)


def test_interrupt_returns_partial_result_and_resumes(tmp_path, monkeypatch):
    keys, states, params = _setup()
    full = ChainRunner(rw_step, chunk_size=4).run(keys, states, params, 12)
    runner = ChainRunner(rw_step, chunk_size=4)
    _interrupt_on_call(runner, 2, monkeypatch)
    path = tmp_path / "chains.npz"
    part = runner.run(keys, states, params, 12, checkpoint=path)
    assert part.interrupted and part.num_done == 4
    assert part.draws.shape == (NUM_CHAINS, 4, 2)
    np.testing.assert_array_equal(part.draws, full.draws[:, :4])
    monkeypatch.undo()
    rest = runner.run(keys, states, params, 12, checkpoint=path)
    np.testing.assert_array_equal(rest.draws, full.draws)


def test_interrupt_before_any_iteration_reraises(monkeypatch):
    keys, states, params = _setup()
    runner = ChainRunner(rw_step, chunk_size=4)
    _interrupt_on_call(runner, 1, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        runner.run(keys, states, params, 12)


def test_static_int_params_compile_separately_traced_ones_do_not():
    keys, states, params = _setup()
    runner = ChainRunner(rw_step, chunk_size=5)
    base = runner.run(keys, states, params, 5)
    runner.run(keys, states, params._replace(scale=jnp.asarray(0.3, jnp.float32)), 5)
    groups = runner.num_compiles  # one per device group
    assert base.compile_s > 0
    other = runner.run(keys, states, params._replace(num_substeps=3), 5)
    assert runner.num_compiles == 2 * groups
    assert not np.array_equal(other.draws, base.draws)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"chunk_size": 0}, "`chunk_size` must be a positive int; got 0"),
        ({"chain_map": "pmap"}, "`chain_map` must be one of"),
    ],
)
def test_bad_runner_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ChainRunner(rw_step, **kwargs)


def test_bad_num_iterations():
    keys, states, params = _setup()
    with pytest.raises(ValueError, match="`num_iterations` must be a positive int; got 0"):
        ChainRunner(rw_step).run(keys, states, params, 0)
