"""``dgm sample RUN_DIR``: new samples from a trained image model.

Every image model dgm trains is loaded through the decoder protocol
(:func:`dgm.models.decoders.load`) and drawn at u ~ N(0, I): a grid of pixel means as a PNG.
For a DRAW run the canvas-sequence animation is written beside it as a GIF (and, with
attention, the same animation with the write windows drawn).
"""

import os
from pathlib import Path

import jax
import numpy as np

from dgm.config import check_positive
from dgm.experiments import _draw_eval, _pictures
from dgm.models import decoders


def sample_run(
    run_dir: str | os.PathLike, num: int = 64, out: str | os.PathLike | None = None, seed: int = 0
) -> list[Path]:
    """Draw ``num`` samples from the model saved in ``run_dir``; returns the files written.

    Args:
        run_dir: a run directory holding ``model.eqx``.
        num: number of samples.
        out: the PNG to write (default ``RUN_DIR/new_samples.png``); a DRAW's animation goes
            to the same name with ``.gif``, its attention version to ``_attention.gif``.
        seed: the samples' seed.

    Raises:
        FileNotFoundError: no such directory, or no model in it.
        ValueError: ``num`` is not a positive int, ``out`` is not a ``.png`` name, the file
            is not a dgm model, or its kind has no image decoder.
    """
    check_positive("num", num, integer=True)
    decoder = decoders.load(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "new_samples.png"
    if out.suffix.lower() != ".png":
        raise ValueError(
            f"`out` must name a .png file (a DRAW's animations go beside it as .gif); got {out}"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    key = jax.random.key(seed)
    if decoder.kind != "draw":
        u = jax.random.normal(key, (num, decoder.input_dim))
        means = np.asarray(jax.jit(jax.vmap(decoder))(u)).reshape(num, *decoder.image_shape)
        _pictures.save_png(out, means)
        return [out]
    from dgm.models import draw_io

    model, _ = draw_io.load_run(run_dir)
    frames, write = _draw_eval.prior_frames(model, key, num)
    _pictures.save_png(out, frames[-1])
    gif = out.with_suffix(".gif")
    _pictures.save_gif(gif, frames)
    written = [out, gif]
    if write is not None:
        boxes = _draw_eval._boxes(None, write, model, model.num_steps)
        written.append(out.with_name(out.stem + "_attention.gif"))
        _pictures.save_gif(written[-1], frames, boxes)
    return written
