"""Run outputs: atomic writes, file modes, safe npz round trips."""

import json
import os

import numpy as np
import pytest

from dgm import runs


def test_failed_write_leaves_previous_file_and_no_temporaries(tmp_path):
    target = tmp_path / "metrics.json"
    runs.write_json(target, {"a": 1})
    with pytest.raises(RuntimeError), runs.atomic_path(target) as tmp:
        tmp.write_text("half written")
        raise RuntimeError("interrupted")
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_written_files_get_the_umask_mode_not_mkstemps_0600(tmp_path):
    old = os.umask(0o022)
    try:
        runs.write_text(tmp_path / "report.md", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


def test_npz_round_trip_and_object_arrays_refused(tmp_path):
    runs.save_npz(tmp_path / "a.npz", x=np.arange(3.0), k=np.int64(7))
    out = runs.load_npz(tmp_path / "a.npz")
    np.testing.assert_array_equal(out["x"], np.arange(3.0))
    assert out["k"] == 7
    with pytest.raises(ValueError):
        runs.save_npz(tmp_path / "b.npz", bad=np.array([{"a": 1}], dtype=object))
    assert not (tmp_path / "b.npz").exists()


def test_json_converts_arrays_and_dataclasses(tmp_path):
    runs.write_json(tmp_path / "c.json", {"v": np.arange(2), "s": np.float32(1.5)})
    assert json.loads((tmp_path / "c.json").read_text()) == {"v": [0, 1], "s": 1.5}


def test_stop_if_interrupted_raises_only_for_interrupted_results():
    class Result:
        def __init__(self, interrupted):
            self.interrupted = interrupted

    done = Result(False)
    assert runs.stop_if_interrupted(done) is done
    with pytest.raises(KeyboardInterrupt):
        runs.stop_if_interrupted(Result(True))


def test_git_revision_says_when_the_checkout_has_uncommitted_changes(tmp_path, monkeypatch):
    """A run records the commit and ``+dirty`` when tracked files differ from it: a copy of
    this checkout, committed, then with one tracked file changed."""
    import shutil
    import subprocess

    src = tmp_path / "repo" / "dgm"
    shutil.copytree(os.path.dirname(runs.__file__), src)
    git = lambda *a: subprocess.run(["git", *a], cwd=src, check=True, capture_output=True)  # noqa: E731
    git("init", "-q")
    git("add", "runs.py")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    monkeypatch.setattr(runs, "__file__", str(src / "runs.py"))
    clean = runs.git_revision()
    assert clean is not None and len(clean) == 40 and "+" not in clean
    (src / "runs.py").write_text("# changed\n")
    assert runs.git_revision() == clean + "+dirty"
