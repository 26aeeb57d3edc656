"""``dgm sample RUN_DIR``: new samples from a trained model.

Every image model dgm trains is loaded through the decoder protocol
(:func:`dgm.models.decoders.load`) and drawn at u ~ N(0, I): a grid of pixel means as a PNG.
For a DRAW run the canvas-sequence animation is written beside it as a GIF (and, with
attention, the same animation with the write windows drawn). A Deep Markov Model run
(:mod:`dgm.models.dmm_io`) gives sequences drawn from its prior: sampled piano rolls as a
PNG and the first as MIDI beside it (Bernoulli models), or the emission means as curves
(Gaussian ones).
"""

import os
from pathlib import Path

import jax
import numpy as np

from dgm.config import check_positive
from dgm.experiments import _draw_eval, _pictures
from dgm.models import decoders, dmm_io


def sample_run(
    run_dir: str | os.PathLike,
    num: int = 64,
    out: str | os.PathLike | None = None,
    seed: int = 0,
    steps: int = 100,
) -> list[Path]:
    """Draw ``num`` samples from the model saved in ``run_dir``; returns the files written.

    Args:
        run_dir: a run directory holding ``model.eqx``.
        num: number of samples.
        out: the PNG to write (default ``RUN_DIR/new_samples.png``); a DRAW's animation goes
            to the same name with ``.gif``, its attention version to ``_attention.gif``, a
            DMM's first piano roll to ``.mid``.
        seed: the samples' seed.
        steps: time steps of each sequence (sequence models only).

    Raises:
        FileNotFoundError: no such directory, or no model in it.
        ValueError: ``num`` or ``steps`` is not a positive int, ``out`` is not a ``.png``
            name, the file is not a dgm model, or its kind has no image decoder.
    """
    check_positive("num", num, integer=True)
    check_positive("steps", steps, integer=True)
    path = decoders.model_path(run_dir)
    out = Path(out) if out is not None else Path(run_dir) / "new_samples.png"
    if out.suffix.lower() != ".png":
        raise ValueError(
            f"`out` must name a .png file (a DRAW's animations go beside it as .gif); got {out}"
        )
    key = jax.random.key(seed)
    if decoders.read_header(path).get("kind") == dmm_io.KIND:
        model = dmm_io.load(path)[0]
        out.parent.mkdir(parents=True, exist_ok=True)
        return _sample_dmm(model, num, out, key, steps)
    decoder = decoders.load(run_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
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


def _sample_dmm(model, num: int, out: Path, key, steps: int) -> list[Path]:
    """Sequences from a DMM's prior: piano rolls (PNG, first one as MIDI) or mean curves."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from dgm import runs
    from dgm.data import midi
    from dgm.data.polyphonic import NUM_PITCHES
    from dgm.models import dmm

    k_seq, k_roll = jax.random.split(key)
    draw = jax.jit(jax.vmap(lambda k: dmm.sample_sequences(model, steps, k)))
    means = np.asarray(draw(jax.random.split(k_seq, num)))  # (num, steps, obs)
    written = [out]
    if model.emission.raw_var is None:  # Bernoulli: sampled binary rolls
        rolls = np.asarray(jax.random.uniform(k_roll, means.shape)) < means
        height = min(1.6 * num, 24.0)  # 64 rolls (the default --num) in 24 inches
        fig, axes = plt.subplots(num, 1, figsize=(8, height), squeeze=False, sharex=True)
        for ax, roll in zip(axes[:, 0], rolls, strict=True):
            ax.imshow(roll.T, aspect="auto", origin="lower", cmap="Greys", interpolation="nearest")
            ax.set_ylabel("pitch")
        axes[-1, 0].set_xlabel("time step")
        if model.obs_dim == NUM_PITCHES:
            written.append(out.with_suffix(".mid"))
            with runs.atomic_path(written[-1]) as tmp:
                midi.write_piano_roll(tmp, rolls[0].astype(np.uint8))
    else:  # Gaussian: the emission means
        fig, ax = plt.subplots(figsize=(8, 3))
        for seq in means:
            ax.plot(seq, lw=1, alpha=0.7)
        ax.set_xlabel("time step")
        ax.set_ylabel("emission mean")
    fig.tight_layout()
    with runs.atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return written
