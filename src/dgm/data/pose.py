"""The shipped parts of the pose model, checked against their sha256, and the scenes.

Files (under the data directory, see ``dgm/PROVENANCE.md`` there):
``dgm/bone-length-log-normal/{params.npz, lengths_order.json}`` and
``dgm/joint-angles-sin-cos-vae-decoder/{params.npz, fixed_angles.json, skeleton.bvh}``, plus
the thesis's RMSE curves ``dgm/phd-thesis-reference/binocular-pose-rmse-{chmc,hmc}-{1,2}.csv``.
Nothing is unpickled (``allow_pickle=False``). A missing file is downloaded from its
source repository at the snapshot commit (:data:`SOURCES`) when downloads are allowed
(:func:`dgm.data.downloads_allowed`: ``dgm run --download``).
"""

import json
import zipfile
from pathlib import Path

import numpy as np

from dgm.data import data_dir, downloads_allowed, fetch

BONES = "dgm/bone-length-log-normal"
ANGLES = "dgm/joint-angles-sin-cos-vae-decoder"
THESIS = "dgm/phd-thesis-reference"
SHA256 = {
    f"{BONES}/lengths_order.json": (
        "60689a7a9363f69e62ff8c8d0cb9c675da6969fc18d2867e988a9e28d1154580"
    ),
    f"{BONES}/params.npz": "6eb12112ada58ecdb55c7934db24597ffdb8cc39e8f3911e468d1a22f6d81880",
    f"{ANGLES}/fixed_angles.json": (
        "14b6201a194219a46d3960f8ae503e35e1fc033c38826d5ba7dadf2f0a367bfd"
    ),
    f"{ANGLES}/model_arch.json": "156b50aa2b97c60bf1520051f14d5636f48d1706e8a904306c7803a515de54f8",
    f"{ANGLES}/params.npz": "9a8bc54e1c66441bdfea547dc9ff2ef7537319de201f0364494a012490e7eb50",
    f"{ANGLES}/skeleton.bvh": "5971775215bbe87d07f8a2daa7626ea75364cc213a2a07e6bf51616bbff70830",
    f"{THESIS}/binocular-pose-rmse-chmc-1.csv": (
        "af3332a79f4b82d6ae7755abfab2e9b80f75b00b8d18ba7f21fbd85c7d86741a"
    ),
    f"{THESIS}/binocular-pose-rmse-chmc-2.csv": (
        "bccf0a2bf59d940950559e9ae3bef44caf36809d623311a7ca45057f3e6085a8"
    ),
    f"{THESIS}/binocular-pose-rmse-hmc-1.csv": (
        "0f7fc88a43ea68b1a88b36ba51c4e7014e74298507521ef49691738dc680fd45"
    ),
    f"{THESIS}/binocular-pose-rmse-hmc-2.csv": (
        "7c5afc0bfcf34c576cc306d295d1ffac144f8dfe9f1e63a80e28132ed1f0a47c"
    ),
}


_GITHUB = "https://raw.githubusercontent.com/matt-graham"
# The original repositories at the snapshot commits of dgm/PROVENANCE.md.
MODELS_URL = (
    f"{_GITHUB}/differentiable-generative-models/6b450e7a846a416138cb5383a0c574f5cb945843/models"
)
SOURCES = {  # where each folder's files come from
    BONES: f"{MODELS_URL}/bone-length-log-normal",
    ANGLES: f"{MODELS_URL}/joint-angles-sin-cos-vae-decoder",
    THESIS: f"{_GITHUB}/phd-thesis/66c8961900c6523def6334cb33f7195ebd6e96aa/data",
}


def _path(rel: str, root: Path | None, allow_download: bool | None = None) -> Path:
    """The verified file ``rel`` under ``root`` (default the data directory), downloaded
    from :data:`SOURCES` first when it is missing and downloads are allowed."""
    folder, name = rel.rsplit("/", 1)
    url = f"{SOURCES[folder]}/{name}"
    return fetch((root or data_dir()) / rel, SHA256[rel], url, downloads_allowed(allow_download))


def _npz(path: Path, keys: list[str]) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted(set(keys) - set(data.files))
            if missing:
                raise ValueError(f"{path} lacks the arrays {missing}")
            return {k: np.asarray(data[k], dtype=np.float64) for k in keys}
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ValueError(f"{path} is corrupt or truncated ({err})") from None


def load_pose_parts(root: str | Path | None = None, *, allow_download: bool | None = None):
    """The verified parts of the pose model as a :class:`~dgm.models.pose.PoseParts`.

    Args:
        root: the data directory (default :func:`dgm.data.data_dir`).
        allow_download: fetch missing files from :data:`SOURCES` (default:
            :func:`~dgm.data.downloads_allowed`, i.e. ``DGM_DOWNLOAD=1``).

    Raises:
        FileNotFoundError: a file is missing.
        ChecksumError: a file differs from the shipped one.
    """
    from dgm.bvh import read_bvh
    from dgm.models.pose import PoseParts

    root = Path(root) if root is not None else None

    def path(rel: str) -> Path:
        return _path(rel, root, allow_download)

    bones = _npz(path(f"{BONES}/params.npz"), ["mean", "covar_chol"])
    order = json.loads(path(f"{BONES}/lengths_order.json").read_text())
    fixed = json.loads(path(f"{ANGLES}/fixed_angles.json").read_text())
    keys = [f"{p}_{i}" for i in range(7) for p in ("W", "b")]
    weights = _npz(path(f"{ANGLES}/params.npz"), keys)
    skeleton = read_bvh(path(f"{ANGLES}/skeleton.bvh")).skeleton
    return PoseParts(
        skeleton=skeleton,
        fixed_angles={str(k): float(v) for k, v in fixed.items()},
        log_length_mean=bones["mean"],
        log_length_chol=bones["covar_chol"],
        length_order={str(k): int(v) for k, v in order.items()},
        decoder=tuple((weights[f"W_{i}"], weights[f"b_{i}"]) for i in range(7)),
    )


def pose_generator(
    config: str = "notebook", binocular: bool = True, root: str | Path | None = None
):
    """The pose generator with the σ of ``config`` ("notebook": 0.001, "thesis": 0.01).

    Raises:
        ValueError: an unknown ``config``.
    """
    from dgm.models.pose import SIGMA, PoseGenerator

    if config not in SIGMA:
        raise ValueError(f"`config` must be one of {sorted(SIGMA)}; got {config!r}")
    return PoseGenerator.from_parts(load_pose_parts(root), SIGMA[config], binocular)


def thesis_rmse_curve(
    method: str, scene: int, root: str | Path | None = None, *, allow_download: bool | None = None
) -> np.ndarray:
    """The thesis's RMSE curve: ``(100, 2)`` rows of (seconds, RMSE); ``method`` is "chmc"
    or "hmc", ``scene`` 1 or 2 (thesis configuration, mean of 5 chains); ``allow_download``
    as in :func:`load_pose_parts`."""
    if method not in ("chmc", "hmc") or scene not in (1, 2):
        raise ValueError(
            f"thesis curves exist for method 'chmc'/'hmc' and scene 1/2; got {method!r}, {scene!r}"
        )
    rel = f"{THESIS}/binocular-pose-rmse-{method}-{scene}.csv"
    path = _path(rel, Path(root) if root else None, allow_download)
    return np.loadtxt(path, skiprows=1)
