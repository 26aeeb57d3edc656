"""The epoch loop: bit-identical resume, early stopping, interruption, weight averaging."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm import training
from tests.training._toy import CONFIG, Net, assert_trees_equal, data, fit, loss


def test_resume_is_bit_identical(tmp_path):
    straight = fit(tmp_path / "a", 2)
    fit(tmp_path / "b", 1)
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)
    assert resumed.epochs == 2 and len(resumed.history) == 2
    assert straight.history[1]["train_loss"] == resumed.history[1]["train_loss"]
    assert straight.history == [
        {**h, "epoch_s": s["epoch_s"]}
        for h, s in zip(resumed.history, straight.history, strict=True)
    ]
    # and training moved the parameters at all
    first = Net(key=jax.random.key(1))
    assert not np.allclose(np.asarray(first.layer.weight), np.asarray(straight.model.layer.weight))


def test_schedules_reach_the_loss_as_float32_and_the_record(tmp_path, x64):
    seen = []

    def spy_loss(model, batch, key):
        seen.append({k: (v.dtype, v.shape) for k, v in batch[1].items()})
        return loss(model, batch, key)

    result = fit(
        tmp_path,
        2,
        trainer=spy_loss,
        schedules={"kl_weight": training.constant(1.0), "free_bits": lambda s: 0.5 * s},
        constants={"l2": 0.1},
    )
    assert seen and all(
        s == {k: (jnp.float32, ()) for k in ("kl_weight", "free_bits", "l2")} for s in seen
    )
    assert len(seen) == 1  # traced once: changing values never recompile
    last_step = result.history[-1]["step"] - 1
    assert result.history[-1]["free_bits"] == 0.5 * last_step
    assert "l2" not in result.history[-1]


def test_resume_refuses_other_config_and_seed(tmp_path):
    fit(tmp_path, 1)
    with pytest.raises(ValueError, match="different configuration"):
        fit(tmp_path, 2, resume=True, fingerprint="b")


def test_eval_fn_may_return_more_scores(tmp_path):
    def scores(model, key):
        w = float(jnp.sum(model.layer.weight**2))
        return {"valid": w, "test": 2 * w}

    result = fit(tmp_path / "a", 2, eval_fn=scores)
    assert all(h["test"] == 2 * h["valid"] for h in result.history)
    assert result.best_valid == min(h["valid"] for h in result.history)
    with pytest.raises(ValueError, match="without 'valid'"):
        fit(tmp_path / "b", 1, eval_fn=lambda m, k: {"test": 1.0})


def test_track_fn_records_scores_without_picking_the_model(tmp_path):
    """Without ``eval_fn`` the last model is kept, whatever ``track_fn`` says; its scores
    are those of the model at each epoch's end, every ``eval_every`` epochs and the last."""
    config = dataclasses.replace(CONFIG, eval_every=2)
    seen = []

    def track(model, key):
        seen.append(model)
        return {"test": float(jnp.sum(model.layer.weight**2))}

    result = fit(tmp_path, 3, config=config, eval_fn=None, track_fn=track)
    assert [("test" in h) for h in result.history] == [False, True, True]
    assert result.history[-1]["test"] == float(jnp.sum(result.model.layer.weight**2))
    assert seen[-1] is result.best_model and result.best_epoch == 3


def _print(num_epochs, lr=0.05):  # a fingerprint as the experiments write them
    return json.dumps({"train": {"learning_rate": lr, "num_epochs": num_epochs}})


def test_resume_with_another_run_length_extends_or_ends_the_run(tmp_path):
    straight = fit(tmp_path / "a", 3, fingerprint=_print(3))
    fit(tmp_path / "b", 1, fingerprint=_print(1))
    extended = fit(tmp_path / "b", 3, resume=True, fingerprint=_print(3))
    assert_trees_equal(straight.model, extended.model)
    assert [h["train_loss"] for h in extended.history] == [
        h["train_loss"] for h in straight.history
    ]
    ended = fit(tmp_path / "a", 2, resume=True, fingerprint=_print(2))  # 3 done: no update
    assert ended.epochs == 3 and len(ended.history) == 3
    assert_trees_equal(straight.model, ended.model)
    assert_trees_equal(straight.best_model, ended.best_model)
    with pytest.raises(ValueError, match="different configuration"):
        fit(tmp_path / "a", 4, resume=True, fingerprint=_print(4, lr=0.1))


