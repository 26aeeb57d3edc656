"""Independent chains (or particles, or batch rows) spread over every device: one helper.

A one-axis device mesh over all devices of all processes; a function of the leading
(chains) axis runs under :func:`jax.shard_map` with one slice per device, and within a
device the caller batches (``vmap``) or loops (``lax.map``). The same code runs on one
CPU device, on several host devices (:func:`dgm.set_host_device_count`), on one GPU or
several, and over several processes (:mod:`dgm.distributed`): every process holds the
same host-side inputs, places its slices with :func:`put`, and :func:`gather` returns the
whole result to every process.

Why ``shard_map`` rather than ``jit`` with a sharding alone: samplers have loops of
data-dependent length (Newton projections, trajectories), and leaving their partitioning
to the compiler has been measured much slower (jax#20968, diffrax#407).

A count that does not divide by the number of devices is padded (:func:`pad`) by
repeating the last row; callers drop the padding (:func:`unpad`). Each chain computes on
its own slice, so the draws of chain ``i`` depend only on its key and ``i``, not on the
number of devices.
"""

import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

__all__ = ["gather", "make_mesh", "num_devices_for", "pad", "put", "shard_chains", "unpad"]

AXIS = "chains"


def make_mesh(num_rows: int | None = None, devices: Sequence | None = None, axis: str = AXIS):
    """A one-axis mesh named ``axis`` over ``devices`` (default: every device of every
    process; in one process, at most ``num_rows`` of them, since more would only run
    padding)."""
    if devices is None:
        devices = jax.devices()
        if num_rows is not None and jax.process_count() == 1:
            devices = devices[: max(1, min(len(devices), num_rows))]
    return Mesh(np.asarray(list(devices)), (axis,))


def num_devices_for(num_rows: int) -> int:
    """How many devices :func:`make_mesh` spreads ``num_rows`` rows over."""
    return make_mesh(num_rows).size


def padded_size(num_rows: int, mesh: Mesh) -> int:
    """``num_rows`` rounded up to a multiple of the mesh size."""
    return -(-num_rows // mesh.size) * mesh.size


def pad(tree: Any, num_rows: int) -> Any:
    """Extend every leaf's leading axis to ``num_rows`` by repeating its last row (a leaf
    that needs it comes back as a NumPy array)."""

    def one(x):
        extra = num_rows - x.shape[0]
        if extra == 0:
            return x
        x = np.asarray(x)  # on the host: on a device it would compile a program per shape
        return np.concatenate([x, np.repeat(x[-1:], extra, axis=0)])

    return jax.tree.map(one, tree)


def unpad(tree: Any, num_rows: int) -> Any:
    """The first ``num_rows`` rows of every leaf (a leaf with no padding is returned as it
    is; padded JAX arrays are cut on the host, as :func:`pad` pads them)."""

    def one(x):
        if x.shape[0] == num_rows:
            return x
        if isinstance(x, jax.Array):
            return jax.device_put(np.asarray(x)[:num_rows])
        return x[:num_rows]

    return jax.tree.map(one, tree)


def put(tree: Any, mesh: Mesh, spec: PartitionSpec | None = None) -> Any:
    """Global arrays laid out as ``spec`` (default: rows split over the mesh axis) over
    ``mesh``, from host-side values that every process holds in full (NumPy or JAX arrays;
    typed PRNG keys are not supported: pass ``jax.random.key_data``)."""
    spec = PartitionSpec(mesh.axis_names[0]) if spec is None else spec
    sharding = NamedSharding(mesh, spec)

    def one(x):
        if jax.process_count() == 1:
            if isinstance(x, jax.Array) and x.sharding != sharding:
                # Split on the host: resharding a device array compiles a program per shape.
                x = np.asarray(x)
            return jax.device_put(x, sharding)
        host = np.asarray(x)
        return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])

    return jax.tree.map(one, tree)


def gather(tree: Any) -> Any:
    """Every leaf as a NumPy array holding all rows, on every process (a collective when
    there are several processes: all of them must call it)."""
    if jax.process_count() == 1:
        return jax.tree.map(np.asarray, tree)
    mesh = jax.tree.leaves(tree)[0].sharding.mesh
    # One all-gather program for the whole tree (multihost_utils.process_allgather would
    # compile one per leaf), cached per mesh and tree signature.
    return jax.tree.map(np.asarray, _replicate(mesh)(tree))


@functools.cache
def _replicate(mesh: Mesh) -> Callable:
    return jax.jit(lambda tree: tree, out_shardings=NamedSharding(mesh, PartitionSpec()))


def shard_chains(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any = None) -> Callable:
    """``jax.jit(jax.shard_map(fn, ...))``: ``fn`` sees each device's rows.

    Args:
        fn: the per-device function; its leading-axis inputs hold that device's rows.
        mesh: from :func:`make_mesh`.
        in_specs: a PartitionSpec (prefix) per argument: ``PartitionSpec(AXIS)`` for
            per-row values, ``PartitionSpec()`` for values shared by all rows.
        out_specs: default: every output split by rows.
    """
    out_specs = PartitionSpec(mesh.axis_names[0]) if out_specs is None else out_specs
    # check_vma off: while-loop carries mixing per-row and shared values would otherwise
    # need `lax.pvary` at every such loop of every kernel; rows never communicate.
    mapped = jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs, check_vma=False)
    return jax.jit(mapped)
