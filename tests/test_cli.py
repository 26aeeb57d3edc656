"""CLI helpers: which saved runs a --resume may continue; when progress bars are drawn."""

import io
import json
import subprocess
import sys

import numpy as np
import pytest

from dgm import cli
from dgm.cli import _differences

PRESET = {"seed_field": 1, "train": {"lr": 0.1, "ema": None}}


def test_resume_matches_identical_config():
    assert not _differences(PRESET, PRESET, PRESET)


def test_field_added_since_the_run_matches_at_its_preset_value():
    saved = {"seed_field": 1, "train": {"lr": 0.1}}  # written before `ema` existed
    assert not _differences(saved, PRESET, PRESET)
    changed = {"seed_field": 1, "train": {"lr": 0.1, "ema": 0.999}}
    assert _differences(saved, changed, PRESET)


def test_run_length_may_change():
    saved = {"num_epochs": 5, "train": {"lr": 0.1, "num_epochs": 300}}
    longer = {"num_epochs": 9, "train": {"lr": 0.1, "num_epochs": 40}}
    assert not _differences(saved, longer, saved)
    assert _differences(saved, {**longer, "train": {"lr": 0.2, "num_epochs": 40}}, saved)


def test_checkpoint_interval_and_final_score_settings_may_change():
    saved = {"is_images": 10_000, "est_marglik": 1000, "eval_batch_size": 100, "train": {}}
    scored = {**saved, "is_images": 1000, "est_marglik": 100, "train": {"checkpoint_every": 9}}
    assert not _differences(saved, scored, saved)
    assert _differences(saved, {**scored, "eval_batch_size": 20}, saved)  # validation's


def test_changed_or_removed_fields_do_not_match_and_are_named():
    assert _differences(PRESET, {"seed_field": 2, "train": PRESET["train"]}, PRESET)
    assert _differences({**PRESET, "gone": 3}, PRESET, PRESET)
    changed = {"seed_field": 2, "train": {"lr": 0.2, "ema": None}}
    assert _differences({**PRESET, "gone": 3}, changed, PRESET) == [
        "gone",
        "seed_field",
        "train.lr",
    ]


