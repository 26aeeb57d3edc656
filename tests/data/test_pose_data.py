"""The pose model's shipped parts come from their source repositories when allowed."""

import shutil

import numpy as np
import pytest

from dgm.data import ChecksumError
from dgm.data import pose as pose_data


def test_pose_parts_download_from_their_sources(http_dir, tmp_path, shared_data, monkeypatch):
    """With the sources on a local server: a missing file names its source and how to allow
    the download; with DGM_DOWNLOAD=1 every part arrives checked and equals the shipped
    one; a changed file at the source is refused and not kept."""
    served, url = http_dir
    folders = (pose_data.BONES, pose_data.ANGLES, pose_data.THESIS)
    for folder in folders:
        shutil.copytree(shared_data / folder, served / folder.replace("/", "-"))
    sources = {f: f"{url}/{f.replace('/', '-')}" for f in folders}
    monkeypatch.setattr(pose_data, "SOURCES", sources)
    monkeypatch.delenv("DGM_DOWNLOAD", raising=False)
    root = tmp_path / "data"
    with pytest.raises(FileNotFoundError, match=r"its source: http://127\.0\.0\.1.*--download"):
        pose_data.load_pose_parts(root)
    monkeypatch.setenv("DGM_DOWNLOAD", "1")
    want = pose_data.load_pose_parts(shared_data)
    with pytest.raises(FileNotFoundError, match="params.npz not found"):  # the flag wins
        pose_data.load_pose_parts(root, allow_download=False)
    got = pose_data.load_pose_parts(root)
    np.testing.assert_array_equal(got.log_length_chol, want.log_length_chol)
    assert got.fixed_angles == want.fixed_angles and got.length_order == want.length_order
    for (w, b), (w0, b0) in zip(got.decoder, want.decoder, strict=True):
        np.testing.assert_array_equal(w, w0)
        np.testing.assert_array_equal(b, b0)
    np.testing.assert_array_equal(
        pose_data.thesis_rmse_curve("hmc", 2, root=root),
        pose_data.thesis_rmse_curve("hmc", 2, root=shared_data),
    )
    csv = served / pose_data.THESIS.replace("/", "-") / "binocular-pose-rmse-chmc-2.csv"
    csv.chmod(0o644)
    csv.write_text(csv.read_text() + "0 0\n")
    with pytest.raises(ChecksumError):
        pose_data.thesis_rmse_curve("chmc", 2, root=root)
    assert not (root / pose_data.THESIS / csv.name).exists()


def test_thesis_curves_are_the_whole_tables(shared_data):
    """Each curve is its file's 100 rows of (seconds, RMSE) below the header, from t = 0."""
    for method in ("chmc", "hmc"):
        for scene in (1, 2):
            curve = pose_data.thesis_rmse_curve(method, scene, root=shared_data)
            name = f"binocular-pose-rmse-{method}-{scene}.csv"
            lines = (shared_data / pose_data.THESIS / name).read_text().splitlines()
            assert lines[0].split() == ["t", "r"] and curve.shape == (100, 2)
            np.testing.assert_array_equal(curve[0], [float(v) for v in lines[1].split()])
            assert curve[0, 0] == 0.0
