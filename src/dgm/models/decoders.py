"""Trained image models as generators: the decoder protocol.

Every image model dgm trains (the VAE, DRAW and the IAF-VAE) saves
``model.eqx`` in its run directory: one JSON header line with ``"format"`` and ``"kind"``,
then the Equinox leaves. :func:`load` turns such a run directory into an
:class:`ImageDecoder`, a generator ``m = g(u)`` from ``input_dim`` standard-normal inputs to
the image's pixel means, which :func:`dgm.condition` and the in-painting experiment
condition on part of an image.

A new model kind needs two things: a ``"kind"`` in its header and a loader
``fn(path, header) -> ImageDecoder`` registered in ``_LOADERS`` (as ``"module:function"``,
imported only when a run of that kind is loaded). Optionally the decoder gives ``head_fn``,
the first pixels alone, when it can compute them for less than the whole image.
"""

import importlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float

from dgm import runs

FORMAT = "dgm-model-v1"
MODEL_FILE = "model.eqx"

_LOADERS: dict[str, str] = {
    "vae": "dgm.models.vae:image_decoder",
    "draw": "dgm.models.draw_io:image_decoder",
    "iaf": "dgm.models.iaf_vae_io:image_decoder",
}


class ImageDecoder(eqx.Module):
    """Pixel means of an image as a function of ``input_dim`` N(0, I) inputs.

    Attributes:
        mean_fn: ``u (input_dim,) -> pixel means (prod(image_shape),)`` in (0, 1).
        input_dim: number of standard-normal inputs (all of the model's latent draws).
        image_shape: ``(height, width)``; pixels are in row-major order.
        kind: the model kind it came from (``"vae"``, ...).
        head_fn: optional ``(u, num) -> mean_fn(u)[:num]``, computed without the other
            pixels (in-painting conditions the first rows: the VAE's last layer then costs
            a quarter); :meth:`head` falls back to slicing ``mean_fn``.
    """

    mean_fn: Callable
    input_dim: int = eqx.field(static=True)
    image_shape: tuple[int, int] = eqx.field(static=True)
    kind: str = eqx.field(static=True)
    head_fn: Callable | None = None

    def __call__(self, u: Float[Array, " input"]) -> Float[Array, " pixels"]:
        return self._like(u).mean_fn(u)

    def head(self, u: Float[Array, " input"], num: int) -> Float[Array, " head"]:
        """The first ``num`` pixel means (row-major)."""
        decoder = self._like(u)
        if decoder.head_fn is not None:
            return decoder.head_fn(u, num)
        return decoder.mean_fn(u)[:num]

    def _like(self, u) -> "ImageDecoder":
        """This decoder with its floating weights in ``u``'s floating dtype.

        dgm saves its networks in float32 and its constrained sampler runs in float64; some
        layers (DRAW's recurrence, the IAF VAE's convolutions) refuse mixed dtypes, so a
        float64 ``u`` gets float64 weights (leaves reachable as pytree leaves: a loader's
        ``mean_fn`` is a ``jax.tree_util.Partial`` or a bound method of the model).
        """
        dtype = jnp.result_type(u)
        if not jnp.issubdtype(dtype, jnp.floating):
            return self

        def cast(leaf):
            floating = eqx.is_array(leaf) and jnp.issubdtype(leaf.dtype, jnp.floating)
            return leaf.astype(dtype) if floating and leaf.dtype != dtype else leaf

        return jax.tree.map(cast, self)


def read_header(path: str | os.PathLike) -> dict:
    """The JSON header of a dgm model file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file.
    """
    path = Path(path)
    with open(path, "rb") as f:
        try:
            head = json.loads(f.readline())
        except ValueError:
            raise ValueError(f"{path} is not a dgm model file (unreadable header)") from None
    if not isinstance(head, dict) or head.get("format") != FORMAT:
        raise ValueError(f"{path} is not a dgm model file; expected format {FORMAT}")
    return head


def write_model(path: str | os.PathLike, head: dict, model: eqx.Module) -> None:
    """Write ``head`` as the JSON header line, then the model's Equinox leaves, atomically."""
    with runs.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(json.dumps(runs._to_jsonable(head)).encode() + b"\n")
        eqx.tree_serialise_leaves(f, model)


def read_model(path: str | os.PathLike, kind: str, build: Callable[[dict], eqx.Module]):
    """Read a model file written by :func:`write_model`; returns ``(model, header)``.

    Args:
        path: the model file.
        kind: the ``"kind"`` the header must hold.
        build: ``header -> model`` of the right shapes (its values are overwritten).

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, a model of another kind, a header that lacks a
            size, or a truncated or corrupt file.
    """
    path = Path(path)
    head = read_header(path)
    if head.get("kind") != kind:
        raise ValueError(f"{path} holds a model of kind {head.get('kind')!r}; expected {kind!r}")
    try:
        with jax.enable_x64(False):  # dgm's networks are float32: so is the skeleton, under x64 too
            like = build(head)
    except KeyError as err:
        raise ValueError(f"{path}: the model header lacks {err}") from None
    with open(path, "rb") as f:
        f.readline()
        return runs.read_leaves(f, like, path), head


def model_path(run_dir: str | os.PathLike) -> Path:
    """``run_dir/model.eqx``, checked to exist.

    Raises:
        FileNotFoundError: the directory does not exist or holds no model file.
    """
    run_dir = Path(run_dir)
    path = run_dir / MODEL_FILE
    if not path.is_file():
        what = "does not exist" if not run_dir.is_dir() else f"holds no {MODEL_FILE}"
        raise FileNotFoundError(
            f"{run_dir} {what}; expected the run directory of a trained dgm model"
        )
    return path


def kinds() -> list[str]:
    """Model kinds that :func:`load` can turn into an :class:`ImageDecoder`."""
    return sorted(_LOADERS)


def load(run_dir: str | os.PathLike) -> ImageDecoder:
    """The decoder of the image model saved in a dgm run directory, as a generator.

    Raises:
        FileNotFoundError: the directory does not exist or holds no ``model.eqx``.
        ValueError: not a model file, or a model kind with no decoder (the known ones listed).
    """
    path = model_path(run_dir)
    head = read_header(path)
    kind = head.get("kind")
    if kind not in _LOADERS:
        raise ValueError(
            f"{path} holds a model of kind {kind!r}, which has no image decoder; "
            f"expected one of {kinds()}"
        )
    module, name = _LOADERS[kind].split(":")
    return getattr(importlib.import_module(module), name)(path, head)
