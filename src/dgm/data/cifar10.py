"""CIFAR-10 from either official distribution: the binary records or the Python pickles.

:func:`load_cifar10` returns ``(images, labels)``: uint8 ``(N, 3, 32, 32)`` (channel-first,
R, G, B planes, rows top to bottom) and uint8 ``(N,)`` in 0..9; 50,000 ``train`` images
(``data_batch_1..5``) and 10,000 ``test`` images (``test_batch``).

Where the data come from, in this order, below ``root`` (default ``DGM_DATA_DIR/cifar10``):

1. the official archive (``cifar-10-binary.tar.gz`` or ``cifar-10-python.tar.gz``), checked
   against its sha256 and read member by member (nothing is extracted to disk);
2. the extracted folder (``cifar-10-batches-bin/`` or ``cifar-10-batches-py/``), whose files have
   no published checksums, so only their structure is checked;
3. a download of the archive (verified before it is put in place).

The binary records need no unpickling: each is 1 label byte and 3,072 pixel bytes. The Python
pickles are read by :class:`RestrictedUnpickler`, which builds only dicts, lists, bytes, ints and
NumPy uint8 arrays; any other global (e.g. a pickle whose ``__reduce__`` calls ``os.system``) is
refused before it is called.

References:
    A. Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", tech. report, 2009;
    https://www.cs.toronto.edu/~kriz/cifar.html (file layout and the archives' md5).
"""

import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from dgm.data import data_dir, fetch

URL = "https://www.cs.toronto.edu/~kriz/"
FORMATS = ("binary", "python")
SPLITS = ("train", "test")
# md5: the CIFAR-10 page (URL + "cifar.html"). sha256: as recorded by Keras's
# ``cifar10.load_data`` and torchvision's dataset resources (python archive) and by
# independent downloaders citing the same 170,052,171-byte file (binary archive).
ARCHIVES = {
    "binary": {
        "name": "cifar-10-binary.tar.gz",
        "folder": "cifar-10-batches-bin",
        "suffix": ".bin",
        "size": 170_052_171,
        "md5": "c32a1d4ab5d03f1284b67883e8d87530",
        "sha256": "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
    },
    "python": {
        "name": "cifar-10-python.tar.gz",
        "folder": "cifar-10-batches-py",
        "suffix": "",
        "size": 170_498_071,
        "md5": "c58f30108f718f92721af3b95e74349a",
        "sha256": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    },
}
BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
PIXELS = 3 * 32 * 32
RECORD_BYTES = 1 + PIXELS
# The only globals a CIFAR-10 pickle needs, to rebuild its uint8 array; resolved here rather
# than imported by name (the official files name NumPy 1's ``numpy.core``). Each is allowed
# only as NumPy's pickles use it: ``_reconstruct(ndarray, (0,), b"b")`` makes an empty array
# that the pickle's state then fills (the state's shape must match the bytes that follow),
# and ``dtype`` makes only uint8. So a pickle can neither declare an array larger than the
# file (a few bytes asking for gigabytes) nor build an object array.
_RECONSTRUCT = np.zeros(0).__reduce__()[0]


class _NdarrayType:
    """Stands for ``numpy.ndarray`` in a pickle: an argument of ``_reconstruct``, never called."""

    def __call__(self, *args, **kwargs):
        raise pickle.UnpicklingError("refusing to call numpy.ndarray: only _reconstruct may use it")


_NDARRAY = _NdarrayType()


def _reconstruct(subtype, shape, dtype):
    if not (
        subtype is _NDARRAY
        and isinstance(shape, tuple)
        and shape == (0,)
        and isinstance(dtype, (bytes, str))
        and dtype in (b"b", "b")
    ):
        raise pickle.UnpicklingError(
            "refusing numpy _reconstruct arguments other than NumPy's own (ndarray, (0,), b'b')"
        )
    return _RECONSTRUCT(np.ndarray, (0,), b"b")


def _dtype(*args):
    dtype = np.dtype(*args)
    if dtype != np.uint8:
        raise pickle.UnpicklingError(f"refusing the dtype {dtype}: CIFAR-10 images are uint8")
    return np.dtype(np.uint8, copy=True)  # the pickle's state may set it: not the shared one


_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals a NumPy array needs; all else is refused."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to unpickle the global {module}.{name}: a CIFAR-10 batch holds only "
                "a dict of bytes keys, lists and a uint8 array"
            )
        return _ALLOWED_GLOBALS[module, name]


