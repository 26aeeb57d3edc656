"""mnist-inpainting: the smoke preset end to end through the CLI (any decoder through
``--decoder``), ``--resume``, and clear errors for bad decoders and observations.

The default-set smoke test conditions a tiny saved VAE (4 latents) on a random observation
file, so it needs no dataset; the preset's own path (training the smoke VAE, the paper's
``observed.npz``) is the slow test.
"""

import json

import arviz as az
import jax
import numpy as np
import pytest

from dgm.cli import main
from dgm.experiments import mnist_inpainting
from dgm.models import decoders, vae
from tests.experiments._smoke import check_resume_of_a_run_from_before


def _tiny_decoder_dir(path):
    path.mkdir()
    model = vae.VAE(784, 4, (8, 8), key=jax.random.key(0))
    vae.save(path / vae.MODEL_FILE, model)
    return path


def _observed(path, values):
    np.savez(path, y_obs=np.asarray(values, np.float64))
    return path


def _args(out, *extra):
    return ["run", "mnist-inpainting", "--smoke", "--out", str(out), "--no-progress", *extra]


def _check_outputs(out):
    metrics = json.loads((out / "metrics.json").read_text())
    for method in ("chmc", "hmc"):
        m = metrics[method]
        for field in ("ess_z_median", "ess_pixels_median", "ess_per_s_z_median", "s_per_ess_z"):
            assert field in m, (method, field)
        assert m["num_chains"] == 1 and m["wall_s"] > 0
    assert metrics["chmc"]["num_draws"] == 6 and metrics["hmc"]["num_draws"] == 30
    assert metrics["chmc"]["max_constraint_residual"] < 1e-8
    assert metrics["num_observed"] == 196 and metrics["num_inpainted"] == 588
    for f in ("report.md", "inpainting.png", "traces.png", "posterior.nc", "config.json"):
        assert (out / f).exists(), f
    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert idata.posterior["pixels"].shape == (1, 6, 588)
    assert idata.hmc["z"].shape[:2] == (1, 30)
    # both methods' pixel means on one axis: xarray subtracts them pixel by pixel
    assert idata.posterior["pixels"].dims == idata.hmc["pixels"].dims
    return metrics


def _decoder_run(tmp_path):
    dec = _tiny_decoder_dir(tmp_path / "dec")
    obs = _observed(tmp_path / "obs.npz", np.random.default_rng(0).uniform(0, 1, 196))
    out = tmp_path / "run"
    return out, _args(out, "--decoder", str(dec), "--observed", str(obs))


def test_smoke_with_a_decoder_dir(tmp_path):
    out, args = _decoder_run(tmp_path)
    assert main(args) == 0
    metrics = _check_outputs(out)
    assert metrics["latent_dim"] == 4 and metrics["decoder_kind"] == "vae"
    assert metrics["chmc"]["accept_rate"] > 0  # the warm-up adapted a step that moves
    assert len(metrics["chmc"]["step_sizes"]) == 1 and metrics["chmc"]["step_sizes"][0] != 0.25
    # the generator's first pixels: ``ImageDecoder.head`` (the VAE's sliced last layer)
    # equals slicing the pixel means; a decoder without ``head_fn`` slices
    decoder = decoders.load(tmp_path / "dec")
    plain = decoders.ImageDecoder(decoder.mean_fn, 4, (28, 28), "vae")
    z = jax.random.normal(jax.random.key(1), (4,))
    head, sliced, fallback = jax.jit(
        lambda z: (decoder.head(z, 196), decoder(z)[:196], plain.head(z, 196))
    )(z)
    np.testing.assert_allclose(head, sliced, rtol=1e-6)
    np.testing.assert_array_equal(fallback, sliced)
    # every saved draw, recomputed from the decoder: CHMC's u = [z | n] meets the observed
    # rows as decoder(z)[:196] + 0.05 n, and both methods' pixels are decoder(z)[196:]
    idata = az.from_netcdf(str(out / "posterior.nc"))
    y = np.load(tmp_path / "obs.npz")["y_obs"]
    with jax.enable_x64(True):
        means = jax.jit(jax.vmap(mnist_inpainting._float64(decoders.load(tmp_path / "dec"))))
        u = idata.posterior["u"].values.reshape(-1, 200)
        chmc = np.asarray(means(u[:, :4]))
        np.testing.assert_allclose(chmc[:, :196] + 0.05 * u[:, 4:], np.broadcast_to(y, (6, 196)),
                                   atol=1e-8)  # fmt: skip
        np.testing.assert_allclose(idata.posterior["pixels"].values[0], chmc[:, 196:], atol=1e-12)
        hmc = np.asarray(means(idata.hmc["z"].values[0]))[:, 196:]
        np.testing.assert_allclose(idata.hmc["pixels"].values[0], hmc, atol=1e-12)