def test_checkpoint_inside_an_epoch_resumes_bit_identically(tmp_path):
    """Checkpoints every 3 updates (4 per epoch); a crash in update 7 leaves update 6's,
    mid-epoch 2, and resuming (with another interval: not part of the run) finishes the
    run as a straight one, train losses included."""
    straight = fit(tmp_path / "a", 2)
    trainer = training.Trainer.from_config(loss, CONFIG)
    step, calls = trainer.step, []

    def crashing_step(state, batch, key):
        calls.append(1)
        if len(calls) == 7:
            raise RuntimeError("crash")
        return step(state, batch, key)

    trainer.step = crashing_step
    every = dataclasses.replace(CONFIG, checkpoint_every=3)
    fp = json.dumps({"train": {"checkpoint_every": 3}})
    with pytest.raises(RuntimeError, match="crash"):
        fit(tmp_path / "b", 2, config=every, trainer=trainer, fingerprint=fp)
    header = training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")
    assert (header["epoch"], header["step"], len(header["epoch_losses"])) == (1, 6, 2)
    fp = json.dumps({"train": {"checkpoint_every": 0}})
    resumed = fit(tmp_path / "b", 2, resume=True, fingerprint=fp)
    assert_trees_equal(straight.model, resumed.model)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    assert resumed.history[-1]["step"] == 8 and resumed.history[-1]["epoch_s"] > 0


def test_no_checkpoint_without_path(tmp_path):
    result = training.fit(
        Net(key=jax.random.key(1)), loss, training.ArrayLoader(data(), 4), CONFIG,
        key=jax.random.key(2), schedules=training.kl_schedule(CONFIG),
    )  # fmt: skip
    assert result.epochs == 2 and result.best_epoch == 2  # no eval_fn: the last model is best
    assert result.best_model is result.model and result.averaged_model is None


def test_a_diverged_epoch_stops_before_its_checkpoint(tmp_path):
    """The loss turns infinite from the first update of epoch 2 (its weight schedule jumps to
    inf; the weights then go NaN): ``fit`` stops naming the epoch, and the checkpoint is
    epoch 1's, with finite weights. (The DMM and VAE runs, without a guard, used to exit 0
    here and score the untrained model.)"""
    per_epoch = training.ArrayLoader(data(), CONFIG.batch_size).num_batches
    weight = {"kl_weight": lambda step: 1.0 if step < per_epoch else float("inf")}
    with pytest.raises(RuntimeError, match=r"diverged: the mean loss of epoch 2 is (nan|inf)"):
        fit(tmp_path, 3, schedules=weight)
    assert training.read_header(tmp_path / "checkpoints" / "train.eqx")["epoch"] == 1
    resumed = fit(tmp_path, 2, resume=True)  # continues from epoch 1's finite weights
    assert resumed.epochs == 2 and np.all(np.isfinite(resumed.model.layer.weight))


def test_early_stopping_keeps_best(tmp_path):
    import dataclasses

    values = iter([3.0, 1.0, 2.0, 0.5])
    config = dataclasses.replace(CONFIG, patience=1)
    result = fit(tmp_path, 4, config=config, eval_fn=lambda m, k: next(values))
    assert result.stopped_early and result.epochs == 3
    assert result.best_epoch == 2 and result.best_valid == 1.0


def test_interrupt_keeps_last_checkpoint_and_resume_continues(tmp_path):
    """Ctrl-C in epoch 2 leaves epoch 1's checkpoint; resuming matches a straight run."""
    straight = fit(tmp_path / "a", 2)
    calls = []

    def interrupting_eval(model, key):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    log = training.JsonLinesLogger(tmp_path / "b" / "log.jsonl")
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", 2, eval_fn=interrupting_eval, loggers=[log])
    header = training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")
    assert header["epoch"] == 1 and len(log.path.read_text().splitlines()) == 1
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)


@pytest.fixture(scope="module")
def averaged_runs(tmp_path_factory):
    """Straight and resumed fits with an EMA, and the fit without one."""
    out = tmp_path_factory.mktemp("ema")
    trainer = training.Trainer.from_config(loss, CONFIG, ema_decay=0.5)  # kept across fits
    valid = []

    def eval_fn(model, key):
        valid.append(model)
        return float(jnp.sum(model.layer.weight**2))

    plain = fit(out / "plain", 2)
    straight = fit(out / "a", 2, trainer=trainer, eval_fn=eval_fn)
    fit(out / "b", 1, trainer=trainer)
    resumed = fit(out / "b", 2, trainer=trainer, resume=True)
    return plain, straight, resumed, valid


def test_averaging_is_off_by_default_and_leaves_the_model_alone(averaged_runs):
    plain, straight, _, _ = averaged_runs
    assert training.Trainer(loss, optax.adam(0.1)).ema_decay is None
    assert plain.averaged_model is None
    assert_trees_equal(plain.model, straight.model)  # the average never feeds back


def test_averaged_model_is_validated_checkpointed_and_resumed(averaged_runs):
    plain, straight, resumed, valid = averaged_runs
    assert_trees_equal(straight.averaged_model, resumed.averaged_model)
    assert_trees_equal(straight.averaged_model, valid[-1])  # validation saw the average
    assert_trees_equal(
        straight.best_model, valid[int(np.argmin([h["valid"] for h in straight.history]))]
    )
    assert not np.allclose(straight.averaged_model.layer.weight, straight.model.layer.weight)


