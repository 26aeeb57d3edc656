"""Saving and loading IAF ResNet VAEs, and a saved one as a generator (decoder protocol).

``model.eqx`` holds one JSON header line (``format``, ``kind: "iaf"``, the sizes), then the
Equinox leaves (the Polyak-averaged weights). :func:`image_decoder` turns it into a
:class:`~dgm.models.decoders.ImageDecoder` whose inputs are the latent draws of every block
(level by level, each block's ``s × s × n_z`` draws row-major) and whose output is the pixel
means of the top-down pass from the prior, so the model can be conditioned on part of an
image like DRAW.
"""

import os

import jax

from dgm.models import decoders
from dgm.models.iaf_vae import ResNetVAE, noise_from_vector, pixel_means

KIND = "iaf"
_SIZES = ("channels", "n_h", "n_z", "depths", "posterior", "depth_ar", "likelihood",
          "image_size", "pad")  # fmt: skip


def header(model: ResNetVAE) -> dict:
    """The JSON header saved with a model: what it is and the sizes to rebuild it."""
    head = {"format": decoders.FORMAT, "kind": KIND}
    head.update({name: getattr(model, name) for name in _SIZES})
    head["depths"] = list(model.depths)
    return head


def save(path: str | os.PathLike, model: ResNetVAE, **extra) -> None:
    """Write the header (:func:`header` plus ``extra``), then the model leaves, atomically."""
    decoders.write_model(path, {**header(model), **extra}, model)


def _like(head: dict) -> ResNetVAE:
    sizes = {name: head[name] for name in _SIZES}
    sizes["depths"] = tuple(sizes["depths"])
    # Only shapes are needed: the constant key draws nothing that is kept (initialisation
    # runs on the host, so it cannot go under eval_shape).
    return ResNetVAE(**sizes, key=jax.random.key(0))


def load(path: str | os.PathLike) -> tuple[ResNetVAE, dict]:
    """Read a model written by :func:`save`; returns ``(model, header)``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, another kind, or a truncated or corrupt file.
    """
    return decoders.read_model(path, KIND, _like)


def _means(model: ResNetVAE, u):
    """Pixel means of one image (the padding cropped), flattened row-major."""
    means = pixel_means(model, noise_from_vector(model, u), 1)[0, ..., 0]
    p = model.pad
    return means[p : model.image_size - p, p : model.image_size - p].reshape(-1)


def image_decoder(path: str | os.PathLike, head: dict) -> decoders.ImageDecoder:
    """The decoder protocol for a saved binary-image IAF VAE: pixel means of all its latent
    draws.

    Raises:
        ValueError: the model is not a one-channel Bernoulli model (the protocol's images are
            greyscale (height, width) with means in (0, 1)).
    """
    model = load(path)[0]
    if model.channels != 1 or model.likelihood != "bernoulli":
        raise ValueError(
            f"{path}: only one-channel Bernoulli IAF VAEs (MNIST) work as image decoders; "
            f"this one has {model.channels} channels and a {model.likelihood} likelihood"
        )
    side = model.image_size - 2 * model.pad
    mean_fn = jax.tree_util.Partial(_means, model)
    return decoders.ImageDecoder(mean_fn, model.latent_dim, (side, side), KIND)
