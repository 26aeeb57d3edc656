"""MNIST: the fixed binarization (Larochelle & Murray 2011) and the original IDX test files.

- :func:`load_binarized_mnist`: 50,000 / 10,000 / 10,000 binary images (train / valid /
  test) of 784 pixels, from ``binarized_mnist/binarized_mnist.npz`` (bit-packed arrays, numpy
  only), else from Larochelle's original text files, which it can download.
- :func:`load_mnist_test_images`, :func:`load_mnist_test_labels`,
  :func:`load_mnist_train_labels`: the original gzip IDX files in ``mnist/``.

Every file is checked against its sha256 before it is parsed; nothing is unpickled.

References:
    H. Larochelle and I. Murray, "The Neural Autoregressive Distribution Estimator",
    AISTATS 2011. Y. LeCun, C. Cortes, C. J. C. Burges, "The MNIST database of handwritten
    digits", 1998.
"""

import gzip
import zipfile
import zlib
from pathlib import Path

import numpy as np

from dgm.data import DOWNLOAD_HINT, data_dir, downloads_allowed, fetch, verify

NUM_PIXELS = 784
SPLITS = ("train", "valid", "test")
SPLIT_SIZES = {"train": 50_000, "valid": 10_000, "test": 10_000}
BINARIZED_NPZ = "binarized_mnist.npz"
BINARIZED_NPZ_SHA256 = "50de2c8299a5a297789293ab2c30f6fc3cb8c359a15e5e88d5501aa18ebb8fa5"
# Larochelle's original text files (sha256 as recorded by tensorflow/datasets).
BINARIZED_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
BINARIZED_TEXT_SHA256 = {
    "train": "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    "valid": "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    "test": "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
}
# The official site; pass ``base_url`` for a mirror (e.g. ossci-datasets.s3.amazonaws.com/mnist/).
MNIST_URL = "https://yann.lecun.com/exdb/mnist/"
MNIST_SHA256 = {
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "train-labels-idx1-ubyte.gz": (
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"
    ),
}
_IDX_DTYPES = {0x08: np.dtype(np.uint8)}  # MNIST uses only unsigned bytes


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {list(SPLITS)}; got {split!r}")


