"""iaf-vae: the original's ``with KEY=VALUE`` command line, bad input, the NaN stop, and
(slow) the smoke preset through the CLI with ``--resume``, the generator and ``dgm sample``.

Planted bug caught (by hand, then reverted): the plain ``training.Trainer`` in place of
``NaNGuardTrainer`` (no error is raised and training runs on with a NaN loss).
"""

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm import cli, compare, training
from dgm.cli import main
from dgm.experiments import iaf_vae
from dgm.models import decoders
from dgm.training.nan_guard import NaNGuardTrainer, update_index
from tests.experiments._smoke import cli_smoke_run

ORIGINAL = ["problem=mnist", "n_h=64", "depths=[2,2]", "margs.posterior=down_iaf2_nl",
            "margs.kl_min=0.25"]  # fmt: skip


def _resolve(extra, sets=()):
    args = argparse.Namespace(name="iaf-vae", smoke=False, preset="quick", set=list(sets))
    return cli._resolve(args, list(extra))[2]


def test_original_command_line_is_accepted_as_with_and_as_set():
    via_with = _resolve(["with", *ORIGINAL])
    assert via_with == _resolve([], ORIGINAL)
    assert (via_with.problem, via_with.n_h, via_with.depths) == ("mnist", 64, (2, 2))
    assert (via_with.margs.posterior, via_with.margs.kl_min) == ("down_iaf2_nl", 0.25)


def test_bad_input_is_refused_listing_the_valid_choices(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"`margs.posterior` must be one of \['up_diag'"):
        _resolve(["with", "margs.posterior=down_iaf3"])
    with pytest.raises(ValueError, match=r"unknown config field 'model_type'; fields here: pro"):
        _resolve(["with", "model_type=cvae1"])
    with pytest.raises(ValueError, match=r"`depths` has 6 levels, which downsample the 32×32"):
        _resolve(["with", "depths=[1,1,1,1,1,1]"])
    with pytest.raises(ValueError, match=r"`margs.kl_min` must be a number >= 0; got -0.1"):
        _resolve([], ["margs.kl_min=-0.1"])
    with pytest.raises(ValueError, match=r"`problem` must be one of \['mnist', 'cifar10'\]"):
        _resolve(["with", "problem=svhn"])
    assert main(["run", "iaf-vae", "--out", str(tmp_path / "r"), "with", "n_z=0"]) == 1
    assert "`n_z` must be a positive int; got 0" in capsys.readouterr().err


