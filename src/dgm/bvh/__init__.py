"""BVH motion files: parser and writer, a skeleton as arrays, forward kinematics in JAX,
and matplotlib rendering (:mod:`dgm.bvh.render`, imported on demand).

Example:
    >>> import jax
    >>> from dgm.bvh import read_bvh, joint_positions
    >>> clip = read_bvh("walk.bvh")  # doctest: +SKIP
    >>> fk = jax.jit(jax.vmap(lambda f: joint_positions(clip.skeleton, f, degrees=True)))
    >>> xyz = fk(clip.frames)  # (frames, nodes, 3)  # doctest: +SKIP
"""

from dgm.bvh.io import Bvh, BvhSyntaxError, format_bvh, parse_bvh, read_bvh, write_bvh
from dgm.bvh.skeleton import Skeleton, bones, global_transforms, joint_positions, rotation

__all__ = [
    "Bvh",
    "BvhSyntaxError",
    "Skeleton",
    "bones",
    "format_bvh",
    "global_transforms",
    "joint_positions",
    "parse_bvh",
    "read_bvh",
    "rotation",
    "write_bvh",
]
