"""Ctrl-C on ``dgm run lotka-volterra``, as a user sends it: a real subprocess and SIGINT.

Every moment (start-up and compilation, the first CHMC chunk, mid-run, an ABC baseline)
must end with exit status 130 and the CLI's one line on stderr (no traceback, no
segfault), and ``--resume`` must then finish with the metrics of an uninterrupted run.
Moments are chosen by polling the run directory for the files the run writes.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import dgm
from tests.conftest import data_dir

LINE = "dgm: interrupted; the last checkpoint is kept, continue with --resume"
FIRST_LINE = "dgm: interrupted before the first checkpoint; --resume starts the run again"
# Keys whose values are timings (they differ between any two runs).
TIMING = {"wall_s", "compile_s", "total_s", "ess_per_s_min", "ess_per_chain_s_min",
          "total_wall_s", "ms_per_step"}  # fmt: skip
CHMC_CHAINS = "checkpoints/chmc_chains.npz"
REFERENCE_DONE = "checkpoints/method_reference.npz"


def _start(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(Path(dgm.__file__).resolve().parents[1])
    if data_dir() is not None:
        env["DGM_DATA_DIR"] = str(data_dir())
    argv = ["run", "lotka-volterra", "--smoke", "--out", str(out), "--no-progress", *extra]
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, *argv],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# A shell's background job (pytest run with `&`) ignores SIGINT, and a child Python keeps
# an ignored SIGINT ignored: the child restores Python's own handler before running the
# CLI, so Ctrl-C counts. (A ``preexec_fn`` would fork the multithreaded JAX process.)
_CHILD = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from dgm.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _wait_for(proc: subprocess.Popen, path: Path, timeout: float = 120.0) -> bool:
    """Poll until ``path`` exists (True) or the process ends or time runs out (False)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if path.exists():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


def _interrupt(proc: subprocess.Popen, delay: float = 0.0) -> tuple[int, str]:
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _assert_one_line(rc: int, err: str, out: Path) -> None:
    # dgm.condition may note how far CHMC got ("interrupted after K of N ...") before the
    # CLI's line; anything else (a traceback, a crash report) fails. The line says whether
    # a checkpoint is there to resume.
    lines = [x for x in err.strip().splitlines() if not x.startswith("interrupted after")]
    assert rc == 130, (rc, err)
    kept = any(not f.name.startswith(".") for f in (out / "checkpoints").glob("*"))
    assert lines == [LINE if kept else FIRST_LINE], err


def _strip_timings(tree):
    if isinstance(tree, dict):
        return {k: _strip_timings(v) for k, v in tree.items() if k not in TIMING}
    return tree


def _metrics(out: Path) -> dict:
    return _strip_timings(json.loads((out / "metrics.json").read_text()))


def _finish(out: Path) -> subprocess.CompletedProcess:
    proc = _start(out, "--resume")
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return proc


def test_interrupt_at_start_prints_one_line_and_exits_130(tmp_path):
    """SIGINT as soon as the run directory exists (imports, data, first compilation)."""
    out = tmp_path / "run"
    proc = _start(out)
    assert _wait_for(proc, out / "config.json")
    _assert_one_line(*_interrupt(proc), out)


@pytest.mark.slow
def test_interrupt_at_every_stage_then_resume_gives_uninterrupted_metrics(tmp_path):
    """Start-up, the first CHMC chunk, mid-CHMC, an ABC baseline; then --resume to the end."""
    full = tmp_path / "full"
    proc = _start(full)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err

    out = tmp_path / "run"
    proc = _start(out)  # during compilation of the first CHMC chunk
    assert _wait_for(proc, out / "config.json")
    _assert_one_line(*_interrupt(proc, delay=1.0), out)
    proc = _start(out, "--resume")  # mid-CHMC, once a chunk is checkpointed
    if _wait_for(proc, out / CHMC_CHAINS):
        _assert_one_line(*_interrupt(proc), out)
    else:
        proc.communicate()
    proc = _start(out, "--resume")  # an ABC baseline (the reference is done)
    if _wait_for(proc, out / REFERENCE_DONE):
        _assert_one_line(*_interrupt(proc, delay=0.5), out)
    else:
        proc.communicate()
    _finish(out)
    assert _metrics(out) == _metrics(full)
