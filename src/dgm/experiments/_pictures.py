"""Image grids, canvas-sequence GIFs and attention windows for the image models.

Frames are tiled like the reference DRAW plots (each 28×28 tile padded by one pixel of grey
0.5), scaled up, and written with Pillow; attention windows are rectangles over the tiles
(read red, write green), each clipped to its tile. Files are written atomically.
"""

import math
import os

import numpy as np

from dgm import runs

READ_COLOUR, WRITE_COLOUR = (230, 40, 40), (40, 200, 60)


def tile(images: np.ndarray, cols: int | None = None, pad: int = 1) -> np.ndarray:
    """``(n, rows, columns)`` values in [0, 1] → one grid image, padded with 0.5."""
    n, h, w = images.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, np.float32)
    for i, img in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def _frame(images, boxes, scale: int, cols: int):
    from PIL import Image, ImageDraw

    grid = tile(images, cols)
    img = Image.fromarray(np.uint8(np.clip(grid, 0, 1) * 255)).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    if boxes:
        h, w = images.shape[1:]
        draw = ImageDraw.Draw(img)
        for colour, extent in boxes:  # extent: (x0, y0, x1, y1), each (n,)
            for i, (x0, y0, x1, y1) in enumerate(zip(*extent, strict=True)):
                r, c = divmod(i, cols)
                left, top = 1 + c * (w + 1), 1 + r * (h + 1)
                xy = np.array([left + x0, top + y0, left + x1 + 1, top + y1 + 1]) * scale
                if not np.all(np.isfinite(xy)):
                    continue
                # clipped to its own tile: a window reaching past the digit must not
                # draw over the neighbouring tiles
                x_lo, x_hi = sorted(xy[[0, 2]].clip(left * scale, (left + w) * scale - 1))
                y_lo, y_hi = sorted(xy[[1, 3]].clip(top * scale, (top + h) * scale - 1))
                if x_hi > x_lo and y_hi > y_lo:
                    draw.rectangle([x_lo, y_lo, x_hi, y_hi], outline=colour)
    return img


def save_png(path: str | os.PathLike, images: np.ndarray, scale: int = 3) -> None:
    """A grid of ``(n, rows, columns)`` images in [0, 1] as a PNG."""
    img = _frame(images, None, scale, math.ceil(math.sqrt(len(images))))
    with runs.atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def save_gif(
    path: str | os.PathLike,
    frames: np.ndarray,
    boxes: list | None = None,
    scale: int = 3,
    duration_ms: int = 100,
) -> None:
    """An animation of ``frames (T, n, rows, columns)``, each frame a grid of n images.

    Args:
        boxes: per frame, a list of ``(colour, (x0, y0, x1, y1))`` with each coordinate an
            ``(n,)`` array in 0-based pixels; ``None`` for no boxes.
        duration_ms: time per frame; the last frame is held for a second.
    """
    cols = math.ceil(math.sqrt(frames.shape[1]))
    images = [_frame(f, None if boxes is None else boxes[t], scale, cols)
              for t, f in enumerate(frames)]  # fmt: skip
    durations = [duration_ms] * (len(images) - 1) + [1000]
    with runs.atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=durations, loop=0)  # fmt: skip
