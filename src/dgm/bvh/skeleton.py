"""A BVH skeleton as a structure of arrays, and forward kinematics as a pure JAX function.

Nodes (joints and End Sites) are stored in depth-first file order, so every parent comes
before its children. The topology (names, parent indices, channel lists) is static: it is
part of the tree structure, so ``jit`` compiles once per skeleton layout. The offsets are an
array leaf, so a function of them can be differentiated.

Forward kinematics follows the BVH convention: node i has the local transform
``T_i = [[R_i, t_i], [0, 1]]`` with ``R_i = R_{c1}(a_1) R_{c2}(a_2) …``, the product of its
rotation channels in file order, and ``t_i`` its offset plus its position channels; the global
transform is ``G_i = G_parent(i) T_i`` and the node's position is the translation of ``G_i``.
The rotations are the right-handed ``R_x``, ``R_y``, ``R_z``.
"""

import functools
from typing import NamedTuple

import equinox as eqx
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float

POSITION_CHANNELS = ("Xposition", "Yposition", "Zposition")
ROTATION_CHANNELS = ("Xrotation", "Yrotation", "Zrotation")
CHANNEL_NAMES = POSITION_CHANNELS + ROTATION_CHANNELS
_AXIS = {"X": 0, "Y": 1, "Z": 2}


class Skeleton(eqx.Module):
    """A joint tree.

    Attributes:
        names: node names; an End Site is ``<Parent>EndSite``.
        parents: index of each node's parent (``-1`` for the root, node 0).
        channels: each joint's channel names in file order; ``None`` for an End Site.
        offsets: ``(nodes, 3)`` offset of each node from its parent.
    """

    names: tuple[str, ...] = eqx.field(static=True)
    parents: tuple[int, ...] = eqx.field(static=True)
    channels: tuple[tuple[str, ...] | None, ...] = eqx.field(static=True)
    offsets: Float[ArrayLike, "nodes 3"]

    def __check_init__(self):
        n = len(self.names)
        if len(self.parents) != n or len(self.channels) != n:
            raise ValueError("`names`, `parents` and `channels` must have one entry per node")
        if n == 0 or self.parents[0] != -1:
            raise ValueError("node 0 must be the root (parent -1)")
        for i, p in enumerate(self.parents[1:], 1):
            if not 0 <= p < i:
                raise ValueError(f"node {i} ({self.names[i]}) has parent {p}; expected 0..{i - 1}")
        if np.shape(self.offsets) != (n, 3):
            raise ValueError(f"`offsets` must have shape ({n}, 3); got {np.shape(self.offsets)}")

    @classmethod
    def from_nodes(cls, nodes) -> "Skeleton":
        """From ``(name, parent, offset, channels)`` tuples in depth-first order."""
        names, parents, offsets, channels = zip(*nodes, strict=True)
        offsets = np.asarray(offsets, dtype=np.float64).reshape(-1, 3)
        return cls(tuple(names), tuple(parents), tuple(channels), offsets)

    @property
    def num_nodes(self) -> int:
        return len(self.names)

    @property
    def num_channels(self) -> int:
        return sum(len(c) for c in self.channels if c is not None)

    @property
    def channel_starts(self) -> tuple[int, ...]:
        """Index of each node's first channel in a frame (End Sites: where the next starts)."""
        starts, k = [], 0
        for c in self.channels:
            starts.append(k)
            k += len(c) if c is not None else 0
        return tuple(starts)

    @property
    def channel_labels(self) -> tuple[str, ...]:
        """``<name>_<axis>`` (lower case) for each rotation channel and ``<name>_<axis>pos``
        for each position channel, in frame order, e.g. ``leftleg_z``."""
        labels = []
        for name, chans in zip(self.names, self.channels, strict=True):
            for c in chans or ():
                kind = "" if c in ROTATION_CHANNELS else "pos"
                labels.append(f"{name.lower()}_{c[0].lower()}{kind}")
        return tuple(labels)

    @property
    def is_end_site(self) -> tuple[bool, ...]:
        return tuple(c is None for c in self.channels)

    def index(self, name: str) -> int:
        """The index of the node called ``name``."""
        try:
            return self.names.index(name)
        except ValueError:
            raise ValueError(f"no node named {name!r}; nodes are {list(self.names)}") from None


