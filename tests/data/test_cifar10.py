"""dgm.data.cifar10 on synthetic files of both official formats, served from 127.0.0.1."""

import io
import os
import pickle
import re
import struct
import tarfile
import tracemalloc

import numpy as np
import pytest

from dgm.data import ChecksumError, sha256
from dgm.data.cifar10 import ARCHIVES, BATCHES, load_cifar10, read_pickle_batch

PER_BATCH = 3


def _batches(seed=0):
    """Per batch name: (images (n, 3072) uint8, labels list) of distinct random content."""
    rng = np.random.default_rng(seed)
    names = BATCHES["train"] + BATCHES["test"]
    return {
        n: (
            rng.integers(0, 256, (PER_BATCH, 3072), dtype=np.uint8),
            rng.integers(0, 10, PER_BATCH).tolist(),
        )
        for n in names
    }


def _binary(images, labels):
    return np.concatenate([np.asarray(labels, np.uint8)[:, None], images], axis=1).tobytes()


def _pickled(images, labels):
    """Protocol 3: bytes as bytes (the official Python 2 pickles hold str, which
    ``encoding="bytes"`` reads as bytes); protocol 2 would need ``_codecs.encode``."""
    return pickle.dumps(
        {
            b"batch_label": b"synthetic",
            b"labels": labels,
            b"data": images,
            b"filenames": [b"x.png"] * len(labels),
        },
        protocol=3,
    )