def test_chmc_runs_at_the_fixed_step_unless_told_to_adapt(tmp_path):
    """The spec's fixed dt in the quick and paper presets; ``chmc.adapt=false`` keeps the
    given step through warm-up (the smoke preset adapts: its decoder is untrained)."""
    for preset in ("quick", "paper"):
        assert not mnist_inpainting.PRESETS[preset].chmc.adapt
    out, args = _decoder_run(tmp_path)
    assert main([*args, "--set", "chmc.adapt=false", "--set", "chmc.step_size=0.05"]) == 0
    assert json.loads((out / "metrics.json").read_text())["chmc"]["step_sizes"] == [0.05]


def test_resuming_a_run_from_before_the_adapt_field_needs_adaptation(tmp_path, capsys):
    """Runs saved before ``chmc.adapt`` existed adapted CHMC's step: ``--resume`` with the
    new default is refused, naming the field; with ``--set chmc.adapt=true`` it goes on
    (here to fail later, on the missing decoder)."""
    argv = ["run", "mnist-inpainting", "--out", str(tmp_path / "run"), "--no-progress"]
    argv += ["--decoder", str(tmp_path / "no-decoder")]
    check_resume_of_a_run_from_before("chmc.adapt", "true", argv, capsys)


@pytest.mark.slow
def test_smoke_resume_keeps_the_finished_run(tmp_path):
    """A resumed finished run samples nothing again: the same draws and timings (18 s CPU)."""
    out, args = _decoder_run(tmp_path)
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for method in ("chmc", "hmc"):
        for field in ("wall_s", "ess_z_median", "accept_rate"):
            assert again[method][field] == metrics[method][field], (method, field)


@pytest.mark.slow
def test_smoke_preset_trains_its_decoder(tmp_path, shared_data, monkeypatch):
    """The smoke preset as users run it: trains the smoke VAE, the paper's observation
    (24 s CPU)."""
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    out = tmp_path / "run"
    assert main(_args(out)) == 0
    metrics = _check_outputs(out)
    assert metrics["latent_dim"] == 50
    assert (out / "decoder" / "model.eqx").exists()


def _error(capsys, args) -> str:
    assert main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dgm: error:"), err
    return err[0]