def rotation(axis: str, angle: Float[Array, ""]) -> Float[Array, "3 3"]:
    """The right-handed rotation by ``angle`` (radians) about ``axis`` ("X", "Y" or "Z")."""
    return _axis_rotations(jnp.asarray(angle)[None], np.asarray([_AXIS[axis]]))[0]


def _axis_rotations(angles: Float[Array, " k"], axes: np.ndarray) -> Float[Array, "k 3 3"]:
    """Rotations about coordinate axes, ``R = a aᵀ + (I − a aᵀ) cos θ + [a]× sin θ`` with a
    the one-hot axis: the standard R_x, R_y, R_z entry for entry (the 1 on the axis is exact)."""
    a = np.eye(3)[axes]  # (k, 3)
    outer = a[:, :, None] * a[:, None, :]
    cross = np.zeros((len(axes), 3, 3))
    cross[:, 0, 1], cross[:, 0, 2], cross[:, 1, 2] = -a[:, 2], a[:, 1], -a[:, 0]
    cross = cross - cross.transpose(0, 2, 1)
    dtype = angles.dtype
    c, s = jnp.cos(angles)[:, None, None], jnp.sin(angles)[:, None, None]
    return (jnp.asarray(outer, dtype) + jnp.asarray(np.eye(3) - outer, dtype) * c) + jnp.asarray(
        cross, dtype
    ) * s


class _Plan(NamedTuple):
    """Index arrays for vectorised forward kinematics (NumPy constants)."""

    rot_index: np.ndarray  # (nodes, slots) frame index of each rotation channel, or -1
    rot_axis: np.ndarray  # (nodes, slots) 0/1/2 (padding slots: 0 with angle 0)
    pos_index: np.ndarray  # (nodes, 3) frame index of the X/Y/Z position channel, or -1
    levels: tuple[tuple[np.ndarray, np.ndarray], ...]  # (nodes, their parents) by depth


@functools.lru_cache(maxsize=64)
def _plan(parents: tuple[int, ...], channels: tuple) -> _Plan:
    n = len(parents)
    slots = max([sum(c in ROTATION_CHANNELS for c in ch or ()) for ch in channels] + [1])
    # int32 in both of JAX's modes: an int64 index array captured under float64 and then
    # used without it fails in JAX's index normalisation ("lax.add ... int64, int32").
    rot_index = np.full((n, slots), -1, np.int32)
    rot_axis = np.zeros((n, slots), np.int32)
    pos_index = np.full((n, 3), -1, np.int32)
    k = 0
    for i, ch in enumerate(channels):
        r = 0
        for c in ch or ():
            if c in ROTATION_CHANNELS:
                rot_index[i, r], rot_axis[i, r] = k, _AXIS[c[0]]
                r += 1
            else:
                pos_index[i, _AXIS[c[0]]] = k
            k += 1
    depth = [0] * n
    for i in range(1, n):
        depth[i] = depth[parents[i]] + 1
    depth, parents = np.asarray(depth), np.asarray(parents, np.int32)
    levels = tuple(
        (np.flatnonzero(depth == d).astype(np.int32), parents[depth == d])
        for d in range(1, max(depth) + 1)
    )
    return _Plan(rot_index, rot_axis, pos_index, levels)


def _check_vector(value, name: str, size: int):
    arr = jnp.asarray(value)
    if arr.shape != (size,) or not jnp.issubdtype(arr.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must be a float array of shape ({size},) (one frame; vmap over frames); "
            f"got {arr.dtype} {arr.shape}"
        )
    return arr


def _safe_norm(offsets: Float[Array, "nodes 3"]) -> Float[Array, " nodes"]:
    """Each row's length, 1 for a zero row; its gradient is finite there too (a ``where``
    after ``sqrt`` alone passes sqrt's infinite slope at 0 on as NaN)."""
    sq = jnp.sum(offsets**2, axis=1)
    return jnp.sqrt(jnp.where(sq > 0, sq, 1.0))