def _archive(path, fmt, batches, truncate_member=None):
    spec = ARCHIVES[fmt]
    with tarfile.open(path, "w:gz") as tar:
        for name, (images, labels) in batches.items():
            raw = _binary(images, labels) if fmt == "binary" else _pickled(images, labels)
            if name == truncate_member:
                raw = raw[:-10]
            info = tarfile.TarInfo(f"{spec['folder']}/{name}{spec['suffix']}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return sha256(path)


def _expected(batches, split):
    images = np.concatenate([batches[n][0] for n in BATCHES[split]]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([batches[n][1] for n in BATCHES[split]]).astype(np.uint8)
    return images, labels


@pytest.mark.parametrize("fmt", ["binary", "python"])
def test_download_verify_and_parse_both_formats(fmt, http_dir, tmp_path):
    served, url = http_dir
    batches = _batches()
    name = ARCHIVES[fmt]["name"]
    digest = _archive(served / name, fmt, batches)
    root = tmp_path / "cifar10"
    for split in ("train", "test"):
        images, labels = load_cifar10(split, fmt=fmt, root=root, url=f"{url}/{name}", sha256=digest)
        want_images, want_labels = _expected(batches, split)
        # train: data_batch_1 ... data_batch_5, in order (the official 50,000 images)
        assert images.shape == (PER_BATCH * {"train": 5, "test": 1}[split], 3, 32, 32)
        np.testing.assert_array_equal(images, want_images)
        np.testing.assert_array_equal(labels, want_labels)
    assert sha256(root / name) == digest  # downloaded once, in place
    # R plane first, rows top to bottom: pixel (row 1, col 2) of the green plane
    assert images[0, 1, 1, 2] == batches["test_batch"][0][0, 1024 + 32 + 2]


def test_extracted_folders_are_read_and_checked(tmp_path):
    batches = _batches(1)
    for fmt in ("binary", "python"):
        folder = tmp_path / ARCHIVES[fmt]["folder"]
        folder.mkdir()
        for name, (images, labels) in batches.items():
            raw = _binary(images, labels) if fmt == "binary" else _pickled(images, labels)
            (folder / f"{name}{ARCHIVES[fmt]['suffix']}").write_bytes(raw)
        images, labels = load_cifar10("test", fmt=fmt, root=tmp_path, download_ok=False)
        np.testing.assert_array_equal(images, _expected(batches, "test")[0])
    bad = tmp_path / "cifar-10-batches-bin" / "test_batch.bin"
    bad.write_bytes(bad.read_bytes()[:-1])
    with pytest.raises(
        ValueError, match="test_batch.bin is truncated .* 9218 bytes is not a positive multiple"
    ):
        load_cifar10("test", fmt="binary", root=tmp_path)


def test_numpy1_pickle_names_are_accepted():
    images, labels = _batches(2)["test_batch"]
    raw = _pickled(images, labels).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    np.testing.assert_array_equal(read_pickle_batch(raw, "t")[0].reshape(-1, 3072), images)


def _py2_pickled(images, labels):
    """A batch as the official archive holds it: written by Python 2's cPickle (protocol 2,
    NumPy 1 names), with str (read as bytes) for the keys, the dtype and the pixels."""
    data = images.tobytes()
    return b"".join(
        [
            b"\x80\x02}q\x01(U\x0bbatch_labelq\x02U\x04testq\x03U\x06labelsq\x04]q\x05(",
            b"".join(b"K" + bytes([label]) for label in labels),
            b"eU\x04dataq\x06cnumpy.core.multiarray\n_reconstruct\nq\x07cnumpy\nndarray\nq\x08",
            b"K\x00\x85U\x01b\x87Rq\t(K\x01J" + struct.pack("<i", len(images)),
            b"M\x00\x0c\x86cnumpy\ndtype\nq\nU\x02u1K\x00K\x01\x87Rq\x0b",
            b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89T",
            struct.pack("<I", len(data)) + data + b"tbu.",
        ]
    )


def test_python2_pickles_as_in_the_official_archive_are_read():
    images, labels = _batches(3)["test_batch"]
    got_images, got_labels = read_pickle_batch(_py2_pickled(images, labels), "t")
    np.testing.assert_array_equal(got_images.reshape(-1, 3072), images)
    np.testing.assert_array_equal(got_labels, labels)


def _declaring(count: int, dtype: bytes) -> bytes:
    """A pickle of about 100 bytes whose ``data`` asks numpy for ``count`` elements."""
    n = count.to_bytes(9, "little", signed=True)
    return (
        b"\x80\x02}(C\x04datacnumpy._core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
        + b"\x8a\x09"
        + n
        + b"\x85"
        + dtype
        + b"\x87RC\x06labels]u."
    )


def test_pickles_cannot_declare_huge_or_object_arrays():
    """Refused while unpickling, before numpy allocates what they declare: an object array of
    10^7 elements (80 MB of pointers, all set to None), an array bigger than any memory, a
    direct call of ``numpy.ndarray``."""
    object_dtype = b"cnumpy\ndtype\nX\x01\x00\x00\x00O\x85R"
    huge_call = b"\x80\x02cnumpy\nndarray\n\x8a\x08" + (2**62).to_bytes(8, "little") + b"\x85R."
    cases = [
        (_declaring(10**7, object_dtype), "refusing the dtype object"),
        (_declaring(10**7, b"C\x01b"), "refusing numpy _reconstruct arguments"),
        (_declaring(2**62, b"C\x01b"), "refusing numpy _reconstruct arguments"),
        (huge_call, "refusing to call numpy.ndarray"),
    ]
    tracemalloc.start()
    try:
        for raw, match in cases:
            with pytest.raises(ValueError, match=f"big_batch: {match}"):
                read_pickle_batch(raw, "big_batch")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2**20


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_anything_else_is_refused(tmp_path):
    marker = tmp_path / "ran"
    raw = pickle.dumps({b"data": _Evil(marker), b"labels": [0]}, protocol=3)
    with pytest.raises(ValueError, match=r"refusing to unpickle the global (posix|os|nt)\.system"):
        read_pickle_batch(raw, "evil_batch")
    assert not marker.exists()
    wrong = pickle.dumps({b"data": np.zeros((1, 3072), np.float32), b"labels": [0]}, protocol=3)
    with pytest.raises(ValueError, match="float_batch: refusing the dtype float32"):
        read_pickle_batch(wrong, "float_batch")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        read_pickle_batch(_pickled(*_batches()["test_batch"])[:-20], "cut_batch")


@pytest.mark.parametrize(
    "labels, got",
    [([1.7, 2], "1.7"), (["a", 2], "'a'"), ([None, 2], "None"), ([2**70, 2], str(2**70)),
     ([[1], [2]], "[1]")],
)  # fmt: skip
def test_pickled_labels_must_be_ints_in_range(labels, got):
    """Not truncated (1.7 read as 1), not a (N, 1) array, not numpy's own error."""
    raw = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": labels}, protocol=3)
    with pytest.raises(
        ValueError, match=rf"bad_labels: b'labels' must be ints in 0\.\.9; got {re.escape(got)}"
    ):
        read_pickle_batch(raw, "bad_labels")


def test_pickle_errors_name_the_file():
    """Keys of mixed types, and a size declared larger than any memory."""
    with pytest.raises(
        ValueError, match=r"odd_keys: expected a dict with b'data' .* got \[2, b'x'\]"
    ):
        read_pickle_batch(pickle.dumps({b"x": 1, 2: 3}), "odd_keys")
    huge = b"\x80\x04\x8e" + (2**60).to_bytes(8, "little") + b"abc"  # BINBYTES8 of 2^60 bytes
    with pytest.raises(ValueError, match=r"huge_bytes is corrupt or truncated"):
        read_pickle_batch(huge, "huge_bytes")


def test_wrong_checksum_truncated_and_missing_archives(http_dir, tmp_path):
    served, url = http_dir
    name = ARCHIVES["binary"]["name"]
    digest = _archive(served / name, "binary", _batches())
    with pytest.raises(ChecksumError, match="expected sha256 0000"):
        load_cifar10("test", root=tmp_path / "a", url=f"{url}/{name}", sha256="0" * 64)
    assert not (tmp_path / "a" / name).exists()  # a bad download never lands
    cut = tmp_path / "b" / name
    cut.parent.mkdir()
    cut.write_bytes((served / name).read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="corrupt, truncated"):
        load_cifar10("test", root=cut.parent, sha256=digest)
    bad_member = _archive(tmp_path / "c.tar.gz", "binary", _batches(), truncate_member="test_batch")
    (tmp_path / "c").mkdir()
    os.replace(tmp_path / "c.tar.gz", tmp_path / "c" / name)
    with pytest.raises(ValueError, match="test_batch.bin is truncated"):
        load_cifar10("test", root=tmp_path / "c", sha256=bad_member)
    with pytest.raises(
        FileNotFoundError, match=r"CIFAR-10 \(python version\) not found at .*its source: "
    ):
        load_cifar10("test", fmt="python", root=tmp_path / "d", download_ok=False)


def test_bad_arguments():
    with pytest.raises(
        ValueError, match=r"`split` must be one of \['train', 'test'\]; got 'valid'"
    ):
        load_cifar10("valid")
    with pytest.raises(
        ValueError, match=r"`fmt` must be one of \['binary', 'python'\]; got 'matlab'"
    ):
        load_cifar10("test", fmt="matlab")
