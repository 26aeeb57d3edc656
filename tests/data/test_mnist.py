"""MNIST loaders: checksums, IDX validation, the real files, downloads from a local server."""

import gzip
import shutil

import numpy as np
import pytest

from dgm.data import ChecksumError, mnist, sha256


def _idx(shape, data: bytes, magic: bytes = b"\0\0\x08") -> bytes:
    header = magic + bytes([len(shape)]) + np.asarray(shape, ">i4").tobytes()
    return gzip.compress(header + data, mtime=0)


def test_read_idx_round_trip(tmp_path):
    x = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.gz"
    path.write_bytes(_idx(x.shape, x.tobytes()))
    np.testing.assert_array_equal(mnist.read_idx(path), x)


@pytest.mark.parametrize(
    "payload, match",
    [
        (_idx((2, 3), bytes(5)), "need 6 data bytes; got 5"),
        (_idx((2, 3), bytes(7)), "need 6 data bytes; got 7"),
        (_idx((6,), bytes(6), magic=b"\0\0\x0d"), "bad IDX magic number"),
        (_idx((6,), bytes(6), magic=b"\x01\0\x08"), "bad IDX magic number"),
        (_idx((), bytes(1)), "bad IDX magic number"),  # zero dimensions: no array
        (gzip.compress(b"\0\0\x08\x03\0\0", mtime=0), "truncated IDX header"),
        (_idx((2, 3), bytes(6))[:-9], "not a whole gzip file"),
        (b"plain bytes", "not a whole gzip file"),
    ],
)
def test_bad_idx_raises_naming_the_file(tmp_path, payload, match):
    path = tmp_path / "broken-idx1-ubyte.gz"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match=match) as info:
        mnist.read_idx(path)
    assert "broken-idx1-ubyte.gz" in str(info.value)


def test_truncated_real_idx_file_is_refused(tmp_path, shared_data):
    src = shared_data / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = gzip.decompress(src.read_bytes())
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(ChecksumError, match="t10k-labels-idx1-ubyte.gz"):
        mnist.load_mnist_test_labels(tmp_path)
    with pytest.raises(ValueError, match="need 10000 data bytes; got 9990"):
        mnist.read_idx(path)


def test_checksum_mismatch_names_the_file(tmp_path, shared_data):
    npz = tmp_path / mnist.BINARIZED_NPZ
    shutil.copy(shared_data / "binarized_mnist" / mnist.BINARIZED_NPZ, npz)
    with open(npz, "r+b") as f:  # flip one byte in the middle
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(ChecksumError, match="binarized_mnist.npz"):
        mnist.load_binarized_mnist("test", tmp_path)


def test_bad_arguments_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match="`split` must be one of"):
        mnist.load_binarized_mnist("validation", tmp_path)
    with pytest.raises(FileNotFoundError, match="allow_download=True"):
        mnist.load_binarized_mnist("test", tmp_path)
    with pytest.raises(FileNotFoundError, match="t10k-images-idx3-ubyte.gz"):
        mnist.load_mnist_test_images(tmp_path)


def test_real_binarized_splits(shared_data):
    root = shared_data / "binarized_mnist"
    means = {"train": 0.13056, "valid": 0.13113, "test": 0.13251}  # PROVENANCE.md
    for split, size in mnist.SPLIT_SIZES.items():
        x = mnist.load_binarized_mnist(split, root)
        assert x.shape == (size, 784) and x.dtype == np.uint8
        assert set(np.unique(x).tolist()) == {0, 1}
        assert abs(x.mean() - means[split]) < 5e-6


def test_real_idx_files(shared_data):
    root = shared_data / "mnist"
    images = mnist.load_mnist_test_images(root)
    labels = mnist.load_mnist_test_labels(root)
    train_labels = mnist.load_mnist_train_labels(root)
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert images.min() == 0 and images.max() == 255
    assert labels.shape == (10_000,) and train_labels.shape == (60_000,)
    counts = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]  # PROVENANCE.md
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)
    assert set(np.unique(train_labels).tolist()) == set(range(10))


