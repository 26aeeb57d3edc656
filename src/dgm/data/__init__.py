"""Dataset access shared by every experiment: one data directory, checksums, downloads.

The data directory is ``DGM_DATA_DIR`` when set, else ``~/.cache/dgm/data``. Every file
is checked against its published sha256 before use; a download goes to a temporary file
that is verified before it is renamed into place, so a failed or corrupt download never
replaces a good file.
"""

import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.request
from pathlib import Path

from dgm.runs import file_mode

DOWNLOAD_ENV = "DGM_DOWNLOAD"
DOWNLOAD_HINT = (
    "set DGM_DATA_DIR to the folder holding it, or let dgm download it "
    "(`dgm run ... --download`, DGM_DOWNLOAD=1, or allow_download=True in Python)"
)


class ChecksumError(ValueError):
    """A data file's sha256 does not match the expected one."""


def data_dir() -> Path:
    """The root data directory (``DGM_DATA_DIR``, else ``~/.cache/dgm/data``)."""
    env = os.environ.get("DGM_DATA_DIR")
    return Path(env) if env else Path.home() / ".cache" / "dgm" / "data"


def downloads_allowed(flag: bool | None = None) -> bool:
    """Whether a missing dataset may be downloaded: ``flag`` when given, else whether the
    environment has ``DGM_DOWNLOAD=1`` (which ``dgm run --download`` sets). The experiments
    never download otherwise."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(DOWNLOAD_ENV) == "1"


def sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify(path: str | os.PathLike, expected_sha256: str | None) -> Path:
    """Return ``path`` if it exists and matches ``expected_sha256``.

    Raises:
        FileNotFoundError: the file is missing.
        ChecksumError: the checksum differs (a corrupt, truncated or different file).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file not found: {path} (set DGM_DATA_DIR)")
    if expected_sha256 is not None:
        got = sha256(path)
        if got != expected_sha256:
            raise ChecksumError(
                f"checksum mismatch for {path}: expected sha256 {expected_sha256}, got {got}; "
                "the file is corrupt, truncated or a different version"
            )
    return path


def download(url: str, dest: str | os.PathLike, expected_sha256: str, timeout: float = 60) -> Path:
    """Download ``url`` to ``dest`` and verify it; the file appears only once verified.

    Raises:
        ChecksumError: the downloaded bytes do not match ``expected_sha256``.
        OSError: the download failed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                shutil.copyfileobj(resp, out)
        except http.client.HTTPException as err:  # a body cut short, a reply that is not HTTP
            raise OSError(f"broken HTTP reply: {type(err).__name__}: {err}") from None
        got = sha256(tmp)
        if got != expected_sha256:
            raise ChecksumError(
                f"checksum mismatch for {dest} downloaded from {url}: expected sha256 "
                f"{expected_sha256}, got {got}; nothing was written"
            )
        os.chmod(tmp, file_mode())  # others sharing the folder can read it
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def fetch(
    path: str | os.PathLike,
    expected_sha256: str | None,
    url: str | None = None,
    download_ok: bool = True,
    name: str | None = None,
) -> Path:
    """Path to a verified data file, downloaded first when it is missing and that is allowed.

    Args:
        path: the file; a relative path is below :func:`data_dir`, e.g.
            ``"polyphonic_music/JSB_Chorales.mat"``.
        expected_sha256: the published checksum (``None`` skips the check; a download
            needs one).
        url: where to download the file from if it is missing.
        download_ok: allow the download.
        name: what the file is, for error messages (default: its file name).

    Raises:
        FileNotFoundError: missing and not downloadable; the message names the path and the
            URL (and the network error, when the download failed).
        ChecksumError: the file, or the downloaded bytes, do not match ``expected_sha256``.
    """
    path = Path(path)
    path = path if path.is_absolute() else data_dir() / path
    name = name or path.name
    if not path.exists() and url is not None:
        if not download_ok:
            raise FileNotFoundError(
                f"{name} not found at {path} (its source: {url}); {DOWNLOAD_HINT}"
            )
        if expected_sha256 is None:
            raise ValueError(f"refusing to download {url} without a sha256 to check")
        try:
            return download(url, path, expected_sha256)  # verified before it is in place
        except OSError as err:  # offline, refused, HTTP error: say where the file must go
            raise FileNotFoundError(
                f"{name} not found at {path}, and downloading it from {url} failed ({err}); "
                "download it by hand to that path (its sha256 is checked)"
            ) from None
    return verify(path, expected_sha256)
