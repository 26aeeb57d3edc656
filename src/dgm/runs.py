"""Run directories: atomic file writes, checkpoints, resolved configs and versions.

Every experiment writes into one directory. Files are replaced atomically (write to a
temporary file in the same directory, flush, fsync, rename), so an interrupted run
never leaves a half-written file, and the last good checkpoint survives a crash.
"""

import contextlib
import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` on success.

    In a run of several processes (:mod:`dgm.distributed`) only process 0 writes: the
    others write to a scratch file that is then deleted.
    """
    path = Path(path)
    if not _is_writer():
        with tempfile.TemporaryDirectory() as scratch:
            yield Path(scratch) / path.name
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        tmp_path.chmod(file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _is_writer() -> bool:
    from dgm.distributed import is_main_process

    return is_main_process()


def file_mode() -> int:
    """The mode a plain ``open`` gives a new file (0666 less the umask); ``mkstemp``'s
    temporaries are 0600 until given it.

    The umask is read from ``/proc/self/status`` where there is one (Linux): reading it with
    ``os.umask`` sets it for the whole process for a moment, and a folder another thread
    made then was world-writable (0777)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def read_json(path: str | os.PathLike, lines: bool = False) -> Any:
    """A JSON file (``lines``: a list, one value per non-empty line), or a ``ValueError``
    naming the file and where it is not JSON."""
    text = Path(path).read_text()
    try:
        if lines:
            return [json.loads(line) for line in text.splitlines() if line]
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from None


def read_leaves(f, like: Any, path: str | os.PathLike, what: str = "") -> Any:
    """``eqx.tree_deserialise_leaves(f, like)``, or a ``ValueError`` naming the file
    (``what``, e.g. ``"checkpoint "``, before its path) when it is corrupt or truncated."""
    import equinox as eqx

    try:
        return eqx.tree_deserialise_leaves(f, like)
    except (RuntimeError, ValueError, OSError, EOFError) as err:
        raise ValueError(f"{what}{path} is corrupt or truncated ({err})") from None


def write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _to_jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: _to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray) or hasattr(obj, "__array__") and not np.isscalar(obj):
        return _to_jsonable(np.asarray(obj).tolist())
    if isinstance(obj, np.generic):  # as the Python number it equals: NaN, ±inf below
        return _to_jsonable(obj.item())
    if isinstance(obj, float) and not np.isfinite(obj):
        return None if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, Path):
        return str(obj)
    return obj


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` (dataclasses, arrays and NumPy scalars allowed) as JSON, atomically."""
    write_text(path, json.dumps(_to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def save_npz(path: str | os.PathLike, **arrays: Any) -> None:
    """Save arrays to an ``.npz`` file atomically (no pickles: object arrays are refused)."""
    arrays = {k: np.asarray(v) for k, v in arrays.items()}
    for name, value in arrays.items():
        if value.dtype.hasobject:
            raise ValueError(f"`{name}` must be a numeric array; got dtype {value.dtype}")
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an ``.npz`` file written by :func:`save_npz` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


def stop_if_interrupted(result: Any) -> Any:
    """Return ``result``, or raise ``KeyboardInterrupt`` if Ctrl-C ended the run it describes.

    The drivers (``ChainRunner``, ``SVGDRunner``) return what they finished when the user
    presses Ctrl-C, so library callers keep it; an experiment stops there instead, and the
    CLI prints its one line and exits 130 (the driver's checkpoint, if any, is kept).
    """
    if result.interrupted:
        raise KeyboardInterrupt
    return result


def git_revision() -> str | None:
    """The git commit of the dgm checkout, if it is one, with ``+dirty`` when tracked files
    have uncommitted changes (the commit alone would not say what ran)."""

    def git(*args):
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", *args], cwd=here, capture_output=True, text=True, timeout=5)

    try:
        head = git("rev-parse", "HEAD")
        if head.returncode or not head.stdout.strip():
            return None
        dirty = git("status", "--porcelain", "--untracked-files=no").stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty else "")


def versions() -> dict[str, str | None]:
    """Versions of Python, dgm and the numerical stack, plus the git revision."""
    from importlib import metadata

    result: dict[str, str | None] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    for name in ("dgm", "jax", "jaxlib", "equinox", "optax", "numpy", "scipy", "arviz"):
        try:
            result[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            result[name] = None
    result["git"] = git_revision()
    return result


@dataclasses.dataclass
class RunContext:
    """Where a run writes, and whether it continues an earlier one.

    Attributes:
        out: the run directory.
        resume: continue from the checkpoints in ``out`` instead of starting afresh.
        progress: show progress bars.
        time_limit_s: seconds of training after which a training run stops, checkpointed
            (``dgm run --time-limit``; :func:`dgm.training.fit`'s ``time_limit_s``), or
            ``None``.
    """

    out: Path
    resume: bool = False
    progress: bool = True
    time_limit_s: float | None = None

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "checkpoints").mkdir(exist_ok=True)

    def path(self, name: str) -> Path:
        return self.out / name

    def checkpoint_path(self, name: str) -> Path:
        return self.out / "checkpoints" / f"{name}.npz"

    def load_checkpoint(self, name: str) -> dict[str, np.ndarray] | None:
        """The named checkpoint when resuming and it exists, else ``None``."""
        path = self.checkpoint_path(name)
        if self.resume and path.exists():
            return load_npz(path)
        return None

    def save_checkpoint(self, name: str, **arrays: Any) -> None:
        save_npz(self.checkpoint_path(name), **arrays)

    def save_figure(self, name: str, fig: Any) -> None:
        """Save a matplotlib figure atomically and close it."""
        import matplotlib.pyplot as plt

        suffix = Path(name).suffix.lstrip(".") or "png"
        with atomic_path(self.path(name)) as tmp:
            fig.savefig(tmp, format=suffix, dpi=110, bbox_inches="tight")
        plt.close(fig)

    def save_with(self, name: str, writer: Callable[[Path], None]) -> None:
        """Write ``name`` through ``writer(tmp_path)``, atomically."""
        with atomic_path(self.path(name)) as tmp:
            writer(tmp)
