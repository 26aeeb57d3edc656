"""Loggers: JSON lines that match the checkpoint, TensorBoard event files, the loss plot."""

import json
import struct

import pytest

from dgm import training
from tests.training._toy import fit


def _loggers(out):
    return [
        training.JsonLinesLogger(out / "train_metrics.jsonl"),
        training.TensorBoardLogger(out / "tensorboard", "train"),
        training.HistoryPlot(out / "train_loss.png"),
    ]


def test_json_lines_are_rewritten_to_match_the_checkpoint(tmp_path):
    fit(tmp_path, 1, loggers=_loggers(tmp_path))
    log = tmp_path / "train_metrics.jsonl"
    log.write_text(log.read_text() + '{"epoch": 2, "stale": true}\n')  # a crash after logging
    result = fit(tmp_path, 2, resume=True, loggers=_loggers(tmp_path))
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert records == json.loads(json.dumps(result.history))
    assert (tmp_path / "train_loss.png").exists()


def test_fresh_run_truncates_an_old_log(tmp_path):
    log = tmp_path / "m.jsonl"
    log.write_text('{"epoch": 9}\n')
    fit(tmp_path, 1, loggers=[training.JsonLinesLogger(log)])
    assert [json.loads(line)["epoch"] for line in log.read_text().splitlines()] == [1]


def _tensorboard_scalars(directory):
    """(tag, step) -> value from every TFRecord event file under ``directory``."""
    event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
    scalars = {}
    for path in sorted(directory.glob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars[(value.tag, event.step)] = value.simple_value
    return scalars


def test_tensorboard_logs_every_record_across_resume(tmp_path):
    pytest.importorskip("tensorboardX")
    fit(tmp_path, 1, loggers=_loggers(tmp_path))
    fit(tmp_path, 2, resume=True, loggers=_loggers(tmp_path))
    lines = (tmp_path / "train_metrics.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    scalars = _tensorboard_scalars(tmp_path / "tensorboard")
    expected = {
        (f"train/{k}", r["epoch"]): v for r in records for k, v in r.items() if k != "epoch"
    }
    assert set(scalars) == set(expected), set(scalars) ^ set(expected)
    assert ("train/valid", 2) in scalars
    for tag_step, value in expected.items():
        assert scalars[tag_step] == pytest.approx(value, rel=1e-6)
    names = sorted(p.name for p in (tmp_path / "tensorboard").iterdir())
    assert [n.rsplit(".", 2)[1:] for n in names] == [["train", "0"], ["train", "1"]]


def test_no_tensorboard_without_tensorboardx(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    fit(tmp_path, 1, loggers=_loggers(tmp_path))
    assert (tmp_path / "train_metrics.jsonl").exists()
    assert not (tmp_path / "tensorboard").exists()
