"""Lotka–Volterra: constrained HMC on its manifold and the experiment through the CLI.

Model-level tests (noise inversion, observed data): tests/models/test_lotka_volterra.py.
"""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.cli import main
from dgm.inference import base, constrained_hmc
from dgm.inference.manifold import (
    DenseCholesky,
    ManifoldSystem,
    TriangularBlockGram,
    project_onto_manifold,
    project_tangent,
)
from dgm.models.lotka_volterra import NUM_PARAMS, LotkaVolterra

# Constrained HMC is a float64 algorithm: the checks of its manifold run in float64; the
# CLI runs below use JAX's defaults, as users do (the experiment enables x64 itself).
x64 = pytest.mark.usefixtures("x64")

ABC_KEYS = ("abc_slice_uniform_100", "abc_rejection")  # the smoke preset's ABC methods
METHOD_FIELDS = (
    "ess_bulk_min",
    "ess_per_s_min",
    "ess_per_chain_s_min",
    "compile_s",
    "wall_s",
    "posterior_mean",
    "posterior_sd",
    "accept_rate",
)


def test_per_chain_ess_per_s_is_the_theses_protocol():
    """iid draws (each chain's ESS ≈ its 1000 draws) over 2 s of wall time: each chain had
    2 s × devices / chains of device time, so per chain ≈ 1000 / (2 × devices / 4) ESS/s;
    the pooled figure is about devices × that."""
    from dgm.experiments import lotka_volterra
    from dgm.inference.base import device_groups

    draws = np.random.default_rng(0).normal(size=(4, 1000, NUM_PARAMS))
    got = lotka_volterra._per_chain_ess_per_s(draws, 2.0)
    share = 2.0 * len(device_groups(4)) / 4
    assert 0.85 * 1000 / share < got < 1.15 * 1000 / share, (got, share)


def _two_devices(n):
    return [(None, c) for c in np.array_split(np.arange(n), 2)]


def test_method_metrics_are_the_worst_log_rate_per_second_of_sampling():
    """``ess_bulk_min`` is the smallest log-rate's bulk ESS and ``ess_per_s_min`` that over
    the sampling seconds, compilation excluded.

    Catches (audit plants): the mean ESS reported as the minimum, compile time in the
    divisor."""
    from dgm import diagnostics
    from dgm.experiments import lotka_volterra

    rng = np.random.default_rng(4)
    draws = np.cumsum(rng.normal(size=(2, 300, NUM_PARAMS)), axis=1) * [0, 1, 1, 1]
    draws += rng.normal(size=draws.shape)  # log-rate 0 iid, the others random walks
    m = lotka_volterra._method_metrics(draws, 4.0, 100.0, 0.3)
    ess = diagnostics.ess(draws)
    assert m["ess_bulk_min"] == pytest.approx(ess.min()) and ess.min() < 0.5 * ess.max()
    assert m["ess_per_s_min"] == pytest.approx(ess.min() / 4.0)
    assert m["accept_rate"] == 0.3 and m["compile_s"] == 100.0


def test_chmc_ms_per_step_is_per_chain_on_its_device(tmp_path, monkeypatch):
    """``ms_per_step`` is the time of one integrator step of one chain: the sampling time
    over every step timed (warm-up included), times the devices that ran the chains side
    by side (monkeypatched: 2).

    Catches (audit plant): the device count dropped."""
    import arviz as az

    from dgm.experiments import lotka_volterra as lv
    from dgm.runs import RunContext

    rng = np.random.default_rng(0)
    idata = az.from_dict(
        {"log_rates": rng.normal(size=(4, 30, NUM_PARAMS))},
        sample_stats={
            "is_accepted": np.ones((4, 30), bool),
            "constraint_residual": np.zeros((4, 30)),
            "projection_failed": np.zeros((4, 30), bool),
            "irreversible": np.zeros((4, 30), bool),
            "diverging": np.zeros((4, 30), bool),
        },
    )
    idata.posterior.attrs.update(
        {"wall_s": 2.0, "compile_s": 9.0, "interrupted": 0, "n_steps_run": 4000}
    )

    class Posterior:
        def sample(self, *args, **kwargs):
            return idata

    monkeypatch.setattr(lv, "condition", lambda *a, **k: Posterior())
    monkeypatch.setattr(base, "device_groups", _two_devices)
    cfg = lv.CHMCConfig(num_chains=4)
    metrics, _ = lv.run_chmc(cfg, LotkaVolterra(), np.ones(1), None, RunContext(tmp_path))
    assert metrics["ms_per_step"] == pytest.approx(1e3 * 2.0 * 2 / 4000)