def read_binarized_npz(path: str | Path, split: str) -> np.ndarray:
    """One split of the bit-packed ``.npz`` as ``(N, 784)`` uint8 in {0, 1}.

    Raises:
        ValueError: the file is corrupt or truncated, lacks the split, or has the wrong shape.
    """
    _check_split(split)
    path = Path(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            if split not in data.files:
                raise ValueError(f"{path} lacks the array {split!r}; found {data.files}")
            packed = data[split]
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as err:
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    if packed.dtype != np.uint8 or packed.ndim != 2 or packed.shape[1] != NUM_PIXELS // 8:
        raise ValueError(
            f"{path}: `{split}` must be uint8 of shape (N, 98); got {packed.dtype} {packed.shape}"
        )
    return np.unpackbits(packed, axis=1, count=NUM_PIXELS)


def read_binarized_text(path: str | Path) -> np.ndarray:
    """Larochelle's text format (784 space-separated 0/1 digits per line) as ``(N, 784)`` uint8.

    Raises:
        ValueError: the file is not in that format (the message names it).
    """
    path = Path(path)
    raw = np.frombuffer(path.read_bytes(), np.uint8)
    line = 2 * NUM_PIXELS
    if raw.size == 0 or raw.size % line:
        raise ValueError(f"{path}: size {raw.size} is not a multiple of {line} bytes per image")
    rows = raw.reshape(-1, line)
    digits, seps = rows[:, 0::2], rows[:, 1::2]
    if not np.all((digits == ord("0")) | (digits == ord("1"))):
        raise ValueError(f"{path}: pixels must be the digits 0 or 1")
    if not (np.all(seps[:, :-1] == ord(" ")) and np.all(seps[:, -1] == ord("\n"))):
        raise ValueError(f"{path}: expected 784 values separated by spaces on each line")
    return digits - np.uint8(ord("0"))


def load_binarized_mnist(
    split: str,
    root: str | Path | None = None,
    *,
    allow_download: bool | None = None,
    base_url: str = BINARIZED_URL,
) -> np.ndarray:
    """The fixed binarized MNIST split ``"train"`` (50k), ``"valid"`` (10k) or ``"test"`` (10k).

    Reads ``binarized_mnist.npz`` when present (checked against its sha256), else
    ``binarized_mnist_<split>.amat``, Larochelle's text file, downloaded when allowed.

    Args:
        split: which split.
        root: the folder (default ``data_dir() / "binarized_mnist"``).
        allow_download: fetch the original text file when no file is present (default:
            :func:`~dgm.data.downloads_allowed`, i.e. ``DGM_DOWNLOAD=1``).
        base_url: where the text files are (a mirror, or a local server in tests).

    Returns:
        ``(N, 784)`` uint8 pixels in {0, 1}, row-major 28x28 images. The train and valid
        files are shuffled; the test file is ordered by digit class (take a subset of it
        with :func:`evenly_spaced`, not its first images).

    Raises:
        ValueError: unknown split; a corrupt file (a ``ChecksumError`` on a sha256 mismatch).
        FileNotFoundError: no file and no download allowed, or the download failed.
    """
    _check_split(split)
    root = Path(root) if root is not None else data_dir() / "binarized_mnist"
    npz, text = root / BINARIZED_NPZ, root / f"binarized_mnist_{split}.amat"
    if npz.exists():
        x = read_binarized_npz(verify(npz, BINARIZED_NPZ_SHA256), split)
    elif text.exists() or downloads_allowed(allow_download):
        url = base_url + text.name
        x = read_binarized_text(fetch(text, BINARIZED_TEXT_SHA256[split], url))
    else:
        raise FileNotFoundError(f"{npz} (or {text.name}) not found; {DOWNLOAD_HINT}")
    if len(x) != SPLIT_SIZES[split]:
        raise ValueError(f"{split} split has {len(x)} images; expected {SPLIT_SIZES[split]}")
    return x


def evenly_spaced(images: np.ndarray, num: int) -> np.ndarray:
    """``num`` of ``images`` evenly spaced over the whole array (all of them when ``num`` is
    at least their number), in order.

    Use it for any subset of the fixed binarized test set: that file is ordered by digit
    class (its first 980 images are zeros, then the ones), so its first ``num`` images are
    not a sample of the test set; every ``len / num``-th image keeps the class proportions.
    """
    if num >= len(images):
        return images
    return images[np.linspace(0, len(images) - 1, num).astype(int)]


def binarized_splits(
    num_train: int, num_valid: int, num_test: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(train, valid, test)`` of the fixed binarized MNIST as float32 ``(N, 784)``: the
    first ``num_train`` and ``num_valid`` images (those files are shuffled) and
    ``num_test`` test images :func:`evenly_spaced` over the class-ordered test file."""
    as_float = lambda a: np.asarray(a, np.float32)  # noqa: E731
    return (
        as_float(load_binarized_mnist("train")[:num_train]),
        as_float(load_binarized_mnist("valid")[:num_valid]),
        as_float(evenly_spaced(load_binarized_mnist("test"), num_test)),
    )


def read_idx(path: str | Path) -> np.ndarray:
    """A gzip-compressed IDX file (LeCun's format) as a NumPy array.

    The header is two zero bytes, a type code (0x08: uint8), the number of dimensions, then
    each size as a big-endian int32; the data follow.

    Raises:
        ValueError: not gzip, truncated, a bad magic number, or a size that does not match
            the data (the message names the file).
    """
    path = Path(path)
    try:
        raw = gzip.decompress(path.read_bytes())
    except (gzip.BadGzipFile, EOFError, zlib.error) as err:
        raise ValueError(f"{path} is not a whole gzip file ({type(err).__name__}: {err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"{path}: bad IDX magic number {raw[:4].hex()}; expected 0x0000080N")
    ndim, dtype = raw[3], _IDX_DTYPES[raw[2]]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int(s) for s in np.frombuffer(raw, ">i4", ndim, 4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(
            f"{path}: IDX sizes {shape} need {expected} data bytes; got {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape)


def _load_idx(
    name: str, shape: tuple[int, ...], root, allow_download: bool | None, base_url: str
) -> np.ndarray:
    root = Path(root) if root is not None else data_dir() / "mnist"
    path = fetch(
        root / name,
        MNIST_SHA256[name],
        base_url + name,
        download_ok=downloads_allowed(allow_download),
    )
    x = read_idx(path)
    if x.shape != shape:
        raise ValueError(f"{path}: expected shape {shape}; got {x.shape}")
    return x


def load_mnist_test_images(
    root: str | Path | None = None, *, allow_download: bool | None = None, base_url: str = MNIST_URL
) -> np.ndarray:
    """The 10,000 grayscale MNIST test images, ``(10000, 28, 28)`` uint8 in 0..255.

    Args:
        root: the folder (default ``data_dir() / "mnist"``).
        allow_download: fetch ``t10k-images-idx3-ubyte.gz`` when missing (default:
            ``DGM_DOWNLOAD=1``).
        base_url: where the IDX files are (a mirror, or a local server in tests).

    Raises:
        FileNotFoundError: missing and not downloadable.
        ValueError: a corrupt file (a ``ChecksumError`` on a sha256 mismatch).
    """
    return _load_idx("t10k-images-idx3-ubyte.gz", (10_000, 28, 28), root, allow_download, base_url)


def load_mnist_test_labels(
    root: str | Path | None = None, *, allow_download: bool | None = None, base_url: str = MNIST_URL
) -> np.ndarray:
    """The 10,000 MNIST test labels, ``(10000,)`` uint8 in 0..9.

    Arguments and errors as in :func:`load_mnist_test_images`.
    """
    return _load_idx("t10k-labels-idx1-ubyte.gz", (10_000,), root, allow_download, base_url)


def load_mnist_train_labels(
    root: str | Path | None = None, *, allow_download: bool | None = None, base_url: str = MNIST_URL
) -> np.ndarray:
    """The 60,000 MNIST training labels, ``(60000,)`` uint8 (see :func:`load_mnist_test_images`)."""
    return _load_idx("train-labels-idx1-ubyte.gz", (60_000,), root, allow_download, base_url)
