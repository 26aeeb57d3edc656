"""dgm.data.fetch: relative paths below DGM_DATA_DIR, verified downloads, clear errors."""

import os
import stat

import pytest

from dgm.data import ChecksumError, fetch, sha256


def test_relative_path_is_below_data_dir_and_downloaded_once(http_dir, tmp_path, monkeypatch):
    served, url = http_dir
    (served / "a.txt").write_text("payload")
    digest = sha256(served / "a.txt")
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "data"))
    old = os.umask(0o022)
    try:
        path = fetch("sub/a.txt", digest, f"{url}/a.txt")
    finally:
        os.umask(old)
    assert path == tmp_path / "data" / "sub" / "a.txt" and path.read_text() == "payload"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # readable by others (was 0600)
    (served / "a.txt").unlink()  # present and verified: no second download
    assert fetch("sub/a.txt", digest, f"{url}/a.txt") == path


def test_errors_name_path_url_and_reason(http_dir, tmp_path):
    served, url = http_dir
    dest = tmp_path / "b.txt"
    with pytest.raises(
        FileNotFoundError, match=r"thing B not found at .*b\.txt \(its source: http"
    ):
        fetch(dest, "0" * 64, f"{url}/b.txt", download_ok=False, name="thing B")
    with pytest.raises(FileNotFoundError, match=r"b\.txt not found .* failed .*404"):
        fetch(dest, "0" * 64, f"{url}/b.txt")
    with pytest.raises(ValueError, match="without a sha256"):
        fetch(dest, None, f"{url}/b.txt")
    (served / "b.txt").write_text("other")
    with pytest.raises(ChecksumError, match=rf"mismatch for {dest} downloaded from {url}/b"):
        fetch(dest, "0" * 64, f"{url}/b.txt")  # the file and URL, not a deleted temporary
    assert not dest.exists()
    with pytest.raises(FileNotFoundError, match="data file not found"):
        fetch(dest, None)
