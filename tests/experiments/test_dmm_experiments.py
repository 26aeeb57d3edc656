"""The DMM experiments' smoke presets run through the CLI and write their outputs."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dgm import experiments
from dgm.cli import main


@pytest.mark.parametrize("name", ["dmm-polyphonic", "dmm-synthetic"])
def test_smoke_preset_through_cli(name, tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    out = tmp_path / "x"
    assert main(["run", name, "--smoke", "--out", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for field in ("test_nll_is", "test_bound_frame", "test_bound_seq", "epochs", "wall_s"):
        assert field in metrics
    assert metrics["epochs"] == 2
    # the IS estimate is at most the bound (up to sampling noise) and both are finite
    assert metrics["test_nll_is"] <= metrics["test_bound_frame"] + 0.5
    if name == "dmm-synthetic":  # the gaps to the exact −log p(x) per frame (audit plant: sign)
        kalman = metrics["kalman_nll_frame"]
        assert metrics["bound_gap_frame"] == pytest.approx(metrics["test_bound_frame"] - kalman)
        assert metrics["is_gap_frame"] == pytest.approx(metrics["test_nll_is"] - kalman)
    for f in ("report.md", "train_loss.png", "train_metrics.jsonl", "checkpoints/train.eqx"):
        assert (out / f).exists(), f
    if name == "dmm-polyphonic":  # a sampled sequence as MIDI, readable back
        from dgm.data.midi import read_piano_roll

        assert read_piano_roll(out / "sample.mid").shape == (100, 88)
    # the saved model loads back (dgm.models.dmm_io), and `dgm sample` draws from it
    from dgm.models import dmm_io

    model, head = dmm_io.load_run(out)
    assert head["experiment"] == name and model.obs_dim == head["obs_dim"]
    png = tmp_path / "new.png"
    assert main(["sample", str(out), "--num", "2", "--steps", "30", "--out", str(png)]) == 0
    assert png.stat().st_size > 0
    if name == "dmm-polyphonic":
        assert read_piano_roll(png.with_suffix(".mid")).shape == (30, 88)
    # resuming a finished run trains no more epochs and gives the same checkpoint
    before = (out / "checkpoints" / "train.eqx").read_bytes()
    assert main(["run", name, "--smoke", "--out", str(out), "--no-progress", "--resume"]) == 0
    assert (out / "checkpoints" / "train.eqx").read_bytes() == before


def test_bad_names_fail_cleanly(tmp_path, capsys):
    code = main(["run", "dmm-polyphonic", "--smoke", "--dataset", "bach", "--out", str(tmp_path)])
    assert code == 1
    assert "`dataset` must be one of" in capsys.readouterr().err
    code = main(["run", "dmm-polyphonic", "--smoke", "--inference", "st-x", "--out", str(tmp_path)])
    assert code == 1
    assert "`model.inference` must be one of" in capsys.readouterr().err


def test_resume_with_other_config_is_refused(tmp_path, shared_data, monkeypatch):
    """A checkpoint written under another config is refused, even if config.json is edited."""
    from dgm import runs, training
    from dgm.experiments import _training, dmm_synthetic

    module = experiments.get("dmm-synthetic")
    assert module is dmm_synthetic
    ctx = runs.RunContext(out=tmp_path, progress=False)
    header = {"format": "dgm-checkpoint-v1", "fingerprint": "other", "key": []}
    training.save_checkpoint(ctx.out / "checkpoints" / "train.eqx", (), header)
    with pytest.raises(ValueError, match="different configuration"):
        training.load_checkpoint(
            ctx.out / "checkpoints" / "train.eqx",
            (),
            _training.fingerprint(module.PRESETS["smoke"]),
        )


@pytest.mark.slow  # 20 s: the UKF and the nonlinear models have fast unit tests
@pytest.mark.parametrize("dataset", ["synthetic10", "synthetic11"])
def test_nonlinear_synthetic_smoke(dataset, tmp_path):
    out = tmp_path / dataset
    args = ["run", "dmm-synthetic", "--smoke", "--dataset", dataset, "--out", str(out)]
    assert main([*args, "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["dataset"] == dataset and metrics["epochs"] == 2
    fields = ("test_nll_is", "test_bound_frame", "rmse_q_mean_affine_vs_true_z")
    for field in (*fields, "rmse_ukf_smoother_vs_true_z", "ukf_nll_frame"):
        v = metrics[field]
        assert isinstance(v, float) and math.isfinite(v)
    assert 0 < metrics["rmse_ukf_smoother_vs_true_z"] < metrics["rmse_naive_vs_true_z"]
    report = (out / "report.md").read_text()
    assert "no exact log p(x)" in report and "RMSE(unscented smoother mean, true z)" in report
    assert "not implemented" not in report


def test_added_fields_keep_old_fingerprints():
    """A field added later is left out of the fingerprint at its default (old runs resume)."""
    import dataclasses

    from dgm.experiments import _training, dmm_synthetic

    config = dmm_synthetic.PRESETS["smoke"]
    added = dmm_synthetic._ADDED_FIELDS
    assert "dataset" not in json.loads(_training.fingerprint(config, added))
    other = dataclasses.replace(config, dataset="synthetic10")
    assert json.loads(_training.fingerprint(other, added))["dataset"] == "synthetic10"
    with pytest.raises(ValueError, match="`dataset` must be one of"):
        dataclasses.replace(config, dataset="synthetic12")
    for name in ("test_samples", "chunk_size", "posterior_samples"):  # 0: ZeroDivisionError
        with pytest.raises(ValueError, match=f"`{name}` must be a positive int; got 0"):
            dataclasses.replace(config, **{name: 0})


def test_frame_budget_keeps_shortest_sequences(shared_data):
    from dgm.data.polyphonic import load_polyphonic
    from dgm.experiments import dmm_polyphonic

    data = load_polyphonic("nottingham", shared_data / "polyphonic_music")["train"]
    kept = dmm_polyphonic._subset(data, 0, 14_000)
    assert kept.num_frames <= 14_000 < kept.num_frames + data.lengths[len(kept.lengths)]
    np.testing.assert_array_equal(kept.lengths, data.lengths[: len(kept.lengths)])
    assert dmm_polyphonic._subset(data, 0, 1).lengths.size == 1  # never empty
    jsb = load_polyphonic("jsb", shared_data / "polyphonic_music")
    quick = dmm_polyphonic.PRESETS["quick"]
    for split, limit in (("train", quick.max_train_frames), ("test", quick.max_eval_frames)):
        assert dmm_polyphonic._subset(jsb[split], 0, limit).num_frames == jsb[split].num_frames


def test_affine_rmse_undoes_a_linear_relabelling():
    from dgm.experiments import dmm_synthetic

    z = np.random.default_rng(0).normal(size=(5, 7, 2))
    q = z @ np.array([[2.0, 0.5], [0.0, -1.0]]) + 3.0
    assert dmm_synthetic._affine_rmse(q, z) < 1e-9 < dmm_synthetic._rmse(q, z)


@pytest.mark.slow
def test_ctrl_c_keeps_the_checkpoint_and_resume_continues(tmp_path, shared_data):
    """SIGINT to a real `dgm run` after its first checkpoint: exit 130, one line, resumable.

    Slow: two runs with their compilations (73 s measured on the shared, loaded 2-core box).
    """
    import dgm
    from dgm import training

    out, num_epochs = tmp_path / "run", 6
    # 2000 sequences of 50: 40 updates per epoch, so the signal lands in training
    args = ["run", "dmm-synthetic", "--smoke", "--no-progress", "--out", str(out)]
    args += ["--set", "num_train=2000", "--set", f"train.num_epochs={num_epochs}"]
    env = {**os.environ, "DGM_DATA_DIR": str(shared_data)}
    env["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(Path(dgm.__file__).parents[1]), env.get("PYTHONPATH")])
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dgm.cli", *args], env=env, stderr=subprocess.PIPE, text=True
    )
    checkpoint = out / "checkpoints" / "train.eqx"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, err
    line = "dgm: interrupted; the last checkpoint is kept, continue with --resume"
    assert err.strip().splitlines()[-1] == line and err.count(line) == 1
    epoch = training.read_header(checkpoint)["epoch"]
    assert 1 <= epoch < num_epochs
    assert main([*args, "--resume"]) == 0
    assert training.read_header(checkpoint)["epoch"] == num_epochs
    log = (out / "train_metrics.jsonl").read_text().splitlines()
    assert [json.loads(r)["epoch"] for r in log] == list(range(1, num_epochs + 1))


def test_runs_share_one_trainer_per_loss_and_optimizer():
    """The jitted DMM step is built once per (loss, optimizer settings), as before the split."""
    import dataclasses

    from dgm.experiments import _dmm, _training, dmm_synthetic

    cfg = dmm_synthetic.PRESETS["smoke"].train
    trainer = _training.trainer(_dmm.dmm_loss, cfg)
    assert _training.trainer(_dmm.dmm_loss, dataclasses.replace(cfg, num_epochs=7)) is trainer
    assert _training.trainer(_dmm.frozen_generative_loss, cfg) is not trainer
    other = dataclasses.replace(cfg, learning_rate=0.1)
    assert _training.trainer(_dmm.dmm_loss, other) is not trainer


def test_rmse_is_the_root_of_the_mean_squared_difference():
    """Catches (audit plant): the mean squared difference reported as the RMSE."""
    from dgm.experiments import dmm_synthetic

    assert dmm_synthetic._rmse([[0.0, 0.0]], [[3.0, 4.0]]) == pytest.approx(np.sqrt(12.5))


def test_filter_nll_is_per_observed_frame_over_all_sequences():
    """Two sequences, the second observed for 3 of its 8 frames: −(log p(x₁) + log p(x₂))
    over the 11 observed frames, each log p from the Kalman filter of the observed part.

    Catches (audit plant D06): the NLL as a mean over sequences, not frames."""
    import jax
    import jax.numpy as jnp

    from dgm.experiments import dmm_synthetic as ds
    from dgm.models import kalman

    params = ds.synthetic9()
    x, _ = ds.sample_linear_gaussian(params, 2, 8, jax.random.key(0))
    mask = np.ones((2, 8), np.float32)
    mask[1, 3:] = 0.0
    nll, smooth = ds._filter_scores(lambda a, m: ds._kalman(params, a, m), x, mask)
    parts = [kalman.kalman_filter(params, x[0], jnp.ones(8))[0]]
    parts.append(kalman.kalman_filter(params, x[1, :3], jnp.ones(3))[0])
    assert nll == pytest.approx(-float(sum(parts)) / 11, rel=1e-5)
    assert smooth.shape == x.shape
