"""Shared CLI checks for the experiment tests: a smoke run, and resuming a run saved before
a config field existed."""

import json
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


def check_resume_of_a_run_from_before(field: str, former: str, argv: list[str], capsys) -> None:
    """A run saved before the dotted config ``field`` existed (``argv``: ``dgm run ... --out
    DIR``) did what ``field=former`` does (the experiment's ``FORMER_DEFAULTS``): ``--resume``
    with the new default is refused, naming the field, and with ``--set field=former`` it
    passes the check (the caller makes the run fail later, on missing data)."""
    from dgm.cli import main

    out = Path(argv[argv.index("--out") + 1])
    assert main([*argv, "--print-config"]) == 0
    record = json.loads(capsys.readouterr().out)
    *parents, leaf = field.split(".")
    section = record["config"]
    for name in parents:
        section = section[name]
    del section[leaf]
    out.mkdir()
    (out / "config.json").write_text(json.dumps(record))
    (out / "metrics.json").write_text("{}")  # a run that produced something
    assert main([*argv, "--resume"]) == 1
    err = capsys.readouterr().err
    assert f"different config or seed ({field})" in err, err
    assert main([*argv, "--resume", "--set", f"{field}={former}"]) == 1
    err = capsys.readouterr().err
    assert "different config" not in err and err.startswith("dgm: error:"), err
