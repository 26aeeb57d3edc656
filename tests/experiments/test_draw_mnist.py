"""draw-mnist: the smoke preset through the CLI (resume, the decoder protocol, ``dgm sample``),
the NaN stop, per-variable clipping, bad input."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm import training
from dgm.cli import main
from dgm.experiments import draw_mnist
from dgm.models import decoders
from dgm.training.nan_guard import NaNGuardTrainer
from tests.experiments._smoke import cli_smoke_run


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, shared_data):
    yield from cli_smoke_run(tmp_path_factory, shared_data, "draw-mnist")


def test_smoke_writes_scores_pictures_and_a_generator(smoke_run):
    out, _ = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    assert m["epochs"] == 2 and m["is_samples"] == 10 and m["num_test"] == 100
    np.testing.assert_allclose(m["test_bound"], m["test_recon"] + m["test_kl"], rtol=1e-12)
    assert m["test_nll_is"] <= m["test_bound"] + 2.0  # IS tightens the bound, up to noise
    for name in ("report.md", "model.eqx", "checkpoints/train.eqx", "train_loss.png",
                 "samples.png", "samples.gif", "samples_attention.gif", "reconstructions.gif",
                 "reconstructions_attention.gif", "test_curve.png"):  # fmt: skip
        assert (out / name).exists(), name
    curve = [json.loads(line) for line in (out / "train_metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in curve] == [1, 2]
    for h in curve:  # the test bound at each validation, with its parts
        np.testing.assert_allclose(h["test"], h["test_recon"] + h["test_kl"], rtol=1e-12)
    best = curve[m["best_epoch"] - 1]
    assert best["valid"] == m["valid_bound"]
    decoder = decoders.load(out)
    assert (decoder.kind, decoder.input_dim, decoder.image_shape) == ("draw", 16, (28, 28))
    means = decoder(jnp.zeros(16))
    assert means.shape == (784,) and bool(jnp.all((means > 0) & (means < 1)))


def test_resume_of_a_finished_run_reproduces_it(smoke_run):
    out, args = smoke_run
    before = json.loads((out / "metrics.json").read_text())
    assert main([*args, "--resume"]) == 0
    after = json.loads((out / "metrics.json").read_text())
    for field in ("test_bound", "test_nll_is", "epochs", "best_epoch", "valid_bound"):
        assert after[field] == before[field], field


def test_resume_may_end_or_extend_the_run_but_not_change_it(smoke_run, tmp_path, capsys):
    """`--set train.num_epochs=` on `--resume`: as many epochs as done ends the run (the
    best model is scored at once), more extends it; any other change is still refused."""
    import shutil

    out, args = smoke_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    args = [*args[:4], str(copy), *args[5:], "--resume"]
    before = json.loads((out / "metrics.json").read_text())
    assert main([*args, "--set", "train.num_epochs=1"]) == 0  # 2 done: nothing to train
    ended = json.loads((copy / "metrics.json").read_text())
    assert ended["epochs"] == 2 and ended["test_bound"] == before["test_bound"]
    assert main([*args, "--set", "train.num_epochs=3"]) == 0
    extended = json.loads((copy / "metrics.json").read_text())
    assert extended["epochs"] == 3
    assert len((copy / "train_metrics.jsonl").read_text().splitlines()) == 3
    saved = json.loads((copy / "config.json").read_text())["config"]["train"]
    assert saved["num_epochs"] == 3  # the record says how long the run now is
    capsys.readouterr()
    assert main([*args, "--set", "train.learning_rate=0.5"]) == 1
    assert "different config or seed" in capsys.readouterr().err


def test_sample_command(smoke_run, tmp_path, capsys):
    out, _ = smoke_run
    assert main(["sample", str(out), "--num", "4", "--out", str(tmp_path / "s.png")]) == 0
    for name in ("s.png", "s.gif", "s_attention.gif"):
        assert (tmp_path / name).exists(), name
    capsys.readouterr()
    assert main(["sample", str(out), "--out", str(tmp_path / "t.gif")]) == 1
    assert "`out` must name a .png file" in capsys.readouterr().err
    assert not (tmp_path / "t.gif").exists()
    assert main(["sample", str(tmp_path)]) == 1
    assert "holds no model.eqx" in capsys.readouterr().err
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.eqx").write_bytes((out / "model.eqx").read_bytes()[:2000])
    assert main(["sample", str(broken)]) == 1
    assert "is corrupt or truncated" in capsys.readouterr().err


def _toy_loss(model, batch, key):
    x, hyper = batch
    value = jnp.mean((x @ model) ** 2)
    bad = hyper["update_index"] >= 3  # the 4th update overall: epoch 2, update 2 of 2
    return jnp.where(bad, jnp.nan, value), {}


def test_nan_loss_stops_naming_epoch_and_update_and_keeps_the_checkpoint(tmp_path):
    config = training.TrainConfig(num_epochs=3, batch_size=4, eval_every=1, anneal_steps=0)
    loader = training.ArrayLoader(np.ones((8, 3), np.float32), 4)
    # DRAW trains with the shared guard; this checks the guard on a toy loss
    drawn = draw_mnist._trainer(1e-3, 0.5, 0.999, 5.0, "per-variable", 2)
    assert isinstance(drawn, NaNGuardTrainer)
    trainer = NaNGuardTrainer(_toy_loss, optax.sgd(0.01), loader.num_batches)
    checkpoint = tmp_path / "ck.eqx"
    with pytest.raises(RuntimeError, match=r"update 4 \(epoch 2, update 2 of 2\)"):
        training.fit(jnp.ones(3), trainer, loader, config, key=jax.random.key(0),
                     checkpoint=checkpoint, schedules={"update_index": float})  # fmt: skip
    assert training.read_header(checkpoint)["epoch"] == 1


def test_per_variable_clipping_clips_each_array_alone():
    clip = draw_mnist.clip_per_variable(5.0)
    grads = {"a": jnp.full((4,), 10.0), "b": jnp.asarray([3.0, 0.0])}
    out, _ = clip.update(grads, clip.init(grads))
    np.testing.assert_allclose(jnp.linalg.norm(out["a"]), 5.0, rtol=1e-6)  # 20 → 5
    np.testing.assert_allclose(out["b"], [3.0, 0.0])  # norm 3 < 5: unchanged


def test_per_variable_clipping_clips_mu_and_log_sigma_apart():
    """The reference's μ and log σ layers are one ``posterior`` layer here: each half of its
    weight and bias is clipped as its own variable, every other array whole."""
    from dgm.models import draw

    model = draw.DRAW((4, 4), 2, 3, 4, 4, None, None, key=jax.random.key(0))
    grads = jax.tree.map(lambda a: jnp.full_like(a, 10.0), eqx.filter(model, eqx.is_array))
    grads = eqx.tree_at(lambda m: m.posterior.bias, grads, jnp.asarray([9, 0, 0, 1, 1, 1.0]))
    clip = draw_mnist.clip_per_variable(5.0)
    out, _ = clip.update(grads, clip.init(grads))
    mu_w, log_sigma_w = np.split(np.asarray(out.posterior.weight), 2)
    np.testing.assert_allclose([np.linalg.norm(mu_w), np.linalg.norm(log_sigma_w)], 5.0, rtol=1e-6)
    np.testing.assert_allclose(out.posterior.bias, [5, 0, 0, 1, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out.decoder.weight), 5.0, rtol=1e-6)


def test_bad_input_is_refused(tmp_path, capsys):
    with pytest.raises(ValueError, match=r"`read_n` must be an int from 1 to 28"):
        draw_mnist.Config(read_n=0)
    with pytest.raises(ValueError, match=r"`write_n` must be an int from 1 to 28.*got 29"):
        draw_mnist.Config(write_n=29)
    with pytest.raises(ValueError, match="`clip` must be one of"):
        draw_mnist.Config(clip="none")
    with pytest.raises(ValueError, match="`matmul_dtype` must be one of"):
        draw_mnist.Config(matmul_dtype="float16")
    base = ["run", "draw-mnist", "--out", str(tmp_path / "r")]
    assert main([*base, "--preset", "huge"]) == 1
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert main([*base, "--smoke", "--read-size", "3"]) == 1
    assert "unrecognized arguments for draw-mnist: --read-size" in capsys.readouterr().err
    assert main([*base, "--smoke", "--read-n", "40"]) == 1
    assert "`read_n` must be an int from 1 to 28" in capsys.readouterr().err


@pytest.mark.skipif(jax.local_device_count() < 2, reason="needs two host devices")
def test_split_batch_step_averages_the_slices_gradients():
    """DRAW's scans and fused backward pass under ``split_batch``: the update is SGD on the
    mean of the slices' gradients, each slice with the key folded with its device index."""
    config = draw_mnist.PRESETS["smoke"]
    model = draw_mnist.build_model(config, jax.random.key(0))
    x = (jax.random.uniform(jax.random.key(1), (4, 784)) < 0.2).astype(jnp.float32)
    hyper, key = {"update_index": jnp.float32(0)}, jax.random.key(2)
    trainer = NaNGuardTrainer(draw_mnist.loss, optax.sgd(1.0), 1, split_batch=True)
    state, metrics = trainer.step(trainer.init(model), (x, hyper), key)
    grad_fn = eqx.filter_value_and_grad(draw_mnist.loss, has_aux=True)
    slices = [
        grad_fn(model, (x[2 * i : 2 * i + 2], hyper), jax.random.fold_in(key, i)) for i in (0, 1)
    ]
    assert float(metrics["loss"]) == pytest.approx(
        np.mean([float(v) for (v, _), _ in slices]), rel=1e-5
    )
    for got, before, g0, g1 in zip(
        *(jax.tree.leaves(eqx.filter(t, eqx.is_inexact_array)) for t in (state.model, model)),
        *(jax.tree.leaves(g) for _, g in slices),
        strict=True,
    ):
        np.testing.assert_allclose(got, before - (g0 + g1) / 2, rtol=1e-4, atol=1e-6)


