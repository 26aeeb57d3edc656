"""Shared training loop: resume is bit-identical, loaders, schedules, checkpoint checks."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm import runs, training


class _Net(eqx.Module):
    layer: eqx.nn.Linear

    def __init__(self, *, key):
        self.layer = eqx.nn.Linear(3, 1, dtype=jnp.float32, key=key)


def _loss(model, batch, key):
    x, hyper = batch
    noise = 0.01 * jax.random.normal(key, x.shape[:1], jnp.float32)
    pred = jax.vmap(model.layer)(x)[:, 0] + noise
    target = x[:, 0] - 2.0 * x[:, 1]
    return jnp.mean((pred - target) ** 2) * hyper["kl_weight"], {}


_CONFIG = training.TrainConfig(
    num_epochs=2, batch_size=4, learning_rate=0.05, anneal_steps=5, eval_every=1, l2=0.0
)


def _fit(tmp_path, num_epochs, resume=False, config=_CONFIG, fingerprint="a", plot=False):
    x = jax.random.normal(jax.random.key(0), (18, 3), jnp.float32)
    ctx = runs.RunContext(out=tmp_path, resume=resume, progress=False)
    return training.fit(
        _Net(key=jax.random.key(1)),
        _loss,
        training.ArrayLoader(x, config.batch_size),
        _fit_config(config, num_epochs),
        key=jax.random.key(2),
        ctx=ctx,
        eval_fn=lambda m, k: float(jnp.sum(m.layer.weight**2)),
        fingerprint=fingerprint,
        plot=plot,
    )


def _fit_config(config, num_epochs):
    import dataclasses

    return dataclasses.replace(config, num_epochs=num_epochs)


def test_resume_is_bit_identical(tmp_path):
    straight = _fit(tmp_path / "a", 2)
    _fit(tmp_path / "b", 1)
    resumed = _fit(tmp_path / "b", 2, resume=True, plot=True)
    for a, b in zip(jax.tree.leaves(straight.model), jax.tree.leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert resumed.epochs == 2 and len(resumed.history) == 2
    assert straight.history[1]["train_loss"] == resumed.history[1]["train_loss"]
    assert (tmp_path / "b" / "train_metrics.jsonl").read_text().count("\n") == 2
    assert (tmp_path / "b" / "train_loss.png").exists()
    # and training moved the parameters at all
    first = _Net(key=jax.random.key(1))
    assert not np.allclose(np.asarray(first.layer.weight), np.asarray(straight.model.layer.weight))


def test_resume_reads_old_header_with_order(tmp_path):
    """Checkpoints from before `order` was dropped from the header still resume."""
    straight = _fit(tmp_path / "a", 2)
    _fit(tmp_path / "b", 1)
    path = tmp_path / "b" / "checkpoints" / "train.eqx"
    head, rest = path.read_bytes().split(b"\n", 1)
    header = json.loads(head)
    header["order"] = [[0, 1, 2]]
    path.write_bytes(json.dumps(header).encode() + b"\n" + rest)
    resumed = _fit(tmp_path / "b", 2, resume=True)
    for a, b in zip(jax.tree.leaves(straight.model), jax.tree.leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_resume_refuses_other_config(tmp_path):
    _fit(tmp_path, 1)
    with pytest.raises(ValueError, match="different configuration"):
        _fit(tmp_path, 2, resume=True, fingerprint="b")


def test_early_stopping_keeps_best(tmp_path):
    import dataclasses

    config = dataclasses.replace(_CONFIG, patience=1)
    x = jax.random.normal(jax.random.key(0), (8, 3), jnp.float32)
    values = iter([3.0, 1.0, 2.0, 0.5])
    result = training.fit(
        _Net(key=jax.random.key(1)),
        _loss,
        training.ArrayLoader(x, 4),
        _fit_config(config, 4),
        key=jax.random.key(2),
        ctx=runs.RunContext(out=tmp_path, progress=False),
        eval_fn=lambda m, k: next(values),
        plot=False,
    )
    assert result.stopped_early and result.epochs == 3
    assert result.best_epoch == 2 and result.best_valid == 1.0


def test_train_step_compiles_once_and_descends():
    model = _Net(key=jax.random.key(1))
    opt = training.make_optimizer(_CONFIG)
    opt_state = opt.init(eqx.filter(model, eqx.is_inexact_array))
    step = training.make_train_step(eqx.debug.assert_max_traces(_loss, max_traces=1), opt)
    x = jax.random.normal(jax.random.key(0), (16, 3), jnp.float32)
    hyper = {"kl_weight": jnp.asarray(1.0, jnp.float32)}
    losses = []
    for i in range(60):
        model, opt_state, m = step(model, opt_state, (x, hyper), jax.random.key(i))
        losses.append(float(m["loss"]))
    assert losses[-1] < 0.05 * losses[0]


def test_sequence_loader_buckets_and_pads():
    lengths = np.array([5, 2, 9, 3, 7])
    mask = (np.arange(10)[None, :] < lengths[:, None]).astype(np.float32)
    x = np.ones((5, 10, 2), np.float32) * mask[..., None]
    loader = training.SequenceLoader(x, mask, 2, bucket_width=4)
    rows = loader.order(np.random.default_rng(0))
    assert rows.shape == (3, 2)
    assert sorted(rows[rows >= 0].tolist()) == [0, 1, 2, 3, 4]
    for row in rows:
        xb, mb = loader.batch(row)
        valid = row[row >= 0]
        assert xb.shape[1] == min(10, 4 * int(np.ceil(lengths[valid].max() / 4)))
        assert float(mb.sum()) == lengths[valid].sum()
    # buckets: sorted by length, contiguous pairs
    assert {tuple(sorted(r.tolist())) for r in rows} == {(1, 3), (0, 4), (-1, 2)}


def test_kl_weight_schedule():
    assert training.kl_weight(0, 5000) == 0.01
    assert training.kl_weight(2500, 5000) == pytest.approx(0.51)
    assert training.kl_weight(10**6, 5000) == 1.0
    assert training.kl_weight(0, 0) == 1.0


def test_l2_penalty_skips_boolean_masks():
    from dgm.nn.flows import MaskedLinear

    layer = MaskedLinear(np.ones((2, 2), bool), key=jax.random.key(0))
    expected = float(jnp.sum(layer.weight**2) + jnp.sum(layer.bias**2))
    assert float(training.l2_penalty(layer)) == pytest.approx(expected)


def test_config_validation_names_field():
    with pytest.raises(ValueError, match="`train.batch_size` must be a positive int; got 0"):
        training.TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="`train.kl_initial` must be in"):
        training.TrainConfig(kl_initial=2.0)


def test_interrupt_keeps_last_checkpoint_and_resume_continues(tmp_path):
    """Ctrl-C in epoch 2 leaves epoch 1's checkpoint; resuming matches a straight run."""
    straight = _fit(tmp_path / "a", 2)
    calls = []

    def interrupting_eval(model, key):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return 1.0

    x = jax.random.normal(jax.random.key(0), (18, 3), jnp.float32)
    with pytest.raises(KeyboardInterrupt):
        training.fit(
            _Net(key=jax.random.key(1)),
            _loss,
            training.ArrayLoader(x, _CONFIG.batch_size),
            _CONFIG,
            key=jax.random.key(2),
            ctx=runs.RunContext(out=tmp_path / "b", progress=False),
            eval_fn=interrupting_eval,
            fingerprint="a",
            plot=False,
        )
    header = json.loads((tmp_path / "b" / "checkpoints" / "train.eqx").read_bytes().split(b"\n")[0])
    assert header["epoch"] == 1
    resumed = _fit(tmp_path / "b", 2, resume=True)
    for a, b in zip(jax.tree.leaves(straight.model), jax.tree.leaves(resumed.model), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def _tensorboard_scalars(directory):
    """(tag, step) -> value from every TFRecord event file under ``directory``."""
    import struct

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
    _fit(tmp_path, 1)
    _fit(tmp_path, 2, resume=True)
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


def test_no_tensorboard_without_tensorboardx(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    _fit(tmp_path, 1)
    assert (tmp_path / "train_metrics.jsonl").exists()
    assert not (tmp_path / "tensorboard").exists()
