"""Lotka–Volterra: the model, its observed data, and the experiment through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.cli import main
from dgm.inference.manifold import ManifoldSystem, project_tangent
from dgm.models.lotka_volterra import LotkaVolterra


def test_observed_data_matches_thesis_files(shared_data, monkeypatch):
    from dgm.data.lotka_volterra import observed_data

    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    y, diff = observed_data(LotkaVolterra())
    assert diff is not None and diff < 1e-9
    assert y.shape == (100,)
    np.testing.assert_allclose(y[-2:], [50.3637, 104.3204], atol=1e-4)


def test_noise_inversion_is_exact_and_jacobian_unit_triangular():
    model = LotkaVolterra()
    u = jnp.asarray(model.observed_inputs())
    y = model.generate(u)
    np.testing.assert_allclose(model.noise_given_params(u[:4], y), u[4:], atol=1e-10)
    jac_noise = jax.jacfwd(model.generate)(u)[:, 4:]
    np.testing.assert_allclose(np.diag(jac_noise), 1.0)
    np.testing.assert_allclose(np.triu(jac_noise, 1), 0.0)


@pytest.mark.parametrize("shift", [0.0, 0.3])
def test_structured_log_det_equals_dense_on_manifold(shift):
    """The closed-form ½ log det(J Jᵀ) and its tangential gradient match the dense ones."""
    model = LotkaVolterra()
    u_true = jnp.asarray(model.observed_inputs())
    y = model.generate(u_true)
    u = model.input_on_manifold(u_true[:4] + shift, y)
    dense = ManifoldSystem(model.generate, model.input_dim, model.output_dim)
    fast = ManifoldSystem(
        model.generate,
        model.input_dim,
        model.output_dim,
        half_log_det_fn=lambda v: model.half_log_det_gram(v, y),
    )
    jac, chol = dense.cache(u)
    np.testing.assert_allclose(fast.potential(u, chol), dense.potential(u, chol), rtol=1e-10)
    g_dense = project_tangent(dense.potential_grad(u, jac, chol), jac, chol)
    g_fast = project_tangent(fast.potential_grad(u, jac, chol), jac, chol)
    np.testing.assert_allclose(g_fast, g_dense, rtol=1e-7, atol=1e-7 * np.max(np.abs(g_dense)))
    # off the tangent space the two gradients differ: the check above is not vacuous
    assert (
        np.max(np.abs(fast.potential_grad(u, jac, chol) - dense.potential_grad(u, jac, chol)))
        > 1e-3
    )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lv") / "run"
    assert main(["run", "lotka-volterra", "--smoke", "--out", str(out), "--no-progress"]) == 0
    return out


def test_smoke_run_writes_outputs(smoke_run):
    for name in (
        "config.json",
        "metrics.json",
        "posterior.nc",
        "report.md",
        "marginals.png",
        "ess_per_s.png",
    ):
        assert (smoke_run / name).exists(), name
    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for method in ("chmc", "reference"):
        for field in (
            "ess_bulk_min",
            "ess_per_s_min",
            "compile_s",
            "wall_s",
            "posterior_mean",
            "posterior_sd",
            "accept_rate",
        ):
            assert field in metrics[method], (method, field)
    chmc = metrics["chmc"]
    assert chmc["max_constraint_residual"] < 1e-8
    assert {"n_projection_failures", "n_irreversible"} <= set(chmc)
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["seed"] == 0 and config["versions"]["jax"]


def test_existing_run_needs_resume_or_overwrite(smoke_run, capsys):
    assert main(["run", "lotka-volterra", "--smoke", "--out", str(smoke_run), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--resume" in err[0]


def test_resume_reuses_finished_methods(smoke_run):
    before = json.loads((smoke_run / "metrics.json").read_text())
    assert (
        main(
            [
                "run",
                "lotka-volterra",
                "--smoke",
                "--out",
                str(smoke_run),
                "--resume",
                "--no-progress",
            ]
        )
        == 0
    )
    after = json.loads((smoke_run / "metrics.json").read_text())
    assert after["chmc"]["posterior_mean"] == before["chmc"]["posterior_mean"]


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "lotka-volterra", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "lotka-volterra", "--set", "chmc.step_size=-1"], "`chmc.step_size` must be"),
        (["run", "lotka-volterra", "--set", "chmc.bogus=1"], "unknown config field"),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