def test_mean_error_is_the_absolute_gap_in_reference_sds():
    """Catches (audit plants): the gap over the variance, the gap's sign kept."""
    from dgm.experiments._lotka_volterra_report import mean_error

    ref = {"posterior_mean": [0.0, 1.0, 2.0, 3.0], "posterior_sd": [0.5, 2.0, 0.1, 1.0]}
    r = {"posterior_mean": [0.25, 0.0, 2.3, 3.0]}
    np.testing.assert_allclose(mean_error(r, ref), [0.5, 0.5, 3.0, 0.0])
    assert mean_error({"posterior_mean": [None] * 4}, ref) == [None] * 4


def test_abc_acceptance_counts_only_the_kept_iterations():
    """Slice: the share of kept iterations whose θ moved; PMMH and HMC: of accepted kept
    iterations; the simulation count covers warm-up too.

    Catches (audit plants): warm-up in the slice acceptance, the warm-up cut on the chain
    axis."""
    from types import SimpleNamespace

    from dgm.experiments._lotka_volterra_abc import ABC_METHODS, _counters

    flags = np.zeros((2, 10), bool)
    flags[:, 3:] = [[1, 0, 1, 1, 0, 1, 1], [1, 1, 1, 1, 1, 1, 0]]  # warm-up (3) never
    infos = SimpleNamespace(
        num_simulations=np.full((2, 10), 2),
        params_moved=flags,
        noise_failed=np.zeros((2, 10), bool),
        params_failed=np.zeros((2, 10), bool),
        is_accepted=flags,
    )
    for name in ("slice_uniform_100", "pmmh_uniform_1000"):
        accept, extra = _counters(ABC_METHODS[name], infos, 3)
        assert accept == pytest.approx(11 / 14), name
        assert extra["n_simulations"] == 40 and extra["n_iterations"] == 20


def test_abc_draws_are_log_rates_after_warm_up_and_only_the_stored_ones_thinned(monkeypatch):
    """A PMMH run of 2 chains (a fake runner): the draws are the kept iterations' u_z plus
    the prior location, the stored ones every ``pmmh_store_thin``-th of each chain.

    Catches (audit plants): thinning along the chain axis, the prior location dropped."""
    import dataclasses
    from types import SimpleNamespace

    from dgm.experiments import _lotka_volterra_abc as abc_exp
    from dgm.experiments import lotka_volterra as lv

    cfg = dataclasses.replace(
        lv.PRESETS["smoke"].abc, num_chains=2, pmmh_num_samples=12, pmmh_num_warmup=4,
        pmmh_store_thin=3,
    )  # fmt: skip
    raw = np.random.default_rng(0).normal(size=(2, 16, NUM_PARAMS))
    flags = np.ones((2, 16), bool)
    result = SimpleNamespace(
        draws=raw, interrupted=False, wall_s=1.0, compile_s=2.0,
        infos=SimpleNamespace(num_simulations=np.ones((2, 16)), is_accepted=flags),
    )  # fmt: skip
    runner = SimpleNamespace(run=lambda *a, **k: result)
    model = LotkaVolterra()

    class FakeRunners(abc_exp.ABCRunners):
        def __init__(self):  # nothing compiled
            self.cfg, self.model, self.y_obs = cfg, model, np.zeros(1)

        def runner(self, *args):
            return runner

        def params(self, method):
            return None

    runners = FakeRunners()
    monkeypatch.setattr(abc_exp, "_init_states", lambda *a: None)
    res = abc_exp._run_method("pmmh_uniform_1000", runners, jax.random.key(0), None, False, None)
    want = raw[:, 4:] + np.asarray(model.prior_loc)
    np.testing.assert_allclose(res.log_rates, want)
    np.testing.assert_allclose(res.stored, want[:, ::3])