def test_download_idx_from_local_server(http_dir, tmp_path, shared_data):
    served, url = http_dir
    name = "t10k-labels-idx1-ubyte.gz"
    shutil.copy(shared_data / "mnist" / name, served / name)
    root = tmp_path / "data"
    labels = mnist.load_mnist_test_labels(root, allow_download=True, base_url=url + "/")
    assert labels.shape == (10_000,)
    assert sha256(root / name) == mnist.MNIST_SHA256[name]
    # a corrupt copy on the server is refused and leaves nothing behind
    (served / name).write_bytes(b"junk")
    (root / name).unlink()
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        mnist.load_mnist_test_labels(root, allow_download=True, base_url=url + "/")
    assert list(root.iterdir()) == []


def test_download_binarized_text_from_local_server(http_dir, tmp_path, shared_data):
    """The original text file is downloaded, checked and parsed; a local server stands in
    for Larochelle's site, serving the test split rebuilt from the verified npz."""
    served, url = http_dir
    x = mnist.load_binarized_mnist("test", shared_data / "binarized_mnist")
    text = np.full((len(x), 2 * 784), ord(" "), np.uint8)
    text[:, 0::2] = x + ord("0")
    text[:, -1] = ord("\n")
    (served / "binarized_mnist_test.amat").write_bytes(text.tobytes())
    root = tmp_path / "data"
    got = mnist.load_binarized_mnist("test", root, allow_download=True, base_url=url + "/")
    np.testing.assert_array_equal(got, x)
    assert (root / "binarized_mnist_test.amat").exists()


def test_bad_binarized_text_names_the_file(tmp_path):
    path = tmp_path / "bad.amat"
    path.write_bytes(b"0 2 " * 392)
    with pytest.raises(ValueError, match="bad.amat: pixels must be"):
        mnist.read_binarized_text(path)
    path.write_bytes(b"0 1")
    with pytest.raises(ValueError, match="bad.amat: size 3"):
        mnist.read_binarized_text(path)


def test_evenly_spaced_keeps_the_order_and_takes_all_when_asked_for_more():
    x = np.arange(10_000)
    sub = mnist.evenly_spaced(x, 1000)
    assert len(sub) == 1000 and sub[0] == 0 and sub[-1] == 9999
    assert np.all(np.diff(sub) >= 10) and np.all(np.diff(sub) <= 11)
    np.testing.assert_array_equal(mnist.evenly_spaced(x[:5], 7), x[:5])


def test_test_subsets_are_spread_over_the_class_ordered_test_file(shared_data, monkeypatch):
    """The binarized test file is ordered by class (980 zeros first): its first 1000 images
    have 28 % more ink than the set; the subsets the experiments score keep the classes."""
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    full = mnist.load_binarized_mnist("test").mean()
    assert mnist.load_binarized_mnist("test")[:1000].mean() > 1.2 * full  # the ordering
    _, _, test = mnist.binarized_splits(10, 10, 1000)
    assert test.shape == (1000, 784) and abs(test.mean() - full) < 0.01 * full
    # on the sorted labels, every class keeps its share to within one image
    labels = np.sort(mnist.load_mnist_test_labels())
    share = np.bincount(mnist.evenly_spaced(labels, 1000), minlength=10)
    assert np.all(np.abs(share - np.bincount(labels) / 10) <= 1)


def test_binarized_splits_take_each_split_from_its_own_file(monkeypatch):
    rows = np.arange(20, dtype=np.uint8)[:, None] * np.ones(784, np.uint8)
    files = {split: rows + 50 * i for i, split in enumerate(mnist.SPLITS)}
    monkeypatch.setattr(mnist, "load_binarized_mnist", lambda split: files[split])
    train, valid, test = mnist.binarized_splits(3, 2, 4)
    assert train.dtype == valid.dtype == test.dtype == np.float32
    np.testing.assert_array_equal(train, files["train"][:3])
    np.testing.assert_array_equal(valid, files["valid"][:2])
    np.testing.assert_array_equal(test, files["test"][[0, 6, 12, 19]])
