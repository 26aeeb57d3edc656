"""Each SVGD experiment's smoke preset runs through the CLI and writes its outputs."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.cli import main
from dgm.data.svgd import COVERTYPE_URL
from dgm.inference.svgd import SVGDRunner


def _run(name, tmp_path, *args):
    out = tmp_path / "x"
    assert main(["run", name, "--smoke", "--out", str(out), "--no-progress", *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "report.md").read_text().startswith(f"# {name}")
    return out, metrics


def test_gaussian2d_smoke(tmp_path):
    out, m = _run("svgd-gaussian2d", tmp_path)
    import arviz as az

    idata = az.from_netcdf(out / "svgd.nc")
    assert idata.posterior["x"].shape == (1, 20, 2)  # smoke: 20 particles as one chain
    assert idata.svgd_trace["ksd"].shape == (1, 100)
    for key in ("mean_error", "cov_rel_error", "ksd_initial", "ksd_final", "ms_per_iter"):
        assert math.isfinite(m[key]), key
    assert m["ksd_final"] < m["ksd_initial"]
    # the errors recomputed from the saved particles (audit plants: the mean error's sign
    # kept, the covariance error not relative)
    from dgm.experiments.svgd_gaussian2d import MEAN, PRECISION

    x = np.load(out / "particles.npz")["particles"].astype(np.float64)
    cov = np.linalg.inv(PRECISION)
    assert m["mean_error"] == pytest.approx(np.max(np.abs(x.mean(0) - MEAN)), rel=1e-5)
    want = np.linalg.norm(np.cov(x.T) - cov) / np.linalg.norm(cov)
    assert m["cov_rel_error"] == pytest.approx(want, rel=1e-5)
    # the headline KSD is the V-statistic's root, which the smoke run leaves well above 0
    # where the U-statistic reads 0 (user audit, session 24)
    from dgm.experiments.svgd_gaussian2d import grad_log_density
    from dgm.inference.svgd.kernel import phi_and_ksd_uv

    x32 = jnp.asarray(x, jnp.float32)
    v = float(phi_and_ksd_uv(x32, grad_log_density(x32))[2])
    assert m["ksd_v_final"] == pytest.approx(math.sqrt(v), rel=1e-3) and v > 1e-3
    assert m["ksd_v_initial"] == float(idata.svgd_trace["ksd_v"].values[0, 0])


def test_gmm1d_smoke(tmp_path):
    out, m = _run("svgd-gmm1d", tmp_path)
    assert (out / "gmm1d.gif").read_bytes()[:4] == b"GIF8"
    assert m["ksd_final"] < m["ksd_initial"]
    # recomputed from the last frame and the mixture ⅓ N(−2, 1) + ⅔ N(2, 1) (audit plants:
    # the KSD without its square root, Φ(m) as ½(1 + erf(m / 2)), the mean error's sign)
    import scipy.stats

    x = np.load(out / "frames.npz")["frames"][-1].astype(np.float64).ravel()
    assert m["ksd_final"] == pytest.approx(math.sqrt(max(m["ksd2_u_final"], 0.0)))
    assert m["mean_error"] == pytest.approx(abs(x.mean() - 2 / 3), rel=1e-5)
    want = scipy.stats.norm.cdf(-2.0) / 3 + 2 * scipy.stats.norm.cdf(2.0) / 3
    assert m["frac_right_mode_target"] == pytest.approx(want)
    assert m["frac_right_mode"] == np.mean(x > 0)


def test_gmm1d_final_ksds_are_the_roots_of_the_statistics(tmp_path, monkeypatch):
    """The smoke run's U-statistic is about 0 or below, where the root is invisible: a
    monkeypatched 0.04 must be reported as KSD 0.2 (audit plant: the root dropped)."""
    from dgm.experiments import svgd_gmm1d

    monkeypatch.setattr(svgd_gmm1d, "_ksd2_uv", lambda x: jnp.asarray([0.04, 0.09]))
    _, m = _run("svgd-gmm1d", tmp_path)
    assert m["ksd2_u_final"] == pytest.approx(0.04) and m["ksd_final"] == pytest.approx(0.2)
    assert m["ksd_v_final"] == pytest.approx(0.3)


def test_blr_smoke(tmp_path, monkeypatch):
    from dgm.experiments import svgd_blr

    hmc = {}

    class RecordingRunner(svgd_blr.ChainRunner):
        def run(self, *args, **kwargs):
            hmc["result"] = super().run(*args, **kwargs)
            return hmc["result"]

    monkeypatch.setattr(svgd_blr, "ChainRunner", RecordingRunner)
    out, m = _run("svgd-blr", tmp_path)
    assert m["dataset"] == "breast-cancer"
    assert m["test_accuracy"] > 0.8
    assert m["ksd_final"] < 0.5 * m["ksd_initial"]  # full-data scores (minibatch: noise-bound)
    assert "hmc_test_accuracy" in m
    assert 0 < m["gaussian_exact_start_sd_ratio_median"] < 2
    # SVGD against HMC, recomputed from the saved particles and the HMC draws (audit
    # plants: the mean gap over the HMC variance, the SVGD variance in the sd ratio)
    particles = np.load(out / "particles.npz")["particles"].astype(np.float64)
    draws = np.asarray(hmc["result"].draws, np.float64)
    flat = draws.reshape(-1, draws.shape[-1])
    z = np.abs(particles.mean(0) - flat.mean(0)) / flat.std(0)
    assert m["mean_diff_in_hmc_sd_max"] == pytest.approx(z.max(), rel=1e-4)
    assert m["mean_diff_in_hmc_sd_median"] == pytest.approx(np.median(z), rel=1e-4)
    ratio = np.median(particles.std(0) / flat.std(0))
    assert m["sd_ratio_median"] == pytest.approx(ratio, rel=1e-4)

    # --resume reuses the SVGD particles (its checkpoint) and the finished HMC chains
    # (theirs): only the two Gaussian reference runs are SVGD runs again, and the same
    # numbers come out, timings included
    svgd_runs = []

    class CountingRunner(svgd_blr.SVGDRunner):
        def run(self, *args, **kwargs):
            svgd_runs.append(args[1])  # its iterations
            return super().run(*args, **kwargs)

    monkeypatch.setattr(svgd_blr, "SVGDRunner", CountingRunner)
    _, again = _run("svgd-blr", tmp_path, "--resume")
    assert len(svgd_runs) == 2 and (out / "checkpoints" / "hmc_chains.npz").exists()
    timed = [k for k in m if "wall_s" in k]
    assert {k: again[k] for k in m if k not in timed} == {k: m[k] for k in m if k not in timed}


def test_blr_evaluate_is_the_particle_mixtures_predictive():
    """Recomputed with NumPy: p_i = mean over particles of σ(y_i x_i·w); accuracy is the
    share of p_i > ½, the log-lik the mean of log p_i.

    Catches (audit plants): − log M dropped from the log-mean-exp, ½ compared on the log
    scale as 0.5, the mean of per-particle log-probabilities."""
    from dgm.experiments import svgd_blr

    rng = np.random.default_rng(0)
    w, x = rng.normal(size=(6, 3)), rng.normal(size=(40, 3))
    y = np.where(rng.uniform(size=40) < 0.5, -1.0, 1.0)
    p = np.mean(1 / (1 + np.exp(-y[:, None] * (x @ w.T))), axis=1)
    acc, ll = svgd_blr.evaluate(w, x, y)
    assert 0.2 < acc < 0.8  # both sides of ½ occur
    assert acc == pytest.approx(np.mean(p > 0.5)) and ll == pytest.approx(np.mean(np.log(p)))


def test_blr_features_are_standardised_with_training_statistics():
    from dgm.experiments import svgd_blr

    key = jax.random.key(0)
    xtr, _, xte, _ = svgd_blr.load(svgd_blr.Config(dataset="breast-cancer"), key)
    np.testing.assert_allclose(xtr[:, :-1].mean(0), 0.0, atol=1e-9)
    np.testing.assert_allclose(xtr[:, :-1].std(0), 1.0, rtol=1e-9)
    assert np.all(xtr[:, -1] == 1.0) and np.abs(xte[:, :-1].mean()) < 0.2  # bias column kept
    raw, _, _, _ = svgd_blr.load(svgd_blr.Config(dataset="breast-cancer", standardize=False), key)
    assert raw[:, :-1].max() > 100  # the raw features (areas in the thousands)


def test_bnn_smoke(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    out, m = _run("svgd-bnn", tmp_path)
    assert 0 < m["rmse_mean"] < 20
    assert "nan" not in (out / "report.md").read_text()  # one split: no standard error shown


def test_bnn_resume_runs_only_the_splits_not_finished(tmp_path, shared_data, monkeypatch):
    """Each finished split is checkpointed: after a run stopped during split 1 (its
    checkpoint missing), ``--resume`` runs split 1 alone and reports split 0's scores."""
    from dgm.experiments import svgd_bnn

    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    two = ("--set", "num_splits=2", "--set", "num_iterations=20")
    out, before = _run("svgd-bnn", tmp_path, *two)
    (out / "checkpoints" / "split_1.npz").unlink()
    ran, run_split = [], svgd_bnn.run_split
    monkeypatch.setattr(
        svgd_bnn, "run_split", lambda c, k, i, *a: ran.append(i) or run_split(c, k, i, *a)
    )
    _, after = _run("svgd-bnn", tmp_path, *two, "--resume")
    assert ran == [1]
    assert after["rmse_per_split"] == before["rmse_per_split"]
    assert after["loglik_per_split"] == before["loglik_per_split"]


