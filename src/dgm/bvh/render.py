"""Matplotlib pictures of skeleton poses: 3-D views, 2-D projections, and animated clips.

BVH files are y-up; the 3-D axes here show the file's (x, z, y) so that up is up on screen.
"""

import math
import os
import shutil
from pathlib import Path

import numpy as np

from dgm.bvh.io import Bvh


def _segments(positions: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    return np.stack([positions[pairs[:, 0]], positions[pairs[:, 1]]], axis=1)


def plot_pose_3d(ax, positions, pairs, *, color="C0", lw=2.0, alpha=1.0, points=True, **kw):
    """Draw one pose on a 3-D axis.

    Args:
        ax: a matplotlib ``Axes3D``.
        positions: ``(nodes, 3)`` joint positions (y-up).
        pairs: ``(bones, 2)`` (parent, child) node indices (:func:`dgm.bvh.bones`).

    Returns:
        The ``Line3DCollection`` drawn.
    """
    from mpl_toolkits.mplot3d.art3d import Line3DCollection

    xyz = np.asarray(positions, dtype=float)[:, [0, 2, 1]]
    lines = Line3DCollection(_segments(xyz, np.asarray(pairs)), colors=color, lw=lw, alpha=alpha)
    ax.add_collection3d(lines)
    if points:
        ax.scatter(*xyz.T, color=color, s=6, alpha=alpha, depthshade=False, **kw)
    return lines


def plot_pose_2d(ax, points_2d, pairs, *, color="C0", lw=2.0, alpha=1.0, points=True):
    """Draw a projected pose: ``points_2d`` is ``(2, nodes)`` image coordinates."""
    from matplotlib.collections import LineCollection

    xy = np.asarray(points_2d, dtype=float).T
    lines = LineCollection(_segments(xy, np.asarray(pairs)), colors=color, lw=lw, alpha=alpha)
    ax.add_collection(lines)
    if points:
        ax.scatter(*xy.T, color=color, s=6, alpha=alpha)
    ax.set_aspect("equal")
    ax.autoscale_view()
    return lines


def set_equal_3d(ax, positions) -> None:
    """Give a 3-D axis equal scales and limits around ``(..., 3)`` y-up positions."""
    xyz = np.asarray(positions, dtype=float).reshape(-1, 3)[:, [0, 2, 1]]
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    centre, half = (lo + hi) / 2, max(float(np.max(hi - lo)) / 2, 1e-9)
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_xlabel("x")
    ax.set_ylabel("z")
    ax.set_zlabel("y")


def pose_figure(positions, pairs, *, title: str | None = None):
    """A figure with a 3-D view and the front (x–y) and side (z–y) orthographic projections."""
    import matplotlib.pyplot as plt

    positions = np.asarray(positions, dtype=float)
    fig = plt.figure(figsize=(10, 3.6))
    ax3 = fig.add_subplot(1, 3, 1, projection="3d")
    plot_pose_3d(ax3, positions, pairs)
    set_equal_3d(ax3, positions)
    for k, (cols, label) in enumerate([((0, 1), "front (x, y)"), ((2, 1), "side (z, y)")]):
        ax = fig.add_subplot(1, 3, k + 2)
        plot_pose_2d(ax, positions[:, cols].T, pairs)
        ax.set_title(label)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def drawn_frames(clip: Bvh, stride: int, max_frames: int | None = None):
    """The frames :func:`animate` draws: every ``stride``-th, at most ``max_frames``."""
    return clip.frames[::stride][:max_frames]


def animate(
    clip: Bvh,
    out: str | os.PathLike,
    *,
    stride: int = 4,
    max_frames: int | None = None,
    dpi: int = 80,
) -> Path:
    """Animate a clip to a GIF (Pillow) or MP4 (ffmpeg), written atomically.

    Args:
        clip: the parsed file.
        out: the output path; its suffix picks the format (``.gif`` or ``.mp4``).
        stride: draw every ``stride``-th frame (played at the clip's speed).
        max_frames: draw at most this many frames.

    Raises:
        ValueError: an unknown suffix, a bad ``stride`` or ``max_frames``, a clip whose frame
            time is not a positive number, or ``.mp4`` without ffmpeg.
    """
    import jax
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import animation

    from dgm.bvh.skeleton import bones, joint_positions
    from dgm.runs import atomic_path

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".gif", ".mp4"):
        raise ValueError(f"`out` must end in .gif or .mp4; got {out.name!r}")
    if suffix == ".mp4" and shutil.which("ffmpeg") is None:
        raise ValueError("writing .mp4 needs ffmpeg on PATH; it was not found (use .gif)")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"`stride` must be a positive int; got {stride!r}")
    if max_frames is not None and (not isinstance(max_frames, int) or max_frames < 1):
        raise ValueError(f"`max_frames` must be a positive int or None; got {max_frames!r}")
    if not (math.isfinite(clip.frame_time) and clip.frame_time > 0):
        raise ValueError(
            f"the clip's Frame Time must be a positive number of seconds to animate it; "
            f"got {clip.frame_time!r}"
        )
    frames = drawn_frames(clip, stride, max_frames)
    if len(frames) == 0:
        raise ValueError("the clip has no frames to draw")
    fk = jax.jit(jax.vmap(lambda s, f: joint_positions(s, f, degrees=True), in_axes=(None, 0)))
    xyz = np.asarray(fk(clip.skeleton, frames))
    pairs = bones(clip.skeleton)
    fig = plt.figure(figsize=(4, 4))
    ax = fig.add_subplot(projection="3d")
    set_equal_3d(ax, xyz)
    lines = plot_pose_3d(ax, xyz[0], pairs, points=False)

    def update(k):
        lines.set_segments(_segments(xyz[k][:, [0, 2, 1]], pairs))
        return (lines,)

    fps = max(1.0, 1.0 / (clip.frame_time * stride))
    writer = animation.PillowWriter(fps=fps) if suffix == ".gif" else animation.FFMpegWriter(fps)
    try:
        with atomic_path(out) as tmp:
            staged = tmp.with_suffix(suffix)  # the writers read the format from the suffix
            # made here, once the output can be created: an animation deleted unsaved warns
            anim = animation.FuncAnimation(fig, update, frames=len(xyz), blit=False)
            try:
                anim.save(str(staged), writer=writer, dpi=dpi)
                os.replace(staged, tmp)
            finally:
                staged.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return out