def test_missing_cifar_files_stop_the_cifar_preset_with_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    out = tmp_path / "r"
    assert main(["run", "iaf-vae", "--preset", "cifar10-readme", "--out", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("dgm: error:") and "CIFAR-10" in err and "\n" not in err
    assert not (out / "metrics.json").exists()


def _toy_loss(params, batch, key):
    x, hyper = batch
    bad = hyper["update_index"] >= 3.0  # the 4th update (epoch 2, update 2) is NaN
    value = jnp.sum((params - 1.0) ** 2) + jnp.mean(x)
    return jnp.where(bad, jnp.nan, value), {}


def test_nan_loss_stops_naming_the_update_and_keeps_the_last_good_checkpoint(tmp_path):
    config = training.TrainConfig(num_epochs=3, batch_size=4, eval_every=1, anneal_steps=0)
    loader = training.ArrayLoader(np.ones((8, 3), np.float32), 4)
    trainer = NaNGuardTrainer(_toy_loss, optax.sgd(0.01), loader.num_batches, ema_decay=0.9)
    checkpoint = tmp_path / "ck.eqx"
    with pytest.raises(RuntimeError, match=r"at update 4 \(epoch 2, update 2 of 2\)"):
        training.fit(jnp.zeros(3), trainer, loader, config, key=jax.random.key(0),
                     checkpoint=checkpoint, schedules={"update_index": update_index})  # fmt: skip
    header = training.read_header(checkpoint)
    assert header["epoch"] == 1 and header["step"] == 2


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, shared_data):
    yield from cli_smoke_run(tmp_path_factory, shared_data, "iaf-vae")


@pytest.mark.slow
def test_smoke_run_scores_resumes_and_samples(smoke_run, tmp_path):
    out, args = smoke_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["test_nll_is"] <= metrics["test_neg_elbo"] + 5.0  # K = 20, 4 images
    assert set(metrics["kl_blocks"]) == {"z0_0", "z1_0"}
    for name in ("samples.png", "reconstructions.png", "model.eqx", "config.json"):
        assert (out / name).is_file()
    decoder = decoders.load(out)
    assert decoder.kind == "iaf" and decoder.image_shape == (28, 28)
    means = decoder(jnp.zeros(decoder.input_dim))
    assert means.shape == (784,) and bool(jnp.all((means > 0) & (means < 1)))
    assert main([*args, "--resume"]) == 0  # finished: resumes to the same scores
    again = json.loads((out / "metrics.json").read_text())
    assert again["test_neg_elbo"] == pytest.approx(metrics["test_neg_elbo"], rel=1e-6)
    assert main(["sample", str(out), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").is_file()


def test_presets_resolve():
    assert iaf_vae.PRESETS["mnist"].margs.posterior == "down_iaf2_nl"
    readme = iaf_vae.PRESETS["cifar10-readme"]
    assert (readme.n_h, readme.depths, readme.margs.depth_ar) == (160, (10, 10), 2)


def test_curve_and_split_batch_options(tmp_path, shared_data, monkeypatch):
    """``curve_every`` adds the test −ELBO of the weight average to each epoch's record;
    ``split_batch`` trains on the batch split over the devices; ``checkpoint_every``
    checkpoints inside epochs."""
    from dgm.training import loop

    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    saved_at, write = [], loop.write_checkpoint

    def spy(path, state, best, progress, *args):
        saved_at.append(progress.step)
        write(path, state, best, progress, *args)

    monkeypatch.setattr(loop, "write_checkpoint", spy)
    out = tmp_path / "run"
    sets = ["curve_every=1", "curve_images=32", "split_batch=true", "num_epochs=2"]

    def run(*more):
        args = ["run", "iaf-vae", "--smoke", "--out", str(out), "--no-progress", *more]
        return main([*args, *[a for s in sets for a in ("--set", s)]])

    assert run("--set", "checkpoint_every=3") == 0
    assert saved_at == [3, 4, 6, 8]  # 4 updates an epoch (a new interval on --resume: test_cli)
    records = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in records if "test_neg_elbo" in r] == [1, 2]
    # the last record scores the same model on the same 32 images with another key
    assert records[-1]["test_neg_elbo"] == pytest.approx(metrics["test_neg_elbo"], rel=0.05)
    assert records[0]["test_neg_elbo"] != records[1]["test_neg_elbo"]
    # `dgm compare` reads the run: the curve at both epochs and the final score
    table = compare.table([compare.load_run(out)], ["test_neg_elbo"], "test_neg_elbo")
    values = [records[0]["test_neg_elbo"], records[1]["test_neg_elbo"], metrics["test_neg_elbo"]]
    assert table.splitlines()[2] == "| run | 2 | " + " | ".join(f"{v:.2f}" for v in values) + " |"
    with pytest.raises(ValueError, match="`curve_every` must be"):
        iaf_vae.Config(curve_every=-1)
    with pytest.raises(ValueError, match="`checkpoint_every` must be"):
        iaf_vae.Config(checkpoint_every=-1)


def test_block_kls_leave_out_the_padding_of_a_short_last_batch():
    """``score`` with 40 test images in batches of 32 (the last batch padded with 24 blank
    images): each block's KL is the mean over the 40 real images, computed here image by
    image from the same noise, and the blocks add up to the test −ELBO less −log p(x|z).
    Scoring the padded batch's mean instead (as before this test) gave 4.112 / 27.734 against
    the right 4.216 / 27.374."""
    from dgm.experiments import _iaf_vae_eval
    from dgm.models import iaf_vae as model_lib

    sizes = dict(n_h=8, n_z=2, depths=(1, 1), num_test=40, eval_batch_size=32)
    config = iaf_vae.Config(problem="mnist", est_marglik=10, is_chunk=10, is_images=2, **sizes)
    model = iaf_vae.build_model(config, jax.random.key(0))
    test = (np.random.default_rng(0).random((40, 32, 32, 1)) < 0.3).astype(np.float32)
    test[:, :2] = test[:, -2:] = test[:, :, :2] = test[:, :, -2:] = 0
    model = model_lib.data_dependent_init(model, jnp.asarray(test[:16]), jax.random.key(1))
    key = jax.random.key(7)
    scores = _iaf_vae_eval.score(config, model, test, key)
    k_elbo = jax.random.split(key)[0]
    per_image, log_px = [], []
    for i, start in enumerate((0, 32)):
        x = np.zeros((32, 32, 32, 1), np.float32)
        x[: len(test[start : start + 32])] = test[start : start + 32]
        noise = model_lib.draw_noise(model, jax.random.fold_in(k_elbo, i), 32)
        lp, kls = model_lib.forward(model, jnp.asarray(x), noise)
        num = min(32, 40 - start)
        per_image.append(np.stack([np.asarray(k).sum(axis=(1, 2, 3)) for k in kls], 1)[:num])
        log_px.append(np.asarray(lp)[:num])
    expected = np.concatenate(per_image).mean(0)
    got = np.array(list(scores["kl_blocks"].values()))
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    neg_log_px = -np.concatenate(log_px).astype(np.float64).mean()
    np.testing.assert_allclose(scores["test_neg_elbo"] - neg_log_px, got.sum(), rtol=1e-4)


def test_cifar_scores_are_in_bits_per_dimension():
    """A model that gives each of the 3072 sub-pixels of a CIFAR-10 image probability 1/256
    scores 3072·ln 256 nats per image, exactly 8 bits/dim under the score's unit; MNIST
    stays in nats. Planted bug this caught: the factor without ln 2 (nats per dim)."""
    import math

    from dgm.experiments import _iaf_vae_eval

    unit, scale = _iaf_vae_eval._unit(iaf_vae.Config(problem="cifar10"))
    assert unit == "bits/dim"
    assert 3072 * math.log(256) * scale == pytest.approx(8.0, rel=1e-12)
    assert _iaf_vae_eval._unit(iaf_vae.Config(problem="mnist")) == ("nats", 1.0)