def test_report_rows_show_each_figure_in_its_column():
    """Catches (audit plants): the pooled ESS/s in the per-chain column, the smallest
    mean error as the largest, the thesis's largest ESS/s as its minimum."""
    from dgm.experiments._lotka_volterra_report import PAPER_ESS_PER_S, _method_rows

    r = {"ess_per_s_min": 10.0, "ess_per_chain_s_min": 3.0, "ess_bulk_min": 50.0,
         "accept_rate": 0.8, "r_hat_max": 1.01, "wall_s": 5.0, "compile_s": 2.0,
         "mean_error_in_ref_sd": [0.1, 0.4, 0.2, 0.3]}  # fmt: skip
    (row,) = _method_rows({"chmc": r, "true_log_rates": [0.0] * 4})
    assert (row["ESS/s (min)"], row["ESS/s per chain (min)"], row["ESS min"]) == (10, 3, 50)
    assert row["max |mean err| (ref sd)"] == 0.4
    assert row["paper ESS/s (min)"] == 3.13 == min(PAPER_ESS_PER_S["chmc"])


@x64
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
    jac, factor = dense.cache(u)
    np.testing.assert_allclose(fast.potential(u, factor), dense.potential(u, factor), rtol=1e-10)
    g_dense = project_tangent(dense.potential_grad(u, jac, factor), jac, factor)
    g_fast = project_tangent(fast.potential_grad(u, jac, factor), jac, factor)
    np.testing.assert_allclose(g_fast, g_dense, rtol=1e-7, atol=1e-7 * np.max(np.abs(g_dense)))
    # off the tangent space the two gradients differ: the check above is not vacuous
    assert (
        np.max(np.abs(fast.potential_grad(u, jac, factor) - dense.potential_grad(u, jac, factor)))
        > 1e-3
    )


def _lv_gram_systems():
    """LV at a point on the manifold, with the dense Gram Cholesky and the structured factor."""
    model = LotkaVolterra()
    u_true = jnp.asarray(model.observed_inputs())
    y = model.generate(u_true)
    u = model.input_on_manifold(u_true[:4] + 0.3, y)
    structured = lambda v, j: TriangularBlockGram.from_jacobian(j, NUM_PARAMS)  # noqa: E731
    hook = lambda v: model.half_log_det_gram(v, y)  # noqa: E731
    dims = (model.generate, model.input_dim, model.output_dim)
    systems = {
        "dense": ManifoldSystem(*dims),
        "structured": ManifoldSystem(*dims, gram_factor_fn=structured),
        "banded": ManifoldSystem(*dims, gram_factor_fn=model.gram_factor),
        "dense_hook": ManifoldSystem(*dims, half_log_det_fn=hook),
        "structured_hook": ManifoldSystem(*dims, gram_factor_fn=structured, half_log_det_fn=hook),
        "banded_hook": ManifoldSystem(
            *dims, gram_factor_fn=model.gram_factor, half_log_det_fn=hook
        ),
    }
    return systems, u, y


@x64
@pytest.mark.parametrize("shift", [0.0, 0.7])
def test_noise_map_jacobian_is_inverse_of_noise_block(shift):
    """D = ∂n/∂y applied in banded form equals the dense autodiff Jacobian of the noise
    map and inverts J_n, on the manifold and off it."""
    model = LotkaVolterra()
    u = jnp.asarray(model.observed_inputs()).at[:4].add(shift)
    u = u.at[4:].add(shift * jax.random.normal(jax.random.key(2), (100,), jnp.float64))
    op = model.noise_map_jacobian(u)
    dense = jax.jacfwd(model.noise_given_params, argnums=1)(u[:4], model.generate(u))
    x = jax.random.normal(jax.random.key(5), (100, 3), jnp.float64)
    np.testing.assert_allclose(op.matvec(x), dense @ x, atol=1e-12)
    np.testing.assert_allclose(op.rmatvec(x), dense.T @ x, atol=1e-12)
    np.testing.assert_allclose(op.matvec(x[:, 0]), dense @ x[:, 0], atol=1e-12)
    jac_noise = jax.jacfwd(model.generate)(u)[:, 4:]
    np.testing.assert_allclose(dense @ jac_noise, np.eye(100), atol=1e-10)


