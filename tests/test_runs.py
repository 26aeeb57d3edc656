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


def test_json_writes_numpy_scalars_nan_and_infinities_as_python_floats_are(tmp_path):
    """NaN is null and ±inf the strings "inf"/"-inf" whether the number is Python's or
    NumPy's, so the file is standard JSON."""
    values = [np.nan, np.inf, -np.inf]
    obj = {"py": values, "np64": [np.float64(v) for v in values],
           "np32": [np.float32(v) for v in values], "array": np.array(values)}  # fmt: skip
    runs.write_json(tmp_path / "m.json", obj)
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    expected = [None, "inf", "-inf"]
    assert json.loads(text) == {"py": expected, "np64": expected, "np32": expected,
                                "array": expected}  # fmt: skip


def test_atomic_write_fsyncs_the_whole_temporary_then_renames_it_onto_the_target(
    tmp_path, monkeypatch
):
    target = tmp_path / "report.md"
    target.write_text("old")
    events = []
    fsync, replace = os.fsync, os.replace

    def spy_fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", st.st_ino, st.st_size))
        fsync(fd)

    def spy_replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, os.path.dirname(src), str(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    monkeypatch.setattr(os, "replace", spy_replace)
    runs.write_text(target, "new text")
    ino = target.stat().st_ino
    assert events == [("fsync", ino, len("new text")), ("replace", ino, str(tmp_path), str(target))]
    assert target.read_text() == "new text"
    assert [p.name for p in tmp_path.iterdir()] == ["report.md"]


def test_checkpoints_live_in_the_checkpoints_folder_and_load_only_when_resuming(tmp_path):
    ctx = runs.RunContext(tmp_path / "run", progress=False)
    assert ctx.checkpoint_path("chains") == tmp_path / "run" / "checkpoints" / "chains.npz"
    ctx.save_checkpoint("chains", x=np.arange(3))
    assert ctx.checkpoint_path("chains").is_file()
    assert ctx.load_checkpoint("chains") is None  # a fresh run ignores what is there
    resumed = runs.RunContext(tmp_path / "run", resume=True, progress=False)
    np.testing.assert_array_equal(resumed.load_checkpoint("chains")["x"], np.arange(3))
    assert resumed.load_checkpoint("other") is None