def read_pickle_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` from the bytes of one Python-version batch file.

    Raises:
        ValueError: the pickle holds anything but the expected dict, or is corrupt or truncated.
    """
    try:
        obj = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as err:
        raise ValueError(f"{source}: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, MemoryError) as err:
        raise ValueError(f"{source} is corrupt or truncated ({type(err).__name__})") from None
    if not isinstance(obj, dict) or not {b"data", b"labels"} <= set(obj):
        keys = sorted(obj, key=repr) if isinstance(obj, dict) else type(obj).__name__
        raise ValueError(f"{source}: expected a dict with b'data' and b'labels'; got {keys}")
    data, labels = obj[b"data"], obj[b"labels"]
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2):
        got = f"{getattr(data, 'dtype', type(data).__name__)} {getattr(data, 'shape', '')}"
        raise ValueError(f"{source}: b'data' must be a uint8 (N, 3072) array; got {got}")
    if data.shape[1] != PIXELS or not isinstance(labels, list) or len(labels) != len(data):
        raise ValueError(
            f"{source}: b'data' must be (N, {PIXELS}) with N labels; got {data.shape} and "
            f"{len(labels) if isinstance(labels, list) else type(labels).__name__} labels"
        )
    bad = [v for v in labels if type(v) is not int or not 0 <= v <= 9]
    if bad:
        raise ValueError(f"{source}: b'labels' must be ints in 0..9; got {bad[0]!r}")
    return _checked(data, np.asarray(labels, dtype=np.int64), source)


def read_binary_batch(raw: bytes, source: str) -> tuple[np.ndarray, np.ndarray]:
    """``(images, labels)`` from the bytes of one binary-version batch file.

    Raises:
        ValueError: the size is not a positive whole number of 3,073-byte records (truncated).
    """
    if len(raw) == 0 or len(raw) % RECORD_BYTES:
        raise ValueError(
            f"{source} is truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not a "
            f"positive multiple of the {RECORD_BYTES}-byte record"
        )
    records = np.frombuffer(raw, np.uint8).reshape(-1, RECORD_BYTES)
    return _checked(records[:, 1:], records[:, 0].astype(np.int64), source)


def _checked(data: np.ndarray, labels: np.ndarray, source: str):
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise ValueError(f"{source}: labels must be in 0..9; got {labels.min()}..{labels.max()}")
    return data.reshape(-1, 3, 32, 32).copy(), labels.astype(np.uint8)


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"`{name}` must be one of {list(choices)}; got {value!r}")


def _read_members(archive: Path, names: list[str]) -> list[bytes]:
    try:
        with tarfile.open(archive, "r:gz") as tar:
            out = []
            for name in names:
                member = tar.getmember(name)  # KeyError when absent
                if not member.isfile():
                    raise ValueError(f"{archive}: {name} is not a regular file")
                out.append(tar.extractfile(member).read())
            return out
    except KeyError as err:
        raise ValueError(f"{archive} lacks the member {err}; is it the right archive?") from None
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise ValueError(
            f"{archive} is corrupt or truncated ({type(err).__name__}: {err})"
        ) from None


def load_cifar10(
    split: str = "train",
    *,
    fmt: str = "binary",
    root: str | Path | None = None,
    url: str | None = None,
    sha256: str | None = None,
    download_ok: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 ``(images, labels)`` of one split (see the module docstring for the sources).

    Args:
        split: ``"train"`` (50,000) or ``"test"`` (10,000).
        fmt: ``"binary"`` (the records, no unpickling) or ``"python"`` (restricted unpickling).
        root: the folder holding the archive or the extracted folder
            (default ``DGM_DATA_DIR/cifar10``).
        url: the archive's URL (default: the official one); for a mirror.
        sha256: the archive's sha256 (default: the official one); for a mirror's copy.
        download_ok: download the archive when neither it nor the extracted folder is there.

    Raises:
        FileNotFoundError: no archive or folder, and no download (or a failed one).
        ChecksumError: the archive does not match its sha256 (corrupt, truncated, other).
        ValueError: a bad argument, or a batch that is truncated, malformed, or a pickle
            that holds anything but the expected arrays.
    """
    _check_choice("split", split, SPLITS)
    _check_choice("fmt", fmt, FORMATS)
    spec = ARCHIVES[fmt]
    root = Path(root) if root is not None else data_dir() / "cifar10"
    archive, folder = root / spec["name"], root / spec["folder"]
    names = [f"{spec['folder']}/{b}{spec['suffix']}" for b in BATCHES[split]]
    if archive.exists() or not folder.is_dir():
        source = url or URL + spec["name"]
        name = f"CIFAR-10 ({fmt} version)"
        path = fetch(archive, sha256 or spec["sha256"], source, download_ok, name)
        raws = _read_members(path, names)  # fetch has verified the archive
    else:
        raws = []
        for name in names:
            path = root / name
            if not path.is_file():
                raise FileNotFoundError(f"CIFAR-10 batch not found: {path}")
            raws.append(path.read_bytes())
    read = read_binary_batch if fmt == "binary" else read_pickle_batch
    parts = [read(raw, name) for raw, name in zip(raws, names, strict=True)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
