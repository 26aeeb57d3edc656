"""Polyphonic loaders: published splits, checksums, corrupt files, download over HTTP."""

import shutil

import numpy as np
import pytest

from dgm.data import ChecksumError
from dgm.data import polyphonic as poly


@pytest.fixture(scope="module")
def music(shared_data):
    return shared_data / "polyphonic_music"


def test_jsb_splits_match_published_counts(music):
    data = poly.load_polyphonic("jsb", music)
    counts = {k: (len(v.lengths), v.num_frames) for k, v in data.items()}
    assert counts == {"train": (229, 13807), "valid": (76, 4602), "test": (77, 4725)}
    test = data["test"]
    assert test.x.shape == (77, 160, 88) and test.x.dtype == np.float32
    assert np.all(np.diff(test.lengths) >= 0)  # sorted ascending
    assert test.mask.sum() == 4725 and np.all(test.x.sum(-1)[test.mask == 0] == 0)
    assert 3.8 < test.x.sum() / test.num_frames < 4.0  # mean notes per frame (PROVENANCE)


def test_unknown_dataset_name(music):
    with pytest.raises(ValueError, match=r"`dataset` must be one of .* got 'bach'"):
        poly.load_polyphonic("bach", music)


def test_corrupt_and_truncated_files(music, tmp_path):
    data = (music / "JSB_Chorales.npz").read_bytes()
    (tmp_path / "JSB_Chorales.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        poly.load_polyphonic("jsb", tmp_path)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        poly.read_npz_rolls(tmp_path / "JSB_Chorales.npz")
    bad = tmp_path / "bad.npz"
    np.savez(
        bad,
        **{
            f"{s}_{k}": v
            for s in poly.SPLITS
            for k, v in [("lengths", np.array([2])), ("rolls", np.full((2, 88), 2, np.uint8))]
        },
    )
    with pytest.raises(ValueError, match="must be binary"):
        poly.read_npz_rolls(bad)
    with pytest.raises(FileNotFoundError, match="allow_download"):
        poly.load_polyphonic("jsb", tmp_path / "empty")


def test_download_verifies_and_loads_mat(music, http_dir, tmp_path):
    served, url = http_dir
    shutil.copy(music / "JSB_Chorales.mat", served / "JSB_Chorales.mat")
    dest = tmp_path / "dl"
    poly.download_polyphonic("jsb", dest, base_url=f"{url}/")
    from_mat = poly.load_polyphonic("jsb", dest)
    from_npz = poly.load_polyphonic("jsb", music)
    for split in poly.SPLITS:
        np.testing.assert_array_equal(from_mat[split].x, from_npz[split].x)


def test_download_of_corrupt_file_leaves_nothing(music, http_dir, tmp_path):
    served, url = http_dir
    (served / "JSB_Chorales.mat").write_bytes((music / "JSB_Chorales.mat").read_bytes()[:1000])
    dest = tmp_path / "dl"
    with pytest.raises(ChecksumError):
        poly.load_polyphonic("jsb", dest, allow_download=True, base_url=f"{url}/")
    assert not any(dest.iterdir())


def _rolls_npz(path, lengths):
    rng = np.random.default_rng(0)
    arrays = {}
    for s in poly.SPLITS:
        arrays[f"{s}_lengths"] = np.asarray(lengths)
        arrays[f"{s}_rolls"] = rng.integers(0, 2, (sum(lengths), 88), dtype=np.uint8)
    np.savez(path, **arrays)
    return arrays


def test_npz_rolls_split_at_the_lengths_and_an_empty_sequence_is_refused(tmp_path):
    arrays = _rolls_npz(tmp_path / "ok.npz", [3, 1, 2])
    seqs = poly.read_npz_rolls(tmp_path / "ok.npz")["valid"]
    rolls = arrays["valid_rolls"]
    for got, want in zip(seqs, [rolls[:3], rolls[3:4], rolls[4:6]], strict=True):
        np.testing.assert_array_equal(got, want)
    _rolls_npz(tmp_path / "empty.npz", [3, 0, 3])
    with pytest.raises(ValueError, match="`train_lengths` must be positive"):
        poly.read_npz_rolls(tmp_path / "empty.npz")