@pytest.fixture
def default_sigint():
    """The interpreter's own SIGINT handler, whatever the runner had (a shell's background
    job starts with SIGINT ignored, and the trainer then leaves it ignored, by design)."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def test_sigint_stops_at_a_safe_point_and_restores_the_handler(tmp_path, default_sigint):
    """A real SIGINT during validation: epoch 1 is checkpointed, then KeyboardInterrupt."""
    import os
    import signal

    straight = fit(tmp_path / "a", 2)
    before = signal.getsignal(signal.SIGINT)

    def signalling_eval(model, key):
        os.kill(os.getpid(), signal.SIGINT)  # deferred: validation and checkpoint finish
        return 1.0

    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", 2, eval_fn=signalling_eval)
    assert signal.getsignal(signal.SIGINT) is before
    assert training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")["epoch"] == 1
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert_trees_equal(straight.model, resumed.model)


def test_sigint_mid_epoch_drops_the_partial_epoch(tmp_path, default_sigint):
    import os
    import signal

    calls = []

    trainer = training.Trainer.from_config(loss, CONFIG)
    step = trainer.step

    def step_and_signal(state, batch, key):
        calls.append(1)
        if len(calls) == 6:  # the second update of epoch 2
            os.kill(os.getpid(), signal.SIGINT)
        return step(state, batch, key)

    trainer.step = step_and_signal
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, 2, trainer=trainer)
    assert len(calls) == 6
    header = training.read_header(tmp_path / "checkpoints" / "train.eqx")
    assert header["epoch"] == 1 and header["step"] == 4


def _clocked(monkeypatch):
    """A trainer whose every update advances the time limit's clock by one second."""
    trainer = training.Trainer.from_config(loss, CONFIG)
    step, calls = trainer.step, []

    def counted(state, batch, key):
        calls.append(1)
        return step(state, batch, key)

    trainer.step = counted
    monkeypatch.setattr(training.loop, "_clock", lambda: float(len(calls)))
    return trainer


def test_time_limit_inside_an_epoch_checkpoints_there_and_resume_continues(tmp_path, monkeypatch):
    """4 updates an epoch; a limit of 6 s stops after update 6, inside epoch 2, with a
    checkpoint there, and resuming (no limit) ends where a straight run does."""
    straight = fit(tmp_path / "a", 2)
    limited = fit(tmp_path / "b", 2, trainer=_clocked(monkeypatch), time_limit_s=6)
    assert limited.time_limited and (limited.epochs, limited.steps) == (1, 6)
    assert len(limited.history) == 1 and limited.best_epoch == 1
    header = training.read_header(tmp_path / "b" / "checkpoints" / "train.eqx")
    assert (header["epoch"], header["step"], len(header["epoch_losses"])) == (1, 6, 2)
    resumed = fit(tmp_path / "b", 2, resume=True)
    assert not resumed.time_limited and resumed.steps == 8
    assert_trees_equal(straight.model, resumed.model)
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in straight.history]
    # without validation the model at the stop is the one kept
    unvalidated = fit(
        tmp_path / "c", 2, trainer=_clocked(monkeypatch), time_limit_s=6, eval_fn=None
    )
    assert unvalidated.best_model is unvalidated.model


def test_time_limit_at_an_epoch_end_stops_before_the_next_epoch(tmp_path, monkeypatch):
    limited = fit(tmp_path / "a", 3, trainer=_clocked(monkeypatch), time_limit_s=4)
    assert limited.time_limited and (limited.epochs, limited.steps) == (1, 4)
    header = training.read_header(tmp_path / "a" / "checkpoints" / "train.eqx")
    assert (header["epoch"], header["step"], header["epoch_losses"]) == (1, 4, [])
    # a limit reached only with the last update is no stop
    done = fit(tmp_path / "b", 2, trainer=_clocked(monkeypatch), time_limit_s=8)
    assert not done.time_limited and (done.epochs, done.steps) == (2, 8)


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan"), True, "600"])
def test_time_limit_must_be_a_positive_number(tmp_path, bad):
    with pytest.raises(ValueError, match="`time_limit_s` must be a positive number"):
        fit(tmp_path, 1, time_limit_s=bad)


def test_an_infinite_epoch_loss_stops_even_with_finite_weights(tmp_path):
    """From the first update of epoch 2 the loss is +inf through a term with no gradient (a
    ``stop_gradient``-ed penalty, or a masked log 0), so the weights stay finite and the
    epoch's mean loss is inf, not NaN: ``fit`` still stops before epoch 2's checkpoint.
    Planted bug this caught: the guard testing ``isnan`` instead of ``not isfinite``."""
    per_epoch = training.ArrayLoader(data(), CONFIG.batch_size).num_batches

    def inf_loss(model, batch, key):
        value, aux = loss(model, batch, key)
        return value + jax.lax.stop_gradient(batch[1]["penalty"]), aux

    schedules = {
        "kl_weight": lambda step: 1.0,
        "penalty": lambda step: 0.0 if step < per_epoch else float("inf"),
    }
    with pytest.raises(RuntimeError, match=r"diverged: the mean loss of epoch 2 is inf"):
        fit(tmp_path, 3, trainer=inf_loss, schedules=schedules)
    assert training.read_header(tmp_path / "checkpoints" / "train.eqx")["epoch"] == 1
