"""``dgm compare``: one Markdown table of several run directories."""

import json

import pytest

from dgm import compare
from dgm.cli import main


def _run_dir(root, name, posterior, curve, metrics=None, n_h=64):
    """A run directory as ``dgm run`` writes it: config.json, train_metrics.jsonl, and
    metrics.json once finished."""
    path = root / name
    path.mkdir()
    config = {"n_h": n_h, "depths": [2, 2], "margs": {"posterior": posterior, "kl_min": 0.25}}
    record = {"experiment": "iaf-vae", "preset": "mnist", "seed": 0, "config": config}
    (path / "config.json").write_text(json.dumps(record))
    lines = [{"epoch": e, "train_loss": 200.0 - e, "test_neg_elbo": v} for e, v in curve]
    (path / "train_metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    if metrics is not None:
        (path / "metrics.json").write_text(json.dumps(metrics))
    return path


def _rows(text):
    lines = text.strip().splitlines()
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert set(cells[1]) == {"---"}
    return cells[0], {row[0]: dict(zip(cells[0], row, strict=True)) for row in cells[2:]}


@pytest.fixture
def three_runs(tmp_path):
    done = {"test_neg_elbo": 101.234, "test_nll_is": 99.5, "kl_blocks": {"z0_0": 1.0},
            "epochs": 3, "seed": 0, "s_per_step": 0.4213}  # fmt: skip
    return [
        _run_dir(tmp_path, "iaf2", "down_iaf2_nl", [(1, 133.74), (2, 108.75), (3, 104.0)], done),
        _run_dir(tmp_path, "diag", "down_diag", [(1, 134.29), (2, 124.52)]),  # still training
        _run_dir(tmp_path, "up", "up_diag", [(2, 130.0)], {**done, "test_nll_is": 120.0}),
    ]


def test_table_shows_differing_fields_the_curve_at_equal_epochs_and_final_scores(three_runs):
    text = compare.table([compare.load_run(d) for d in three_runs], curve="test_neg_elbo",
                         epochs=[1, 2])  # fmt: skip
    header, rows = _rows(text)
    # only the field that differs; epochs and seed are not repeated from metrics.json;
    # a dict (kl_blocks) is not a column; the order is metrics.json's
    curve = ["test_neg_elbo @ 1", "test_neg_elbo @ 2"]
    scores = ["test_neg_elbo", "test_nll_is", "s_per_step"]
    assert header == ["run", "margs.posterior", "epochs", *curve, *scores]
    assert rows["iaf2"]["margs.posterior"] == "down_iaf2_nl"
    assert rows["iaf2"]["epochs"] == "3"
    assert (rows["iaf2"]["test_neg_elbo @ 2"], rows["diag"]["test_neg_elbo @ 2"]) == (
        "108.75",
        "124.52",
    )
    assert rows["up"]["test_neg_elbo @ 1"] == compare.MISSING  # not recorded at epoch 1
    assert rows["diag"]["test_nll_is"] == compare.MISSING  # not finished
    assert rows["diag"]["epochs"] == "2"
    assert (rows["iaf2"]["test_nll_is"], rows["up"]["test_nll_is"]) == ("99.50", "120.00")
    assert rows["iaf2"]["s_per_step"] == "0.421"


def test_default_epochs_keys_and_metrics_can_be_chosen(three_runs):
    loaded = [compare.load_run(d) for d in three_runs]
    header, _ = _rows(compare.table(loaded, curve="test_neg_elbo"))
    assert [h for h in header if "@" in h] == [f"test_neg_elbo @ {e}" for e in (1, 2, 3)]
    header, rows = _rows(compare.table(loaded, metrics=["test_nll_is"], keys=["n_h", "depths"]))
    assert header == ["run", "n_h", "depths", "epochs", "test_nll_is"]
    assert rows["up"]["depths"] == "[2, 2]"


def test_a_result_named_like_a_config_column_gets_its_own_header(tmp_path):
    runs = [_run_dir(tmp_path, f"s{n}", "down_diag", [(1, 1.0)], {"n_h": 2 * n}, n_h=n)
            for n in (16, 64)]  # fmt: skip
    header, rows = _rows(compare.table([compare.load_run(d) for d in runs]))
    assert header == ["run", "n_h", "epochs", "n_h (result)"]
    assert (rows["s16"]["n_h"], rows["s16"]["n_h (result)"]) == ("16", "32")


def test_cli_prints_and_writes_the_table(three_runs, tmp_path, capsys):
    out = tmp_path / "table.md"
    args = ["compare", *map(str, three_runs), "--curve", "test_neg_elbo", "--epochs", "2",
            "--metrics", "test_nll_is", "--out", str(out)]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert printed == out.read_text()
    header, rows = _rows(printed)
    assert header == ["run", "margs.posterior", "epochs", "test_neg_elbo @ 2", "test_nll_is"]
    assert rows["up"]["test_neg_elbo @ 2"] == "130.00"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--metrics", "nope"], "--metrics: unknown field(s) 'nope'; the runs have: epochs,"),
        (["--curve", "valid"], "--curve: no run recorded 'valid' in train_metrics.jsonl; "
                               "fields recorded: epoch, test_neg_elbo, train_loss"),
        (["--keys", "n_z"], "--keys: unknown field(s) 'n_z'"),
        (["--epochs", "1"], "--epochs: chooses the epochs of --curve FIELD; give --curve too"),
    ],
)  # fmt: skip
def test_unknown_fields_are_named_with_the_known_ones(three_runs, capsys, args, message):
    assert main(["compare", *map(str, three_runs), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"dgm: error: {message}") and err.count("\n") == 1


def test_a_directory_that_is_not_a_run_and_bad_epochs(tmp_path, capsys):
    assert main(["compare", str(tmp_path)]) == 1
    assert (
        "has no config.json (expected a directory written by `dgm run`)" in capsys.readouterr().err
    )
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(tmp_path), "--epochs", "1,x"])
    assert exit_info.value.code == 2
    assert "expected comma-separated integers; got '1,x'" in capsys.readouterr().err
    run = _run_dir(tmp_path, "r", "down_diag", [(1, 90.0)], metrics={"x": 1})
    (run / "metrics.json").write_text('{"x": 1,\n')  # a truncated file is named
    assert main(["compare", str(run)]) == 1
    assert f"{run / 'metrics.json'} is not valid JSON" in capsys.readouterr().err


