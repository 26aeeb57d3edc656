"""Checkpoints: the header checks, and v1 files (the pre-split trainer's layout) resume."""

import json
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest

from dgm import training
from dgm.training.checkpoint import FORMATS, same_fingerprint
from tests.training._toy import CONFIG, assert_trees_equal, fit, loss

V1 = "dgm-checkpoint-v1"


def _with_v1_checkpoint(out: Path) -> Path:
    """A v1 file (the pre-split trainer's layout: ``(model, opt_state, best_model)`` and no
    ``averaged`` in the header) of the toy fit after 1 of 2 epochs, built from a v2 one."""
    path = out / "checkpoints" / "train.eqx"
    fit(out, 1)
    state = training.Trainer.from_config(loss, CONFIG).init(fit(out / "like", 1).model)
    like = (state.model, state.opt_state, state.model, None)
    (model, opt_state, best, _), header = training.load_training(path, like, "a")
    header = {k: v for k, v in header.items() if k != "averaged"}
    training.save_checkpoint(path, (model, opt_state, best), header | {"format": V1})
    return path


def test_v1_checkpoint_resumes_bit_identically(tmp_path, x64):
    straight = fit(tmp_path / "a", 2)
    path = _with_v1_checkpoint(tmp_path / "b")
    assert training.read_header(path)["format"] == V1
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)
    assert straight.history[1]["train_loss"] == resumed.history[1]["train_loss"]
    header = training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")
    assert header["format"] == "dgm-checkpoint-v2" and header["averaged"] is False


def test_v1_checkpoint_starts_the_average_at_the_saved_model(tmp_path, x64):
    path = _with_v1_checkpoint(tmp_path)
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


def test_a_truncated_checkpoint_is_named_on_resume(tmp_path):
    fit(tmp_path, 1)
    path = tmp_path / "checkpoints" / "train.eqx"
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"checkpoint {path} is corrupt or truncated"):
        fit(tmp_path, 2, resume=True)


def test_average_in_checkpoint_needs_averaging_to_resume(tmp_path):
    fit(tmp_path, 1, trainer=training.Trainer.from_config(loss, CONFIG, ema_decay=0.5))
    with pytest.raises(ValueError, match="holds a weight average"):
        fit(tmp_path, 2, resume=True)


def test_fingerprints_ignore_run_length_fields_at_any_depth():
    def fp(**train):
        return json.dumps({"seed": 0, "train": {"learning_rate": 1e-3, **train}})

    assert same_fingerprint(fp(num_epochs=5), fp(num_epochs=9, checkpoint_every=2))
    assert not same_fingerprint(fp(learning_rate=1e-2), fp())
    assert not same_fingerprint(None, fp())


def test_a_checkpoint_without_an_average_starts_it_at_the_saved_model_not_the_best(tmp_path):
    model, opt, best = jnp.array([1.0, 2.0]), jnp.array([0.5]), jnp.array([3.0, 4.0])
    like = (jnp.zeros(2), jnp.zeros(1), jnp.zeros(2), jnp.zeros(2))
    for fmt in FORMATS:  # v1, and v2 written without an average
        path = tmp_path / f"{fmt}.eqx"
        training.save_checkpoint(
            path, (model, opt, best, None), {"format": fmt, "fingerprint": "a"}
        )
        (m, o, b, averaged), _ = training.load_training(path, like, "a")
        for got, want in [(m, model), (o, opt), (b, best), (averaged, model)]:
            np.testing.assert_array_equal(got, want)