@x64
@pytest.mark.parametrize("variant", ["structured", "banded"])
def test_triangular_block_gram_matches_dense_cholesky(variant):
    """Solves, projections, φ and ∇φ: the structured Gram factors (triangular solves, or
    the model's banded J_n⁻¹) equal the dense one."""
    systems, u, y = _lv_gram_systems()
    dense, fast = systems["dense"], systems[variant]
    rhs = jax.random.normal(jax.random.key(0), (u.shape[0] - 4, 3), jnp.float64)
    v = jax.random.normal(jax.random.key(1), u.shape, jnp.float64)

    @jax.jit
    def both():
        out = []
        for system in (dense, fast):
            phi, grad, jac, factor = system.potential_and_grad(u)
            moved = project_onto_manifold(system, u + 0.1 * v, y, jac, factor, 1e-8, 50)
            out.append(
                (
                    factor.solve(rhs[:, 0]),
                    factor.solve(rhs),
                    project_tangent(v, jac, factor),
                    moved.position,
                    moved.converged,
                    phi,
                    grad,
                )
            )
        return out

    want, got = both()
    # J Jᵀ has condition number ≈ 7e6 here: the dense path's own rounding error is ≈ 1e-9
    # of the largest entry (the tangent projection is 4e-10 off an orthogonal-QR reference,
    # the structured one 2e-11), so agreement is asserted at 1e-8 relative, 1e-9 for solves
    for a, b in zip(got[:2], want[:2], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-9 * np.abs(b).max(), rtol=0)
    for a, b in zip(got[2:], want[2:], strict=True):
        np.testing.assert_allclose(a, b, atol=1e-8 * np.abs(b).max(), rtol=0)
    assert bool(want[4]) and bool(got[4])
    jac = np.asarray(jax.jacfwd(systems["dense"].generator)(u))
    q = np.linalg.qr(jac.T)[0]
    reference = np.asarray(v) - q @ (q.T @ np.asarray(v))
    np.testing.assert_allclose(got[2], reference, atol=1e-10, rtol=0)


@x64
@pytest.mark.parametrize("variant", ["dense", pytest.param("banded_hook", marks=pytest.mark.slow)])
def test_trajectory_is_reversible_and_its_energy_error_second_order(variant):
    """The whole constrained integration on LV's 104-d manifold (N_g = 3, tol 1e-8), with
    the dense system (the 100×100 LAPACK Gram Cholesky) and the experiment's (banded J_n⁻¹,
    closed-form log-det; 5.6 s of CPU, hence slow; dense 3.1 s): S steps forward over time
    1 from a standard normal momentum, the momentum negated, S steps back recover the
    start, positions within 1e-9 and momenta within 1e-8 (measured: 3e-12 and 6e-10 dense,
    3e-12 and 5e-11 banded); |ΔH(dt)| / |ΔH(dt/2)| is in [3, 5] for dt 0.5 → 0.25 → 0.125
    (measured 4.04 and 4.01 with either system; ΔH −4.40, −1.09, −0.272).
    """
    systems, u, y = _lv_gram_systems()
    system = systems[variant]
    trajectory = constrained_hmc.build_trajectory(system.at(y), y)
    noise = jax.random.normal(jax.random.key(1), u.shape, jnp.float64)

    @jax.jit
    def round_trip(step_size, num_steps):
        phi, grad, jac, factor = system.potential_and_grad(u)
        p = project_tangent(noise, jac, factor)
        f = jnp.asarray(False)
        t0 = constrained_hmc.TrajectoryState(u, p, jac, factor, phi, grad, f, f)
        t1 = trajectory(t0, step_size, num_steps)
        back = trajectory(t1._replace(momentum=-t1.momentum), step_size, num_steps)
        energy = lambda t: t.potential + 0.5 * t.momentum @ t.momentum  # noqa: E731
        failed = t1.projection_failed | t1.is_irreversible | back.projection_failed
        return (
            energy(t1) - energy(t0),
            jnp.max(jnp.abs(back.position - u)),
            jnp.max(jnp.abs(back.momentum + p)),
            jnp.max(jnp.abs(t1.position - u)),
            failed | back.is_irreversible,
        )

    errors = []
    for step_size in (0.5, 0.25, 0.125):
        d_energy, d_position, d_momentum, moved, failed = round_trip(
            step_size, round(1 / step_size)
        )
        assert not bool(failed)
        assert float(moved) > 0.01
        assert float(d_position) < 1e-9 and float(d_momentum) < 1e-8
        errors.append(abs(float(d_energy)))
    ratios = np.array(errors[:-1]) / np.array(errors[1:])
    assert np.all((ratios > 3) & (ratios < 5)), (errors, ratios)


