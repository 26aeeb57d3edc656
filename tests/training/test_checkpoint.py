"""Checkpoints: the header checks, and v1 files (written by the pre-split trainer) resume."""

import json
import shutil
from pathlib import Path

import pytest

from dgm import training
from tests.training._toy import CONFIG, assert_trees_equal, fit, loss

# Written by the trainer before the v2 format (`dgm.training.fit` of commit 36a3a65, with x64
# off and on): the toy fit of `_toy.fit` after 1 of 2 epochs, fingerprint "a".
DATA = Path(__file__).parent / "data"


def _v1(x64: bool) -> Path:
    return DATA / f"v1_train_{'x64' if x64 else 'x32'}.eqx"


def _with_v1_checkpoint(out: Path, x64: bool) -> Path:
    path = out / "checkpoints" / "train.eqx"
    path.parent.mkdir(parents=True)
    shutil.copy(_v1(x64), path)
    return path


def test_v1_checkpoint_resumes_bit_identically(tmp_path, x64):
    assert training.read_header(_v1(x64))["format"] == "dgm-checkpoint-v1"
    straight = fit(tmp_path / "a", 2)
    _with_v1_checkpoint(tmp_path / "b", x64)
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)
    assert straight.history[1]["train_loss"] == resumed.history[1]["train_loss"]
    header = training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")
    assert header["format"] == "dgm-checkpoint-v2" and header["averaged"] is False


def test_v1_checkpoint_starts_the_average_at_the_saved_model(tmp_path, x64):
    path = _with_v1_checkpoint(tmp_path, x64)
    trainer = training.Trainer.from_config(loss, CONFIG, ema_decay=0.9)
    state = trainer.init(fit(tmp_path / "fresh", 1).model)
    like = (state.model, state.opt_state, state.model, state.averaged)
    (model, _, _, averaged), header = training.load_training(path, like, "a")
    assert header["epoch"] == 1
    assert_trees_equal(model, averaged)


def test_old_header_with_order_still_resumes(tmp_path):
    """Checkpoints from before `order` was dropped from the header still resume."""
    straight = fit(tmp_path / "a", 2)
    fit(tmp_path / "b", 1)
    path = tmp_path / "b" / "checkpoints" / "train.eqx"
    head, rest = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header["order"] = [[0, 1, 2]]
    path.write_bytes(json.dumps(header).encode() + b"\n" + rest)
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)


def test_foreign_files_are_refused(tmp_path):
    path = tmp_path / "c.eqx"
    path.write_bytes(b"not json\n")
    with pytest.raises(ValueError, match="not a dgm checkpoint"):
        training.read_header(path)
    training.save_checkpoint(path, (), {"format": "dgm-checkpoint-v9"})
    with pytest.raises(ValueError, match="expected format dgm-checkpoint-v1 or"):
        training.load_checkpoint(path, (), "")
    training.save_checkpoint(path, (), {"format": training.FORMAT, "fingerprint": "x"})
    with pytest.raises(ValueError, match="different configuration"):
        training.load_checkpoint(path, (), "y")


def test_average_in_checkpoint_needs_averaging_to_resume(tmp_path):
    fit(tmp_path, 1, trainer=training.Trainer.from_config(loss, CONFIG, ema_decay=0.5))
    with pytest.raises(ValueError, match="holds a weight average"):
        fit(tmp_path, 2, resume=True)
