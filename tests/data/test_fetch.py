"""dgm.data.fetch: relative paths below DGM_DATA_DIR, verified downloads, clear errors."""

import os
import socket
import stat
import sys
import threading
import time

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


@pytest.fixture
def raw_server():
    """A server on 127.0.0.1 answering each request with ``replies[path]`` (raw bytes), then
    closing the connection; yields (replies, base URL)."""
    replies: dict[str, bytes] = {}
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0.2)
    done = threading.Event()

    def serve():
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            with conn:
                request = conn.recv(65536).decode("latin-1")
                conn.sendall(replies.get(request.split(" ")[1], b""))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield replies, f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        done.set()
        thread.join()
        sock.close()


@pytest.mark.parametrize(
    "reply",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3e8\r\n" + b"x" * 500,  # cut short
        b"not an HTTP reply\r\n\r\n",
    ],
    ids=["chunked-body-cut-short", "not-http"],
)
def test_a_broken_http_reply_names_the_file_and_url(raw_server, tmp_path, reply):
    replies, url = raw_server
    replies["/c.bin"] = reply
    dest = tmp_path / "c.bin"
    with pytest.raises(
        FileNotFoundError, match=rf"c\.bin not found at .* from {url}/c\.bin failed"
    ):
        fetch(dest, "0" * 64, f"{url}/c.bin")
    assert list(tmp_path.iterdir()) == []  # no temporary left behind either


def test_file_mode_leaves_the_umask_alone(tmp_path):
    """``file_mode`` (the mode a download gets) must not set the process umask to read it:
    for that moment a folder made by another thread (a concurrent download's) was 0777."""
    from dgm.runs import file_mode

    done, modes, folder = threading.Event(), [], str(tmp_path / "d")

    def loop():
        try:
            end = time.monotonic() + 1.0
            while time.monotonic() < end:
                file_mode()
        finally:
            done.set()

    old, interval = os.umask(0o022), sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, as a busy process may
    thread = threading.Thread(target=loop)
    thread.start()
    try:
        while not done.is_set():
            os.mkdir(folder)
            modes.append(stat.S_IMODE(os.stat(folder).st_mode))
            os.rmdir(folder)
    finally:
        thread.join()
        sys.setswitchinterval(interval)
        os.umask(old)
    assert len(modes) > 20 and set(modes) == {0o755}, (len(modes), modes.count(0o777))
    assert file_mode() == 0o644
