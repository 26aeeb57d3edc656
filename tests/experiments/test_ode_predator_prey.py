"""The ODE predator–prey example: its explicit likelihood, and the experiment end to end.

Exact: on the manifold G(u) = y, parametrised by the rate inputs as u = [u_θ, n(u_θ)], the
constrained sampler's log density −½‖u‖² − ½ log det(J Jᵀ) (w.r.t. the manifold's area)
plus the log area element ½ log det(I + ∂nᵀ∂n) differs from the explicit-likelihood log
posterior of u_θ (the reference's target) by a constant (checked at 5 points; without the
area element the difference varies by 3.4 nats).
Slow: the smoke preset runs and ``--resume`` reproduces its metrics from checkpoints; the
quick preset's CHMC means agree with the NUTS reference (ESS-based z < 4 per rate input,
worst seen z is in the test output).
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.cli import main
from dgm.inference.manifold import ManifoldSystem
from dgm.models.ode_predator_prey import NUM_PARAMS, PredatorPreyODE
from tests.stats import z_scores


@pytest.mark.slow
def test_manifold_density_equals_the_explicit_posterior_up_to_a_constant():
    model = PredatorPreyODE(num_obs_times=3, substeps=4)
    _, y = model.observe(1)
    with jax.enable_x64(True):
        y = jnp.asarray(y)
        system = ManifoldSystem(model.generate, model.input_dim, model.output_dim)

        def noise(u_theta):
            return (jnp.log(y) - jnp.log(model.trajectory(u_theta))) / model.sigma

        def both(u_theta):
            u = jnp.concatenate([u_theta, noise(u_theta)])
            phi = system.potential(u, system.cache(u)[1])
            b = jax.jacfwd(noise)(u_theta)
            area = 0.5 * jnp.linalg.slogdet(jnp.eye(NUM_PARAMS) + b.T @ b)[1]
            return -phi + area, model.log_posterior_params(u_theta, y), system.constraint(u, y)

        points = jax.random.normal(jax.random.key(0), (5, NUM_PARAMS), jnp.float64)
        manifold, explicit, residual = jax.vmap(both)(points)
    assert np.max(np.abs(residual)) < 1e-10
    diff = np.asarray(manifold - explicit)
    np.testing.assert_allclose(diff, diff[0], atol=1e-9)
    assert np.ptp(np.asarray(explicit)) > 1.0  # the points differ in density


@pytest.mark.slow
def test_smoke_and_resume(tmp_path):
    out = tmp_path / "run"
    args = ["run", "ode-predator-prey", "--smoke", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    first = json.loads((out / "metrics.json").read_text())
    for name in ("marginals.png", "trace.png", "posterior.nc", "report.md"):
        assert (out / name).stat().st_size > 0
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    assert again["chmc"] == first["chmc"] and again["reference"] == first["reference"]


@pytest.mark.slow
def test_quick_chmc_agrees_with_the_reference(tmp_path):
    from dgm.experiments import ode_predator_prey as exp
    from dgm.runs import RunContext

    ctx = RunContext(tmp_path, progress=False)
    cfg = exp.PRESETS["quick"]
    model = PredatorPreyODE()
    _, y = model.observe(cfg.data_seed)
    _, chmc = exp.run_chmc(cfg, model, y, jax.random.key(3), ctx)
    ref_metrics, ref = exp.run_reference(cfg, model, y, jax.random.key(4), ctx)
    ref_flat = ref.reshape(-1, NUM_PARAMS)
    ref_var = ref_flat.var(0) / np.asarray(ref_metrics["ess_bulk_min"])
    z, _ = z_scores(chmc, ref_flat.mean(0), ref_var)
    print("z per rate input:", np.round(z, 2))
    assert np.all(z < 4.0), z


def test_times_cover_warm_up_for_both_methods_and_steps_match_them(tmp_path, monkeypatch):
    """Constrained HMC's ``wall_s`` times warm-up and sampling (one chain run); NUTS's
    ``wall_s`` from ``dgm.sample`` is sampling only, so the reference adds ``warmup_s``;
    ``ms_per_step`` divides by every step timed (``n_steps_run``), not the kept draws', and
    counts each chain's time on its device."""
    import arviz as az

    from dgm.experiments import ode_predator_prey as exp
    from dgm.inference.base import device_groups
    from dgm.runs import RunContext

    rng = np.random.default_rng(0)
    cfg = exp.Config(num_chains=2, num_samples=30, num_warmup=70)
    ctx = RunContext(tmp_path, progress=False)
    ref = az.from_dict(
        {"x": rng.normal(size=(2, 30, NUM_PARAMS))},
        sample_stats={"acceptance_rate": np.full((2, 30), 0.9)},
    )
    ref.posterior.attrs.update({"wall_s": 2.0, "warmup_s": 3.0, "compile_s": 7.0})
    ref.posterior.attrs["interrupted"] = 0
    monkeypatch.setattr(exp, "sample", lambda *a, **k: ref)
    metrics, _ = exp.run_reference(cfg, PredatorPreyODE(2, 2), np.ones(4), None, ctx)
    assert metrics["wall_s"] == 5.0 and metrics["compile_s"] == 7.0
    assert metrics["ess_per_s_min"] == metrics["ess_bulk_min"] / 5.0
    # Ctrl-C during the reference's sampling stops the run (exit 130), as during CHMC's;
    # it used to go on and score the draws made so far as the reference
    ref.posterior.attrs["interrupted"] = 1
    with pytest.raises(KeyboardInterrupt):
        exp.run_reference(cfg, PredatorPreyODE(2, 2), np.ones(4), None, ctx)

    chmc = az.from_dict(
        {"u": rng.normal(size=(2, 30, 12))},
        sample_stats={
            "is_accepted": np.ones((2, 30), bool),
            "n_steps": np.full((2, 30), 4),  # the kept draws' steps: 240
            "projection_failed": np.zeros((2, 30), bool),
            "constraint_residual": np.zeros((2, 30)),
        },
    )
    attrs = {"wall_s": 1.0, "compile_s": 7.0, "step_size": 0.3, "chains_disagree": 0}
    chmc.posterior.attrs.update({**attrs, "interrupted": 0, "n_steps_run": 1000})

    class Posterior:
        def sample(self, *args, **kwargs):
            return chmc

    monkeypatch.setattr(exp, "condition", lambda *a: Posterior())
    metrics, _ = exp.run_chmc(cfg, PredatorPreyODE(2, 2), np.ones(4), None, ctx)
    assert metrics["wall_s"] == 1.0
    # per chain on its device (the 2 chains run on 2 devices in the suite), as
    # lotka-volterra's; not 1e3 / 240 (the kept draws' steps)
    assert metrics["ms_per_step"] == 1e3 * 1.0 * len(device_groups(2)) / 1000
    assert len(device_groups(2)) == 2


