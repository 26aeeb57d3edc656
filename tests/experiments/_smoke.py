"""A shared CLI smoke run for the experiment tests."""

from pathlib import Path

import pytest


def cli_smoke_run(tmp_path_factory, shared_data: Path, experiment: str):
    """Generator for a module-scoped fixture: ``dgm run EXPERIMENT --smoke`` once, with
    ``DGM_DATA_DIR`` set to the shared data; yields ``(run directory, CLI args)``."""
    from dgm.cli import main

    mp = pytest.MonkeyPatch()
    mp.setenv("DGM_DATA_DIR", str(shared_data))
    out = tmp_path_factory.mktemp(experiment) / "run"
    args = ["run", experiment, "--smoke", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    yield out, args
    mp.undo()