@x64
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["structured", "banded"])
def test_triangular_block_gram_transitions_equal_dense(variant):
    """Whole CHMC transitions from one key: same accept decisions, positions to 1e-8.

    Both systems use the closed-form log-det hook, as the experiment does; only the Gram
    factor differs. (Two kernel compilations: ≈ 10 s of CPU, hence ``slow``.)
    """
    systems, u, y = _lv_gram_systems()

    def transitions(system):
        step = constrained_hmc.build_kernel(system, y)
        params = constrained_hmc.CHMCParams(0.25, 4, 8)

        def body(state, key):
            state, info = step(key, state, params)
            return state, (state.position, info.is_accepted, info.projection_failed)

        keys = jax.random.split(jax.random.key(3), 6)
        return jax.lax.scan(body, constrained_hmc.init(system, u), keys)[1]

    pos_d, acc_d, fail_d = jax.jit(lambda: transitions(systems["dense_hook"]))()
    pos_f, acc_f, fail_f = jax.jit(lambda: transitions(systems[f"{variant}_hook"]))()
    np.testing.assert_array_equal(acc_f, acc_d)
    np.testing.assert_array_equal(fail_f, fail_d)
    assert int(acc_d.sum()) >= 3  # the chain moves: positions are compared along a path
    np.testing.assert_allclose(pos_f, pos_d, atol=1e-8, rtol=0)


@x64
@pytest.mark.slow  # 18 s; the vmap/map equality of the driver is tested fast in test_base
def test_vmapped_chains_give_the_mapped_draws():
    """``chain_map="vmap"`` (what ``"auto"`` picks with the banded factor) gives the draws
    of ``"map"``, with 3 chains so that one device batches chains whose projection loops
    differ; a dense LAPACK Cholesky, default or returned by ``gram_factor_fn``, refuses
    ``vmap`` (jaxlib hang)."""
    from dgm import condition

    model = LotkaVolterra()
    y = model.generate(jnp.asarray(model.observed_inputs()))
    hook = lambda v: model.half_log_det_gram(v, y)  # noqa: E731
    posterior = condition(
        model.generate, y, model.input_dim, half_log_det_fn=hook, gram_factor_fn=model.gram_factor
    )
    shifts = jnp.asarray([[0.0], [0.05], [-0.03]])
    u_z = jnp.log(jnp.asarray([[0.4, 0.005, 0.05, 0.001]])) + 2.0 + shifts
    init = jax.vmap(lambda z: model.input_on_manifold(z, y))(u_z)
    draws = {}
    for how in ("map", "vmap", "auto"):
        idata = posterior.sample(
            jax.random.key(1), 3, 6, init=init, chunk_size=3, chain_map=how, progress_bar=False,
            trajectory="fixed",
        )  # fmt: skip
        draws[how] = idata.posterior["u"].values
        assert idata.sample_stats["is_accepted"].values.sum() >= 6
    np.testing.assert_allclose(draws["vmap"], draws["map"], atol=1e-8, rtol=0)
    np.testing.assert_array_equal(draws["auto"], draws["vmap"])  # auto: vmap when structured
    plain = lambda v, jac: DenseCholesky.from_jacobian(jac)  # noqa: E731
    for dense in (
        condition(model.generate, y, model.input_dim),
        condition(model.generate, y, model.input_dim, gram_factor_fn=plain),
    ):
        assert dense.system.factor_type() is DenseCholesky  # so "auto" maps
        with pytest.raises(ValueError, match="`chain_map` 'vmap' needs a structured Gram"):
            dense.sample(jax.random.key(1), 2, 2, init=init, chain_map="vmap", progress_bar=False)
    with pytest.raises(ValueError, match="`chain_map` must be one of"):
        posterior.sample(jax.random.key(1), 2, 2, init=init, chain_map="pmap")


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
    for method in ("chmc", "reference", *ABC_KEYS):
        for field in METHOD_FIELDS:
            assert field in metrics[method], (method, field)
    chmc = metrics["chmc"]
    assert chmc["max_constraint_residual"] < 1e-8
    assert {"n_projection_failures", "n_irreversible"} <= set(chmc)
    config = json.loads((smoke_run / "config.json").read_text())
    assert config["seed"] == 0 and config["versions"]["jax"]


