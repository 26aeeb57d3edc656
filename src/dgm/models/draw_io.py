"""Saving and loading DRAW models, and a saved DRAW as a generator (the decoder protocol).

``model.eqx`` holds one JSON header line (``format``, ``kind: "draw"``, the sizes), then the
Equinox leaves, as for the VAE (:mod:`dgm.models.vae`). :func:`image_decoder` turns it into
a :class:`~dgm.models.decoders.ImageDecoder` whose inputs are all T × z latent draws
(step-major) and whose output is σ(c_T), so a DRAW can be conditioned on part of an image.
"""

import os

import jax

from dgm.models import decoders
from dgm.models.draw import DRAW, pixel_means

KIND = "draw"
_SIZES = ("num_steps", "z_size", "enc_size", "dec_size", "read_n", "write_n", "grid")


def header(model: DRAW) -> dict:
    """The JSON header saved with a model: what it is and the sizes to rebuild it."""
    head = {"format": decoders.FORMAT, "kind": KIND, "image_shape": list(model.image_shape)}
    head.update({name: getattr(model, name) for name in _SIZES})
    head["likelihood"] = "bernoulli"
    return head


def save(path: str | os.PathLike, model: DRAW, **extra) -> None:
    """Write the header (:func:`header` plus ``extra``), then the model leaves, atomically."""
    decoders.write_model(path, {**header(model), **extra}, model)


def load(path: str | os.PathLike) -> tuple[DRAW, dict]:
    """Read a model written by :func:`save`; returns ``(model, header)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, a model of another kind, or a truncated or
            corrupt file.
    """
    # Only shapes are needed: the constant key draws nothing that is kept (initialisation
    # runs on the host, so it cannot go under eval_shape).
    build = lambda head: DRAW(  # noqa: E731
        tuple(head["image_shape"]), **{n: head[n] for n in _SIZES}, key=jax.random.key(0)
    )
    return decoders.read_model(path, KIND, build)


def load_run(run_dir: str | os.PathLike) -> tuple[DRAW, dict]:
    """The DRAW model of a ``dgm run draw-mnist`` run directory.

    Raises:
        FileNotFoundError: no directory or no ``model.eqx`` in it.
        ValueError: the file holds another kind of model or is not a model file.
    """
    return load(decoders.model_path(run_dir))


def image_decoder(path: str | os.PathLike, head: dict) -> decoders.ImageDecoder:
    """The decoder protocol for a saved DRAW: σ(c_T) of all T × z latent draws."""
    model = load(path)[0]
    mean_fn = jax.tree_util.Partial(pixel_means, model)  # the weights stay pytree leaves
    return decoders.ImageDecoder(mean_fn, model.latent_size, model.image_shape, KIND)