def test_report_names_the_rates_and_puts_each_number_in_its_column():
    """``report.md``: a title, one row per rate input (true, reference and CHMC mean (sd),
    the mean error and the sd ratio) and one row per method (user audit 2: it was a bare
    table with no title or parameter names)."""
    from dgm.experiments import ode_predator_prey as exp

    def method(mean, sd, ess, rhat):
        return {"posterior_mean": mean, "posterior_sd": sd, "ess_bulk_min": ess,
                "r_hat_max": rhat, "accept_rate": 0.8, "wall_s": 7.25,
                "compile_s": 20.0}  # fmt: skip

    chmc = method([0.1, 0.2, 0.3, 0.4], [1.1, 1.2, 1.3, 1.4], 2264.0, 1.005)
    chmc |= {"mean_error_in_ref_sd": [0.5, -0.25, 0.0, 1.0], "sd_ratio": [1.03, 1.05, 1.0, 0.9]}
    ref = method([0.0, 0.25, 0.3, 0.3], [1.0, 1.0, 1.3, 1.5], 1311.0, None)
    m = {"chmc": chmc, "reference": ref, "true_u_theta": [-0.5, 0.6, 0.7, 0.8]}
    text = exp.report(exp.PRESETS["quick"], m)
    assert text.startswith("# ode-predator-prey\n")
    assert "| θ₂ predation | 0.600 | 0.250 (1.000) | 0.200 (1.200) | -0.25 | 1.05 |" in text
    assert "| constrained HMC | 4 × 300 | 2264 | 1.005 | 0.80 | 7.2 | 20.0 |" in text
    assert "| NUTS (reference) | 4 × 2000 | 1311 | – |" in text
