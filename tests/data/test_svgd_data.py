"""SVGD dataset loaders: checksums, formats, and a download from a local HTTP server."""

import bz2
import shutil

import numpy as np
import pytest

from dgm.data import ChecksumError, sha256
from dgm.data import svgd as svgd_data

LIBSVM = "1 1:0.5 3:1 54:0.25\n2 2:-1 10:3.5\n1 54:1\n"


def test_covertype_downloads_verifies_and_parses(http_dir, tmp_path):
    root, url = http_dir
    (root / "covtype.bz2").write_bytes(bz2.compress(LIBSVM.encode()))
    digest = sha256(root / "covtype.bz2")
    dest = tmp_path / "cache" / "covtype.bz2"
    x, y = svgd_data.load_covertype(digest, path=dest, url=f"{url}/covtype.bz2")
    assert dest.is_file()
    assert x.shape == (3, 55)
    np.testing.assert_array_equal(y, [1.0, -1.0, 1.0])
    np.testing.assert_array_equal(x[:, -1], 1.0)
    assert x[0, 0] == 0.5 and x[0, 2] == 1.0 and x[0, 53] == 0.25 and x[1, 9] == 3.5
    # a second call uses the verified local file
    x2, _ = svgd_data.load_covertype(digest, path=dest, url=f"{url}/missing", download_ok=False)
    np.testing.assert_array_equal(x, x2)


def test_covertype_bad_checksum_leaves_no_file(http_dir, tmp_path):
    root, url = http_dir
    (root / "covtype.txt").write_text(LIBSVM)
    dest = tmp_path / "cache" / "covtype.txt"
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        svgd_data.load_covertype("0" * 64, path=dest, url=f"{url}/covtype.txt")
    assert not dest.exists()
    with pytest.raises(ValueError, match="`sha256` of the Covertype file is required"):
        svgd_data.load_covertype(None, path=dest, url=f"{url}/covtype.txt")
    with pytest.raises(FileNotFoundError, match="its source: "):
        svgd_data.load_covertype("0" * 64, path=dest, download_ok=False)