def test_attention_windows_are_drawn_inside_their_own_tile():
    from dgm.experiments._pictures import READ_COLOUR, _frame

    images = np.zeros((4, 28, 28), np.float32)
    # tile 0: a window far past its right and bottom edges; tile 1: one wholly outside
    # (nothing drawn); tiles 2, 3: one inside
    extent = (np.array([10.0, 40.0, 5.0, 5.0]), np.array([10.0, 2.0, 5.0, 5.0]),
              np.array([60.0, 50.0, 9.0, 9.0]), np.array([60.0, 9.0, 9.0, 9.0]))  # fmt: skip
    img = np.asarray(_frame(images, [(READ_COLOUR, extent)], scale=1, cols=2))
    red = np.all(img == READ_COLOUR, axis=-1)
    tiles = {i: red[1 + r * 29 : 29 + r * 29, 1 + c * 29 : 29 + c * 29]
             for i, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)])}  # fmt: skip
    assert red.sum() == sum(t.sum() for t in tiles.values())  # no colour on the padding
    assert tiles[0][10:, 27].any() and tiles[0][27, 10:].any()  # clipped at the tile's edge
    assert not tiles[1].any()
    assert tiles[2][5, 5:11].all() and tiles[3][5, 5:11].all()


def test_bound_parts_leave_out_the_padding_of_a_short_last_batch():
    """With the posterior's log σ pinned at −60 (z_t = μ_t to float32 rounding) L^x and L^z
    are deterministic functions of the image, so their means over 5 images must not depend
    on the evaluation batch size: batches of 5 (none padded), 2 and 3 (the last one padded
    with blank images) agree with the per-image means. Planted bug this caught: the padded
    rows summed into the means."""
    from dgm.experiments import _draw_eval
    from dgm.models import draw

    model = draw.DRAW((5, 4), 2, 2, 8, 8, 2, 3, key=jax.random.key(3))
    w, b = model.posterior.weight, model.posterior.bias
    model = eqx.tree_at(
        lambda m: (m.posterior.weight, m.posterior.bias),
        model,
        (w.at[2:].set(0.0), b.at[2:].set(-60.0)),
    )
    x = (np.random.default_rng(4).uniform(size=(5, 20)) < 0.4).astype(np.float32)
    key = jax.random.key(5)
    recon, kl, _ = eqx.filter_jit(draw.neg_elbo_parts)(model, jnp.asarray(x), key)
    want = (float(np.mean(np.asarray(recon, np.float64))), float(np.mean(np.asarray(kl))))
    for batch in (5, 2, 3):
        got = _draw_eval.bound_parts(model, x, key, batch)
        np.testing.assert_allclose(got, want, rtol=1e-5, err_msg=str(batch))
