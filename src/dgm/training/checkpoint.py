"""Checkpoints: a JSON header line, then the Equinox-serialised training tree, atomically.

Formats:

- ``dgm-checkpoint-v2`` (written now): the tree is ``(model, opt_state, best_model,
  averaged)``, ``averaged`` being the weight average or ``None`` (no leaves).
- ``dgm-checkpoint-v1`` (read only): ``(model, opt_state, best_model)``. Its leaves are
  those of a v2 file without an average, so :func:`load_training` reads it the same way
  and, when averaging is on, starts the average at the saved model.
"""

import json
from pathlib import Path

import equinox as eqx
from jaxtyping import PyTree

from dgm import runs

FORMAT = "dgm-checkpoint-v2"
FORMATS = ("dgm-checkpoint-v1", FORMAT)
# How long a run goes on, how often it saves and how its final model is scored are not part
# of what it is: a run may be resumed with more epochs (extend it), with as many as it has
# done (end it and score the best model now), with another checkpoint interval, or with
# other final-score settings (importance samples and images, picture sizes); settings that
# validation uses, which picks the model, stay part of it.
NOT_IDENTITY_FIELDS = frozenset({
    "num_epochs", "checkpoint_every",
    "is_images", "est_marglik", "is_chunk", "test_samples", "num_images",
})  # fmt: skip


def run_identity(config):
    """``config`` (nested dicts) without its :data:`NOT_IDENTITY_FIELDS`, at any depth."""
    if not isinstance(config, dict):
        return config
    return {k: run_identity(v) for k, v in config.items() if k not in NOT_IDENTITY_FIELDS}


def same_fingerprint(saved: str | None, current: str) -> bool:
    """Whether two config fingerprints describe one run, whatever their
    :data:`NOT_IDENTITY_FIELDS`."""
    if saved == current or not isinstance(saved, str):
        return saved == current
    try:
        a, b = json.loads(saved), json.loads(current)
    except ValueError:
        return False
    return isinstance(a, dict) and run_identity(a) == run_identity(b)


def save_checkpoint(path: Path, tree: PyTree, header: dict) -> None:
    """Write a JSON header line, then the Equinox-serialised ``tree``, atomically."""
    with runs.atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(json.dumps(runs._to_jsonable(header)).encode() + b"\n")
        eqx.tree_serialise_leaves(f, tree)


def read_header(path: Path) -> dict:
    """The JSON header of a checkpoint.

    Raises:
        ValueError: the file is not a dgm checkpoint of a known format.
    """
    with open(path, "rb") as f:
        return _read_header(f, path)


def _read_header(f, path: Path) -> dict:
    try:
        header = json.loads(f.readline())
    except ValueError:
        raise ValueError(f"{path} is not a dgm checkpoint (unreadable header)") from None
    if not isinstance(header, dict) or header.get("format") not in FORMATS:
        raise ValueError(f"{path} is not a dgm checkpoint; expected format {' or '.join(FORMATS)}")
    return header


def load_checkpoint(path: Path, like: PyTree, fingerprint: str) -> tuple[PyTree, dict]:
    """Read a checkpoint written by :func:`save_checkpoint` into the structure of ``like``.

    Args:
        path: the checkpoint file.
        like: a tree of the saved structure (shapes and dtypes) to fill.
        fingerprint: the config's text form; a checkpoint of another config is refused
            (one that differs only in :data:`NOT_IDENTITY_FIELDS` is the same run).

    Returns:
        ``(tree, header)``.

    Raises:
        ValueError: the file is not a dgm checkpoint, or was written by another config.
    """
    with open(path, "rb") as f:
        header = _read_header(f, path)
        if not same_fingerprint(header.get("fingerprint"), fingerprint):
            raise ValueError(
                f"checkpoint {path} was written by a different configuration; resume with the "
                "same config or start a new run directory"
            )
        return runs.read_leaves(f, like, path, "checkpoint "), header


def load_training(
    path: Path, like: tuple[PyTree, PyTree, PyTree, PyTree | None], fingerprint: str
) -> tuple[tuple[PyTree, PyTree, PyTree, PyTree | None], dict]:
    """Read ``(model, opt_state, best_model, averaged)`` from a v2 or v1 checkpoint.

    A v1 file (no average) or a v2 file written without one gives ``averaged = model``
    when ``like`` asks for an average, and ``None`` otherwise.
    """
    model, opt_state, best, averaged = like
    header = read_header(path)
    has_average = header["format"] == FORMAT and header.get("averaged", False)
    if has_average and averaged is None:
        raise ValueError(
            f"checkpoint {path} holds a weight average; resume with the same `ema_decay`"
        )
    tree = (model, opt_state, best, averaged if has_average else None)
    (model, opt_state, best, saved_avg), header = load_checkpoint(path, tree, fingerprint)
    if averaged is not None and not has_average:
        saved_avg = model
    return (model, opt_state, best, saved_avg), header