def test_blr_covertype_needs_checksum(tmp_path, capsys):
    args = ["run", "svgd-blr", "--preset", "paper", "--out", str(tmp_path / "c"), "--no-progress"]
    assert main(args) == 1
    assert "`sha256` of the Covertype file is required" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["svgd-gaussian2d", "svgd-gmm1d", "svgd-blr", "svgd-bnn"])
def test_bad_config_is_usage_error(name, tmp_path, capsys):
    field = "num_splits" if name == "svgd-bnn" else "num_particles"
    args = ["run", name, "--smoke", "--set", f"{field}=0", "--out", str(tmp_path / "b")]
    assert main(args) == 1
    assert f"`{field}` must be a positive int; got 0" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name", ["svgd-gaussian2d", pytest.param("svgd-blr", marks=pytest.mark.slow)]
)
def test_ctrl_c_in_svgd_exits_130_with_one_line(name, tmp_path, capsys, monkeypatch):
    """The driver returns an interrupted run; the experiment stops and the CLI says so."""
    real_run = SVGDRunner.run

    def interrupted_run(self, *args, **kwargs):
        return real_run(self, *args, **kwargs)._replace(status="interrupted")

    monkeypatch.setattr(SVGDRunner, "run", interrupted_run)
    assert main(["run", name, "--smoke", "--out", str(tmp_path / "o"), "--no-progress"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    # SVGD runs keep no checkpoint: the line does not promise one
    assert err == ["dgm: interrupted before the first checkpoint; --resume starts the run again"]
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_gaussian2d_fixed_bandwidth_reaches_the_kernel(tmp_path, monkeypatch):
    """``--set bandwidth=0.5`` runs SVGD with h = 0.5 (a number, not a rule's name); a
    non-positive or non-numeric value names the field and the choices."""
    from dgm.experiments import svgd_gaussian2d

    seen = []
    real_build = svgd_gaussian2d.svgd.build_step

    def build_step(*args, **kwargs):
        seen.append(kwargs["bandwidth"])
        return real_build(*args, **kwargs)

    monkeypatch.setattr(svgd_gaussian2d.svgd, "build_step", build_step)
    _, m = _run("svgd-gaussian2d", tmp_path, "--set", "bandwidth=0.5")
    assert seen == [0.5] and m["ksd_final"] < m["ksd_initial"]
    for bad in ("0", "-1", "inf", "wide"):
        with pytest.raises(ValueError, match=r"`bandwidth` must be one of .* or a number > 0"):
            svgd_gaussian2d.Config(bandwidth=bad)


def test_blr_covertype_is_downloaded_only_when_allowed(tmp_path, monkeypatch):
    """As for every experiment (`dgm run NAME --download`, DGM_DOWNLOAD=1): with a checksum
    given but no file, the run stops naming the file and its source; it fetches nothing."""
    from dgm import data
    from dgm.experiments import svgd_blr

    fetched = []

    def offline(url, dest, expected_sha256):
        fetched.append(url)
        raise OSError("offline")

    monkeypatch.setattr(data, "download", offline)
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path))
    monkeypatch.delenv("DGM_DOWNLOAD", raising=False)
    config, key = svgd_blr.Config(data_sha256="0" * 64), jax.random.key(0)
    with pytest.raises(FileNotFoundError, match=r"Covertype not found at .*\(its source: https"):
        svgd_blr.load(config, key)
    assert fetched == []
    monkeypatch.setenv("DGM_DOWNLOAD", "1")
    with pytest.raises(FileNotFoundError, match="downloading it from .* failed"):
        svgd_blr.load(config, key)
    assert fetched == [COVERTYPE_URL]