def test_bad_decoder_dirs(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    err = _error(capsys, _args(tmp_path / "r1", "--decoder", str(empty)))
    assert "holds no model.eqx" in err
    err = _error(capsys, _args(tmp_path / "r2", "--decoder", str(tmp_path / "missing")))
    assert "does not exist" in err
    other = tmp_path / "dmm"
    other.mkdir()
    (other / vae.MODEL_FILE).write_text('{"format": "dgm-model-v1", "kind": "dmm"}\n')
    err = _error(capsys, _args(tmp_path / "r3", "--decoder", str(other)))
    assert "kind 'dmm', which has no image decoder" in err


def test_bad_observations(tmp_path, capsys):
    dec = _tiny_decoder_dir(tmp_path / "dec")
    short = _observed(tmp_path / "short.npz", np.zeros(100))
    err = _error(capsys, _args(tmp_path / "r1", "--decoder", str(dec), "--observed", str(short)))
    assert "must be a vector of 196 pixels" in err and "got shape (100,)" in err
    nan = _observed(tmp_path / "nan.npz", np.r_[np.zeros(195), np.nan])
    err = _error(capsys, _args(tmp_path / "r2", "--decoder", str(dec), "--observed", str(nan)))
    assert "contains NaN" in err
    np.savez(tmp_path / "nokey.npz", y=np.zeros(196))
    err = _error(
        capsys,
        _args(tmp_path / "r3", "--decoder", str(dec), "--observed", str(tmp_path / "nokey.npz")),
    )
    assert "holds no array `y_obs`" in err
    err = _error(capsys, _args(tmp_path / "r4", "--digit", "10000"))
    assert "`digit` must be an MNIST test image index in 0..9999; got 10000" in err
    err = _error(capsys, _args(tmp_path / "r5", "--decoder", str(dec), "--rows", "28"))
    assert "`rows` must be less than the image height 28" in err


def test_config_errors():
    with pytest.raises(ValueError, match="`digit` must be an MNIST test image index"):
        mnist_inpainting.Config(digit=-1)
    with pytest.raises(ValueError, match="either `observed` or `digit`"):
        mnist_inpainting.Config(digit=3, observed="x.npz")
    with pytest.raises(ValueError, match="`chmc.step_size` must be a positive number"):
        mnist_inpainting.CHMCConfig(step_size=0.0)


def test_digit_observation_is_the_top_rows_plus_noise(tmp_path, shared_data, monkeypatch):
    """``--digit N --rows R``: test image N's first R·28 pixels in row-major order, scaled to
    [0, 1], plus 0.05·n (residual mean ≈ 0 and sd ≈ 0.05 over 392 pixels); the same pixels
    of the transposed image (its left columns) are 0.15 off on average."""
    from dgm.data.mnist import load_mnist_test_images

    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    dec = decoders.load(_tiny_decoder_dir(tmp_path / "dec"))
    config = mnist_inpainting.Config(digit=0, rows=14)
    y = mnist_inpainting.observation(config, dec, jax.random.key(0))
    image = load_mnist_test_images()[0] / 255.0
    residual = y - image.reshape(-1)[:392]
    assert abs(residual.mean()) < 3 * 0.05 / np.sqrt(392) and 0.045 < residual.std() < 0.055
    assert np.abs(y - image.T.reshape(-1)[:392]).mean() > 2 * np.abs(residual).mean()


def test_method_metrics_per_second_of_sampling_and_per_chain_on_its_device(monkeypatch):
    """Fabricated ESS: medians and minima over the sampling seconds, seconds per effective
    sample from the median, and the time of one iteration of one chain (warm-up included,
    chains side by side on 2 monkeypatched devices).

    Catches (audit plants): the minimum ESS per second reported as the median's, seconds
    per effective sample from the minimum, the device count dropped, the kept draws as the
    iterations timed."""
    from dgm.experiments import _mnist_inpainting_report as rep
    from dgm.inference import base

    monkeypatch.setattr(
        base, "device_groups", lambda n: [(None, c) for c in np.array_split(np.arange(n), 2)]
    )
    res = {"z": np.zeros((4, 10, 3)), "pixels": np.zeros((4, 10, 5)), "wall_s": 6.0,
           "compile_s": 50.0, "accept_rate": 0.5, "num_iterations": 25}  # fmt: skip
    ess = {"z": np.array([8.0, 20.0, 30.0]), "pixels": np.array([4.0, 10.0, 12.0, 40.0, 100.0])}
    m = rep.method_metrics(res, ess)
    assert (m["num_chains"], m["num_draws"], m["accept_rate"]) == (4, 10, 0.5)
    want = {
        "ess_z_min": 8.0, "ess_z_median": 20.0, "ess_per_s_z_median": 20 / 6,
        "ess_per_s_z_min": 8 / 6, "s_per_ess_z": 6 / 20,
        "ess_pixels_min": 4.0, "ess_pixels_median": 12.0, "ess_per_s_pixels_median": 2.0,
        "ess_per_s_pixels_min": 4 / 6, "s_per_ess_pixels": 0.5,
        "ms_per_iteration": 1e3 * 6.0 * 2 / (4 * 25),
    }  # fmt: skip
    assert {k: pytest.approx(v) for k, v in want.items()} == {k: m[k] for k in want}


def test_pixel_mean_z_is_the_gap_in_its_ess_based_standard_error():
    """Recomputed with NumPy: |mean_chmc − mean_hmc| / sqrt(var_c / ESS_c + var_h / ESS_h),
    largest over the pixels that vary (a constant pixel is left out).

    Catches (audit plants): the ESS dropped from the standard error, the square root
    dropped."""
    from dgm.experiments import _mnist_inpainting_report as rep

    rng = np.random.default_rng(2)
    c = rng.normal(0.3, 0.2, (2, 40, 4))
    h = rng.normal(0.5, 0.1, (3, 30, 4))
    c[..., 3] = h[..., 3] = 0.7  # no variance: no z
    ess = {"chmc": {"pixels": np.array([5.0, 20.0, 60.0, 0.0])},
           "hmc": {"pixels": np.array([40.0, 0.5, 90.0, 0.0])}}  # fmt: skip
    got = rep.pixel_mean_z({"chmc": {"pixels": c}, "hmc": {"pixels": h}}, ess)
    fc, fh = c.reshape(-1, 4)[:, :3], h.reshape(-1, 4)[:, :3]
    se = np.sqrt(
        fc.var(0, ddof=1) / ess["chmc"]["pixels"][:3]
        + fh.var(0, ddof=1) / np.maximum(ess["hmc"]["pixels"][:3], 1.0)
    )
    assert got == pytest.approx(np.max(np.abs(fc.mean(0) - fh.mean(0)) / se))


def test_metrics_ratios_are_chmc_over_hmc_and_the_report_shows_each_in_its_column():
    """Catches (audit plants): the ratios inverted, ESS/s in the seconds-per-ESS column."""
    from types import SimpleNamespace

    from dgm.experiments import _mnist_inpainting_report as rep

    rng = np.random.default_rng(5)
    results = {
        name: {"z": rng.normal(size=(2, n, 3)), "pixels": rng.normal(size=(2, n, 4)),
               "wall_s": wall, "compile_s": 1.0, "accept_rate": 0.9, "n_projection_failures": 0,
               "n_irreversible": 0, "n_divergent": 0, "max_constraint_residual": 0.0}
        for name, n, wall in (("chmc", 50, 9.0), ("hmc", 80, 2.0))
    }  # fmt: skip
    decoder = SimpleNamespace(kind="mlp", input_dim=3, image_shape=(2, 4))
    config = SimpleNamespace(chmc=SimpleNamespace(num_chains=2), hmc=SimpleNamespace(num_chains=2))
    m = rep.metrics(results, decoder, 4, config)
    c, h = m["chmc"], m["hmc"]
    for key in ("s_per_ess_z", "s_per_ess_pixels", "ms_per_iteration"):
        assert m[f"chmc_over_hmc_{key}"] == pytest.approx(c[key] / h[key]), key
    assert m["chmc_over_hmc_ms_per_iteration"] == pytest.approx(9.0 / 50 / (2.0 / 80))
    config.decoder, config.rows, config.noise_sd = "d", 1, 0.1
    lines = rep.report(m, config).splitlines()
    for name, label in rep.METHODS.items():
        (row,) = [line for line in lines if line.startswith(f"| {label} |")]
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        r = m[name]
        want = [r["ess_per_s_z_median"], r["s_per_ess_z"], r["ess_pixels_median"],
                r["ess_per_s_pixels_median"], r["s_per_ess_pixels"]]  # fmt: skip
        assert cells[6:] == [format(v, ".3g") for v in want], (name, cells)