def test_smoke_run_abc_baselines(smoke_run):
    """Each ABC method of the smoke preset has finite metrics, a report row and draws."""
    import arviz as az

    metrics = json.loads((smoke_run / "metrics.json").read_text())
    for key in ABC_KEYS:
        m = metrics[key]
        for field in METHOD_FIELDS:
            assert np.all(np.isfinite(np.asarray(m[field], dtype=float))), (key, field, m[field])
        assert m["n_simulations"] > 0 and m["ess_bulk_min"] > 0 and m["wall_s"] > 0
        assert len(m["posterior_mean"]) == 4
    assert metrics["abc_rejection"]["n_simulations"] == 10_000
    report = (smoke_run / "report.md").read_text()
    assert all(f" {key} " in report for key in ABC_KEYS)
    idata = az.from_netcdf(str(smoke_run / "posterior.nc"))
    assert {"posterior", "reference", *ABC_KEYS} <= set(idata.groups())
    slice_draws = idata["abc_slice_uniform_100"]["log_rates"]
    assert slice_draws.shape == (1, 20, 4)
    np.testing.assert_allclose(
        slice_draws.values.mean(axis=(0, 1)), metrics["abc_slice_uniform_100"]["posterior_mean"]
    )


@pytest.mark.slow
def test_every_abc_method_runs_and_reports_simulations():
    """All spec §5 settings through the experiment's runner, tiny budgets, one chain."""
    import dataclasses

    from dgm.experiments import lotka_volterra as lv
    from dgm.experiments._lotka_volterra_abc import ABC_METHODS, ABCRunners, run_method

    cfg = dataclasses.replace(lv.PRESETS["smoke"].abc, methods=tuple(ABC_METHODS))
    model = LotkaVolterra()
    with jax.enable_x64(True):
        y_obs = np.asarray(model.generate(jnp.asarray(model.observed_inputs(), jnp.float64)))
    runners = ABCRunners(model, y_obs, cfg)
    for i, name in enumerate(ABC_METHODS):
        eps = cfg.rejection_epsilon if name == "rejection" else None
        res = run_method(name, runners, jax.random.key(i), epsilon=eps)
        assert res.log_rates.ndim == 3 and res.log_rates.shape[-1] == 4, name
        assert res.log_rates.shape[1] > 0 and np.all(np.isfinite(res.log_rates)), name
        assert res.extra["n_simulations"] > 0 and 0 <= res.accept_rate <= 1, name
        assert res.wall_s > 0, name


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
    for key in ABC_KEYS:
        assert after[key]["posterior_mean"] == before[key]["posterior_mean"], key
    # Same draws would also come from a full rerun with the same seed; identical timings
    # only from results that were reused, not recomputed.
    for key in ("chmc", *ABC_KEYS):
        assert after[key]["wall_s"] == before[key]["wall_s"], key


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["run", "nope"], "unknown experiment 'nope'"),
        (["run", "lotka-volterra", "--preset", "huge"], "unknown preset 'huge'"),
        (["run", "lotka-volterra", "--set", "chmc.step_size=-1"], "`chmc.step_size` must be"),
        (["run", "lotka-volterra", "--set", "chmc.bogus=1"], "unknown config field"),
        (["run", "lotka-volterra", "--set", 'abc.methods=["nope"]'], "`abc.methods` has unknown"),
        (["run", "lotka-volterra", "--set", "abc.num_chains=0"], "`abc.num_chains` must be"),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(argv, match, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and match in err[0], err