def _gather(values: Float[Array, " channels"], index: np.ndarray) -> Array:
    """``values[index]``, with 0 where ``index`` is -1."""
    padded = jnp.concatenate([values, jnp.zeros((1,), values.dtype)])
    return padded[np.where(index < 0, values.shape[0], index)]


def _matmul(a: Array, b: Array) -> Array:
    """Batched products of small matrices as broadcast-multiply-sum. (XLA:CPU 0.10 rejected
    the ``dot_general`` of gathered operands under two ``vmap``s: "hlo verifier: Expected
    instruction to have shape f64[3,2,20,4,4], actual f64[20,3,2,4,4]".)"""
    return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)


def global_transforms(
    skeleton: Skeleton,
    channel_values: ArrayLike,
    lengths: ArrayLike | None = None,
    *,
    degrees: bool = False,
) -> Float[Array, "nodes 4 4"]:
    """The 4×4 global transform of every node for one frame.

    Local rotations are built for all nodes at once and composed level by level (one
    batched product per tree depth), which keeps compile time low.

    Args:
        skeleton: the joint tree.
        channel_values: ``(num_channels,)`` values of one frame, in frame order.
        lengths: optional ``(nodes,)`` bone lengths; node i's offset becomes
            ``lengths[i] · offset_i / ‖offset_i‖`` (a zero offset stays zero).
        degrees: rotation channels are in degrees (BVH files) rather than radians.

    Raises:
        ValueError: ``channel_values`` or ``lengths`` has the wrong shape.
    """
    values = _check_vector(channel_values, "channel_values", skeleton.num_channels)
    dtype = values.dtype
    plan = _plan(skeleton.parents, skeleton.channels)
    offsets = jnp.asarray(skeleton.offsets, dtype)
    if lengths is not None:
        lengths = _check_vector(lengths, "lengths", skeleton.num_nodes).astype(dtype)
        offsets = offsets * (lengths / _safe_norm(offsets))[:, None]
    n, slots = plan.rot_index.shape
    angles = _gather(values, plan.rot_index.reshape(-1))
    if degrees:
        angles = angles * (np.pi / 180)
    rot = _axis_rotations(angles, plan.rot_axis.reshape(-1)).reshape(n, slots, 3, 3)
    local_r = rot[:, 0]
    for k in range(1, slots):
        local_r = _matmul(local_r, rot[:, k])
    local_t = offsets + _gather(values, plan.pos_index.reshape(-1)).reshape(n, 3)
    top = jnp.concatenate([local_r, local_t[:, :, None]], axis=2)
    bottom = jnp.broadcast_to(jnp.eye(4, dtype=dtype)[3], (n, 1, 4))
    out = jnp.concatenate([top, bottom], axis=1)  # local transforms; the root's is global
    for nodes, parents in plan.levels:
        out = out.at[nodes].set(_matmul(out[parents], out[nodes]))
    return out


def joint_positions(
    skeleton: Skeleton,
    channel_values: ArrayLike,
    lengths: ArrayLike | None = None,
    *,
    degrees: bool = False,
) -> Float[Array, "nodes 3"]:
    """The 3-D position of every node for one frame (see :func:`global_transforms`).

    Example:
        >>> import jax
        >>> from dgm.bvh import read_bvh, joint_positions
        >>> clip = read_bvh("walk.bvh")  # doctest: +SKIP
        >>> xyz = jax.vmap(lambda f: joint_positions(clip.skeleton, f, degrees=True))(
        ...     clip.frames)  # doctest: +SKIP
    """
    return global_transforms(skeleton, channel_values, lengths, degrees=degrees)[:, :3, 3]


def bones(skeleton: Skeleton) -> np.ndarray:
    """``(nodes - 1, 2)`` (parent, child) index pairs: the segments to draw."""
    return np.asarray([(p, i) for i, p in enumerate(skeleton.parents) if p >= 0], dtype=int)