def test_covertype_wrong_columns_and_labels(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1 1:0.5 60:1\n")
    with pytest.raises(ValueError, match="feature index 60 outside 1..54; expected 54"):
        svgd_data.load_covertype(sha256(bad), path=bad)
    labels = tmp_path / "labels.txt"
    labels.write_text("0 1:0.5\n")
    with pytest.raises(ValueError, match=r"expected labels in \{1, 2\}"):
        svgd_data.load_covertype(sha256(labels), path=labels)
    garbage = tmp_path / "garbage.txt"
    garbage.write_text("1 1=0.5\n")
    with pytest.raises(ValueError, match="not LIBSVM format"):
        svgd_data.load_covertype(sha256(garbage), path=garbage)


def test_boston_loads_and_checks(shared_data, tmp_path):
    x, y = svgd_data.load_boston(shared_data / "svgd" / "boston_housing")
    assert x.shape == (506, 13) and y.shape == (506,)
    assert y.min() == 5.0 and y.max() == 50.0
    copy = tmp_path / "boston_housing"
    shutil.copy(shared_data / "svgd" / "boston_housing", copy)
    with open(copy, "a") as f:
        f.write("\n")
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        svgd_data.load_boston(copy)
    narrow = tmp_path / "narrow"
    np.savetxt(narrow, np.ones((5, 13)))
    with pytest.raises(ValueError, match=r"expected 14 columns .* got \(5, 13\)"):
        svgd_data.load_boston(narrow, sha256=sha256(narrow))
    with pytest.raises(FileNotFoundError, match="Boston housing not found.*--download"):
        svgd_data.load_boston(tmp_path / "nope", allow_download=False)


def test_boston_downloads_from_its_source_when_allowed(http_dir, tmp_path, shared_data):
    served, url = http_dir
    shutil.copy(shared_data / "svgd" / "boston_housing", served / "boston_housing")
    dest = tmp_path / "svgd" / "boston_housing"
    x, y = svgd_data.load_boston(dest, allow_download=True, url=f"{url}/boston_housing")
    np.testing.assert_array_equal(
        y, svgd_data.load_boston(shared_data / "svgd" / "boston_housing")[1]
    )
    assert x.shape == (506, 13) and sha256(dest) == svgd_data.BOSTON_SHA256


def test_breast_cancer_offline():
    x, y = svgd_data.load_breast_cancer()
    assert x.shape == (569, 31)
    assert set(np.unique(y)) == {-1.0, 1.0}


def test_uci_regression_download_and_shape_checks(http_dir, tmp_path):
    root, url = http_dir
    (root / "yacht.txt").write_text("1 2 3 10\n4,5,6,20\n7 8 9 30\n")
    digest = sha256(root / "yacht.txt")
    dest = tmp_path / "uci" / "yacht.txt"
    x, y = svgd_data.load_uci_regression(
        "yacht", digest, num_columns=4, path=dest, url=f"{url}/yacht.txt"
    )
    assert x.shape == (3, 3)
    np.testing.assert_array_equal(y, [10.0, 20.0, 30.0])
    x0, y0 = svgd_data.load_uci_regression("yacht", digest, target_column=0, path=dest)
    np.testing.assert_array_equal(y0, [1.0, 4.0, 7.0])
    assert x0.shape == (3, 3) and x0[0, -1] == 10.0
    np.testing.assert_array_equal(
        svgd_data.load_uci_regression("yacht", digest, target_column=-4, path=dest)[1], y0
    )
    for outside in (4, -5):  # one past either end of the 4 columns
        with pytest.raises(ValueError, match=f"`target_column` {outside} is outside a table of 4"):
            svgd_data.load_uci_regression("yacht", digest, target_column=outside, path=dest)
    with pytest.raises(ValueError, match="expected 7 columns; got 4"):
        svgd_data.load_uci_regression("yacht", digest, num_columns=7, path=dest)
    with pytest.raises(ChecksumError, match="checksum mismatch"):
        svgd_data.load_uci_regression("yacht", "1" * 64, path=dest)
    with pytest.raises(ValueError, match="`name` must be one of"):
        svgd_data.load_uci_regression("iris", digest, path=dest)
    with pytest.raises(ValueError, match="`sha256` of the wine file is required"):
        svgd_data.load_uci_regression("wine", None)
    with pytest.raises(FileNotFoundError, match="its source: "):
        svgd_data.load_uci_regression("wine", digest, path=tmp_path / "w.txt", download_ok=False)


def test_failed_download_names_path_and_url(http_dir, tmp_path):
    """A file the server does not have (as offline): the error says where it must go."""
    _, url = http_dir
    dest = tmp_path / "uci" / "yacht.txt"
    with pytest.raises(FileNotFoundError, match="yacht not found at .*yacht.txt.*downloading"):
        svgd_data.load_uci_regression("yacht", "0" * 64, path=dest, url=f"{url}/none.txt")
    assert not dest.exists()
    with pytest.raises(FileNotFoundError, match=f"Covertype not found.*{url}/none.bz2"):
        svgd_data.load_covertype("0" * 64, path=tmp_path / "c.bz2", url=f"{url}/none.bz2")


def test_dgm_run_download_flag_fetches_missing_data(http_dir, tmp_path, shared_data, monkeypatch):
    """`dgm run svgd-bnn` on an empty data directory stops naming the file and --download;
    with --download it fetches Boston housing from the source (a local server here) and runs."""
    from dgm import cli

    served, url = http_dir
    shutil.copy(shared_data / "svgd" / "boston_housing", served / "boston_housing")
    monkeypatch.setattr(svgd_data, "BOSTON_URL", f"{url}/boston_housing")
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("DGM_DOWNLOAD", "0")  # restored after the test: the CLI sets it
    args = ["run", "svgd-bnn", "--smoke", "--out", str(tmp_path / "run")]
    assert cli.main(args) == 1
    assert not (tmp_path / "data" / "svgd" / "boston_housing").exists()
    assert cli.main([*args, "--download"]) == 0
    assert sha256(tmp_path / "data" / "svgd" / "boston_housing") == svgd_data.BOSTON_SHA256
    assert (tmp_path / "run" / "metrics.json").exists()