def test_metrics_of_runs_none_of_which_finished(tmp_path):
    run = compare.load_run(_run_dir(tmp_path, "a", "down_diag", [(1, 130.0)]))
    _, rows = _rows(compare.table([run]))  # no metrics columns, no error
    assert rows["a"]["epochs"] == "1"
    assert compare.table([run], metrics=[]) == compare.table([run])  # `--metrics ""`: none
    with pytest.raises(ValueError, match="no run has finished yet"):
        compare.table([run], metrics=["test_nll_is"])


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("config.json", "[1, 2]", "config.json is not a run's config"),
        ("config.json", '{"experiment": "x", "config": [1]}', "config.json is not a run's config"),
        ("metrics.json", "[1]", "metrics.json is not a JSON object"),
        ("train_metrics.jsonl", "[1]\n", "train_metrics.jsonl: record 1 is not an object with"),
        ("train_metrics.jsonl", '{"epoch": 1}\n{"x": 2}\n', "record 2 is not an object with"),
        ("train_metrics.jsonl", '{"epoch": 1}\n{"epoch": "2"}\n', "record 2 is not an object"),
    ],
)  # fmt: skip
def test_a_malformed_run_file_is_one_line_naming_it(tmp_path, capsys, name, text, message):
    """Files of the right name but the wrong shape (hand-edited, another tool's) gave
    AttributeError/KeyError tracebacks, or "'<' not supported between 'str' and 'int'"."""
    run = _run_dir(tmp_path, "r", "down_diag", [(1, 90.0)], metrics={"x": 1})
    (run / name).write_text(text)
    assert main(["compare", str(run), "--curve", "test_neg_elbo"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dgm: error: ") and message in err and err.count("\n") == 1


def test_numbers_are_printed_by_magnitude_whatever_their_sign():
    """Catches (audit plant): negative scores (log-likelihoods) printed with 3 significant
    digits instead of 2 decimals."""
    assert [compare._fmt(v) for v in (-2.504, 2.504, -0.01234, 0.01234, -120.0)] == [
        "-2.50", "2.50", "-0.0123", "0.0123", "-120.00"
    ]  # fmt: skip
