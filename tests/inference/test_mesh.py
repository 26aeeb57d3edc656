"""The chain mesh (dgm.inference.mesh) and ChainRunner across devices.

The suite runs with two host devices (tests/conftest.py: ``configure_cpu(2)``), so one
process compares a run on one device with a run on both: the draws of chain ``i`` must
not depend on the device count, bit for bit, with batched chains (``vmap``: 3 in one
batch against batches of 2) and a chain count that does not divide (3 chains: padded to
4 on two devices). Looped chains (``lax.map``) are compared across device and process
counts in tests/test_distributed.py. Power: folding the device index into the chain keys
(a planted bug) fails the comparison.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference import mesh
from dgm.inference.base import ChainRunner, device_groups
from tests.inference.test_base import _setup, rw_step


@pytest.fixture(scope="module")
def runs():
    devs = jax.devices()
    assert len(devs) == 2, "the suite runs with two host devices"
    keys, states, params = _setup(num_chains=3)  # random-walk Metropolis on N(0, I)
    return {
        n: ChainRunner(rw_step, chunk_size=7, devices=devs[:n]).run(keys, states, params, 10)
        for n in (1, 2)
    }


def test_draws_do_not_depend_on_the_device_count(runs):
    one, two = runs[1], runs[2]
    assert one.draws.shape == (3, 10, 2)
    np.testing.assert_array_equal(one.draws, two.draws)
    np.testing.assert_array_equal(one.infos, two.infos)
    np.testing.assert_array_equal(np.asarray(one.states.position), np.asarray(two.states.position))
    assert not np.array_equal(one.draws[0], one.draws[1])  # chains differ: keys not reused


def test_mesh_size_padding_and_groups():
    assert mesh.make_mesh(1).size == 1 and mesh.make_mesh(5).size == 2
    assert mesh.num_devices_for(3) == 2
    m = mesh.make_mesh(3)
    assert mesh.padded_size(3, m) == 4
    x = np.arange(6).reshape(3, 2)
    padded = mesh.pad({"x": x, "y": jnp.asarray(x)}, 4)
    np.testing.assert_array_equal(padded["x"][3], x[2])
    np.testing.assert_array_equal(np.asarray(padded["y"][3]), x[2])
    np.testing.assert_array_equal(mesh.unpad(padded, 3)["x"], x)
    groups = device_groups(3)
    assert [list(idx) for _, idx in groups] == [[0, 1], [2]]
    placed = mesh.put(jnp.asarray(padded["y"]), m)
    assert len(placed.addressable_shards) == 2
    np.testing.assert_array_equal(mesh.gather(placed), padded["x"])