class _Stderr(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize(
    "tty, flags, want",
    [
        (True, [], True),
        (False, [], False),
        (True, ["--no-progress"], False),
        (False, ["--progress"], True),
    ],
)
def test_progress_bars_only_on_a_terminal_unless_asked(tty, flags, want, tmp_path, monkeypatch):
    """A run logging to a file or a pipe draws no progress bars (their carriage returns
    fill a log); ``--progress`` and ``--no-progress`` decide over the terminal test."""
    from dgm.experiments import svgd_gaussian2d

    seen = []
    monkeypatch.setattr(
        svgd_gaussian2d, "run", lambda config, key, ctx: seen.append(ctx.progress) or {}
    )
    monkeypatch.delattr(svgd_gaussian2d, "summary", raising=False)
    monkeypatch.setattr(sys, "stderr", _Stderr(tty))
    assert (
        cli.main(["run", "svgd-gaussian2d", "--smoke", "--out", str(tmp_path / "r"), *flags]) == 0
    )
    assert seen == [want]


def test_print_config_shows_the_resolved_config_and_runs_nothing(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["run", "svgd-gaussian2d", "--smoke", "--set", "kernel=imq", "--print-config"]
    assert cli.main([*args, "--out", str(out)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["experiment"] == "svgd-gaussian2d" and record["preset"] == "smoke"
    assert record["config"]["kernel"] == "imq" and record["config"]["num_particles"] == 20
    assert not out.exists()


def test_run_help_after_a_name_lists_the_experiments_options_and_fields(capsys):
    """`dgm run pose --help` adds pose's presets, its own flags (--scene, --config) and every
    config field at the preset's value, after the options given with it; without a name it
    is run's help alone; a missing name is a usage error (exit 2)."""
    assert cli.main(["run", "pose", "--preset", "paper", "--set", "scene=2", "--help"]) == 0
    text = capsys.readouterr().out
    assert "--preset PRESET" in text and "paper (shown)" in text
    assert "--scene VALUE" in text and "sets setting" in text
    assert "\n  scene = 2\n" in text and '\n  setting = "notebook"\n' in text
    assert cli.main(["run", "--help"]) == 0
    alone = capsys.readouterr().out
    assert "--print-config" in alone and "preset (--set FIELD=VALUE)" not in alone
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run"])
    assert exit_.value.code == 2 and "required: name" in capsys.readouterr().err


def test_version(capsys):
    import dgm

    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out == f"dgm {dgm.__version__}\n"


def test_python_dash_m_dgm_is_the_dgm_command():
    """``python -m dgm`` works where the console script is not on PATH (user audit 2)."""
    import dgm

    cmd = [sys.executable, "-m", "dgm", "--version"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    assert out.stdout == f"dgm {dgm.__version__}\n"


def test_a_run_that_wrote_nothing_does_not_block_its_directory(tmp_path, monkeypatch, capsys):
    """A run that failed before any output (here: no data) leaves only config.json; the same
    command again gets the same error, not "already holds a run"."""
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "empty"))
    args = ["run", "vae-mnist", "--smoke", "--out", str(tmp_path / "r")]
    for _ in range(2):
        assert cli.main(args) == 1
        err = capsys.readouterr().err
        assert "binarized_mnist" in err and "already holds" not in err, err
    (tmp_path / "r" / "metrics.json").write_text("{}")  # now it holds a run's output
    assert cli.main(args) == 1 and "already holds a run" in capsys.readouterr().err
    # --overwrite clears the old run's scores and event files before the new run starts
    # (a failing new run left its config.json beside the old metrics.json and report.md)
    for name in ("report.md", "tensorboard/events.old", "checkpoints/train.eqx"):
        (tmp_path / "r" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "r" / name).write_text("old")
    assert cli.main([*args, "--overwrite"]) == 1  # still no data
    left = {p.relative_to(tmp_path / "r").as_posix() for p in (tmp_path / "r").rglob("*")}
    assert left == {"config.json", "tensorboard", "checkpoints"}, left


def test_a_resumed_run_keeps_what_its_earlier_segments_ran_on(tmp_path, monkeypatch, capsys):
    """``config.json`` is rewritten by every call (this call's versions, devices and
    processes); a ``--resume`` keeps the earlier calls' in ``earlier_segments``, one entry
    each, so a run continued under another dgm or JAX version says so."""
    from dgm import experiments, runs

    module = experiments.get("svgd-gaussian2d")
    monkeypatch.setattr(module, "run", lambda *a: {"x": 1.0})
    monkeypatch.setattr(module, "summary", lambda metrics: "done")
    args = ["run", "svgd-gaussian2d", "--smoke", "--out", str(tmp_path / "r")]
    assert cli.main(args) == 0
    first = runs.read_json(tmp_path / "r" / "config.json")
    assert "earlier_segments" not in first
    for count in (1, 2):
        assert cli.main([*args, "--resume"]) == 0
        record = runs.read_json(tmp_path / "r" / "config.json")
        assert len(record["earlier_segments"]) == count
        assert record["earlier_segments"][0]["versions"] == first["versions"]
    capsys.readouterr()


def test_overwrite_removes_the_old_runs_outputs_and_nothing_else(tmp_path, monkeypatch, capsys):
    """A run lists the files it made (``outputs.json``); ``--overwrite`` removes them, so a
    new run that stops early leaves no old outputs beside its config (the old
    ``particles.npz`` stayed), while a file the user put there stays."""
    from dgm import experiments, runs

    module = experiments.get("svgd-gaussian2d")

    def run(config, key, ctx):
        runs.save_npz(ctx.path("particles.npz"), x=np.zeros(2))
        ctx.save_checkpoint("state", x=np.zeros(1))
        return {"x": 1.0}

    monkeypatch.setattr(module, "run", run)
    monkeypatch.setattr(module, "summary", lambda metrics: "done")
    out = tmp_path / "r"
    args = ["run", "svgd-gaussian2d", "--smoke", "--out", str(out)]
    assert cli.main(args) == 0
    listed = runs.read_json(out / "outputs.json")["files"]
    assert listed == ["checkpoints/state.npz", "config.json", "metrics.json", "particles.npz"]
    (out / "notes.txt").write_text("mine")

    def stops_early(config, key, ctx):
        raise ValueError("stopped before any output")

    monkeypatch.setattr(module, "run", stops_early)
    assert cli.main([*args, "--overwrite"]) == 1
    assert {p.name for p in out.iterdir() if p.is_file()} == {"config.json", "notes.txt"}
    assert (out / "notes.txt").read_text() == "mine"
    capsys.readouterr()


@pytest.mark.parametrize(
    "text, seconds", [("600", 600.0), ("90s", 90.0), ("45m", 2700.0), ("1.5h", 5400.0)]
)
def test_time_limit_durations(text, seconds):
    assert cli._duration(text) == seconds


@pytest.mark.parametrize("text", ["", "0", "-5", "1x", "m", "inf", "nan"])
def test_time_limit_refuses_what_is_no_duration(text, capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "vae-mnist", "--time-limit", text])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--time-limit: expected a positive duration" in err, err


def test_time_limit_on_a_run_that_trains_nothing_is_refused(tmp_path, capsys):
    assert cli.main(["run", "lotka-volterra", "--time-limit", "10m", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "--time-limit applies to the training runs (dmm-polyphonic" in err
    assert "iaf-vae" in err and "lotka-volterra trains no model" in err


def test_a_time_limited_run_is_scored_and_says_how_to_continue(tmp_path, shared_data, capsys):
    """`--time-limit` reaches the training loop: a VAE stopped after its first update is
    scored there, its metrics say so, and stderr says how to continue."""
    out = tmp_path / "r"
    args = ["run", "vae-mnist", "--smoke", "--time-limit", "0.001s", "--out", str(out)]
    assert cli.main([*args, "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["time_limited"] is True and (metrics["epochs"], metrics["updates"]) == (0, 1)
    assert "stopped at --time-limit after update 1" in capsys.readouterr().err


def test_the_experiments_that_train_through_fit_are_the_ones_marked_trains():
    """`--time-limit` is accepted exactly by the experiments whose training goes through
    `fit` with the run's outputs (`_training.fit_outputs`, or `_training.fit` using it)."""
    import inspect

    from dgm import experiments

    for name in experiments.names():
        module = experiments.get(name)
        source = inspect.getsource(module)
        trains = "_training.fit_outputs(" in source or "_training.fit(" in source
        assert getattr(module, "TRAINS", False) == trains, name


def test_every_experiment_has_the_smoke_quick_and_paper_presets():
    """``--preset``'s help and the experiments' contract promise the three (iaf-vae had
    no ``paper``)."""
    from dgm import experiments

    for name in experiments.names():
        assert {"smoke", "quick", "paper"} <= set(experiments.get(name).PRESETS), name


def test_list_reads_each_description_without_importing_the_experiments():
    """``dgm list`` prints every experiment's ``DESCRIPTION`` as its module defines it, read
    from the source: in a fresh interpreter it imports no experiment module and no JAX."""
    from dgm import experiments

    probe = (
        "import sys; from dgm.cli import main; main(['list']); "
        "print(sorted(m for m in sys.modules if m == 'jax' or m.startswith('dgm.experiments.')))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    *rows, imported = out.stdout.splitlines()
    assert imported == "[]"
    assert rows == [f"{n:24s} {experiments.get(n).DESCRIPTION}" for n in experiments.names()]
    with pytest.raises(ValueError, match="unknown experiment 'nope'; expected one of"):
        experiments.description("nope")


def test_seeds_outside_32_bits_are_refused(capsys):
    """A PRNG key holds 32 bits: --seed 4294967296 ran seed 0's numbers, 2**63 a traceback."""
    for seed in ("4294967296", "-1", str(2**63)):
        with pytest.raises(SystemExit):
            cli.main(["run", "lotka-volterra", "--seed", seed, "--print-config"])
        assert "must be an int in [0, 2^32)" in capsys.readouterr().err


def test_the_command_exits_at_once_after_a_ctrl_c(monkeypatch):
    """``dgm`` (``console``) leaves with ``os._exit(130)`` after main's Ctrl-C line: the
    interpreter's finalisation crashed (exit -11) after a Ctrl-C during an XLA compile."""
    exits = []

    def hard_exit(code):  # os._exit never returns
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", lambda: 130)
    monkeypatch.setattr(cli.os, "_exit", hard_exit)
    with pytest.raises(SystemExit):
        cli.console()
    assert exits == [130]
    monkeypatch.setattr(cli, "main", lambda: 1)
    with pytest.raises(SystemExit) as stop:
        cli.console()
    assert stop.value.code == 1 and exits == [130]


def test_output_into_a_closed_pipe_ends_quietly():
    """``dgm list | head -1``: the reader is gone before the listing is written; the command
    ends with 141 (128 + SIGPIPE) and no ``BrokenPipeError`` traceback on stderr."""
    code = "import sys; sys.argv = ['dgm', 'list']; from dgm.cli import console; console()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)  # fmt: skip
    with proc.stderr:
        proc.stdout.close()  # the reader stops before dgm writes anything
        err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and "Traceback" not in err, err


def test_the_ctrl_c_line_promises_a_checkpoint_only_when_there_is_one(
    tmp_path, monkeypatch, capsys
):
    """A run stopped before its first checkpoint, one stopped after it, and a command that
    keeps none (``dgm sample``) each get their own line."""

    def interrupt(*_):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_sample", interrupt)
    assert cli.main(["sample", "model.py"]) == 130
    assert capsys.readouterr().err.splitlines() == ["dgm: interrupted"]

    out = tmp_path / "r"
    monkeypatch.setattr(cli, "_start_devices", interrupt)  # after the run directory is set up
    args = ["run", "svgd-gaussian2d", "--smoke", "--out", str(out)]
    assert cli.main(args) == 130
    first = "dgm: interrupted before the first checkpoint; --resume starts the run again"
    assert capsys.readouterr().err.splitlines() == [first]
    (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    (out / "checkpoints" / ".chains.npz.x1.tmp").write_text("")  # an unfinished write
    assert cli.main([*args, "--resume"]) == 130
    assert capsys.readouterr().err.splitlines() == [first]
    (out / "checkpoints" / "chains.npz").write_text("")
    assert cli.main([*args, "--resume"]) == 130
    kept = "dgm: interrupted; the last checkpoint is kept, continue with --resume"
    assert capsys.readouterr().err.splitlines() == [kept]


def test_smoke_with_another_preset_is_refused(tmp_path, capsys):
    """``--smoke --preset smok`` ran the smoke preset and dropped the (mistyped) preset."""
    args = ["run", "svgd-gaussian2d", "--smoke", "--out", str(tmp_path / "r")]
    assert cli.main([*args, "--preset", "smok"]) == 1
    assert "--smoke means --preset smoke; got --preset smok" in capsys.readouterr().err
    assert cli.main([*args, "--preset", "smoke", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "smoke"
    assert cli.main(["run", "svgd-gaussian2d", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["preset"] == "quick"


def test_resume_and_overwrite_together_are_refused(tmp_path, capsys):
    """``--resume --overwrite`` ran as ``--resume`` alone and dropped ``--overwrite``: the
    two ask for opposite things, so the pair is a usage error naming both."""
    args = ["run", "svgd-gaussian2d", "--smoke", "--out", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exit_:
        cli.main([*args, "--resume", "--overwrite"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--overwrite: not allowed with argument --resume" in err
    assert not (tmp_path / "r").exists()


def test_seeds_at_both_ends_of_32_bits_are_taken(capsys):
    for seed in ("0", str(2**32 - 1)):
        assert cli.main(["run", "lotka-volterra", "--seed", seed, "--print-config"]) == 0
    assert "error" not in capsys.readouterr().err


def test_a_seed_that_is_no_integer_and_a_sample_seed_outside_32_bits_are_refused(capsys):
    """``--seed abc`` said "invalid _seed value"; ``dgm sample --seed 4294967296`` drew seed
    0's samples and ``--seed -1`` was taken: both commands' seeds are ints in [0, 2^32)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["run", "lotka-volterra", "--seed", "abc", "--print-config"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--seed: must be an int in [0, 2^32); got 'abc'" in err, err
    for seed in ("abc", "4294967296", "-1"):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["sample", "RUN_DIR", "--seed", seed])
        err = capsys.readouterr().err
        assert exit_.value.code == 2 and "--seed: must be an int in [0, 2^32)" in err, err


@pytest.mark.parametrize(
    "command, flag, value, low",
    [
        (["run", "svgd-gmm1d", "--print-config"], "--devices", "0", 1),
        (["run", "svgd-gmm1d", "--print-config"], "--num-processes", "0", 1),
        (["run", "svgd-gmm1d", "--print-config"], "--process-id", "-1", 0),
        (["bvh", "render", "clip.bvh", "--out", "c.gif"], "--stride", "0", 1),
        (["bvh", "render", "clip.bvh", "--out", "c.gif"], "--max-frames", "-1", 1),
        (["sample", "RUN_DIR"], "--num", "0", 1),
        (["sample", "RUN_DIR"], "--steps", "abc", 1),
    ],
)
def test_counts_are_checked_as_parsed_and_name_their_flag(command, flag, value, low, capsys):
    """``--devices 0`` said "`num_devices` must be a positive int", ``--num 0`` "`num`":
    each count is checked while parsing, so the error names the flag (exit 2)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main([*command, flag, value])
    err = capsys.readouterr().err.splitlines()[-1]
    assert exit_.value.code == 2 and f"{flag}: must be an int >= {low}; got '{value}'" in err


def test_an_out_that_cannot_be_a_run_directory_is_named(tmp_path, monkeypatch, capsys):
    """``--out`` at a file, under a file or in a folder that cannot be written said only
    "[Errno 17] File exists: ..." (or 20, 13), naming neither ``--out`` nor what it needs."""
    afile = tmp_path / "afile"
    afile.write_text("mine")
    args = ["run", "svgd-gaussian2d", "--smoke", "--out"]
    for out in (afile, afile / "sub"):
        assert cli.main([*args, str(out)]) == 1
        err = capsys.readouterr().err
        assert err.splitlines() == [
            f"dgm: error: --out: expected a directory to hold the run; {afile} is not a directory"
        ], err
    assert afile.read_text() == "mine"
    monkeypatch.setattr(cli.os, "access", lambda path, mode: False)
    assert cli.main([*args, str(tmp_path / "new" / "r")]) == 1
    err = capsys.readouterr().err
    assert f"--out: expected a directory to hold the run; {tmp_path} is not writable" in err


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["bvh", "render", "clip.bvh", "--out", "c.gif", "--bogus"], "usage: dgm bvh render"),
        (["sample", "RUN_DIR", "--bogus"], "usage: dgm sample"),
        (["compare", "RUN_DIR", "--bogus"], "usage: dgm compare"),
    ],
)
def test_an_unknown_option_of_a_subcommand_is_a_usage_error_of_that_subcommand(argv, usage, capsys):
    """``dgm bvh render ... --bogus`` exited 1 as a failed run, and ``sample``/``compare``
    showed the top-level ``usage: dgm ...``: each is exit 2 with its own usage line."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and err.startswith(usage), err
    assert err.splitlines()[-1].endswith("error: unrecognized arguments: --bogus"), err
