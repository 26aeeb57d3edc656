"""The pose experiment: its baselines' energies, the RMSE metric, bad input, the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm import cli
from dgm.experiments import _pose_methods as methods
from dgm.experiments import pose
from dgm.inference import base
from dgm.models.pose import LATENT_DIM, scene_inputs
from tests.experiments._smoke import check_resume_of_a_run_from_before


@pytest.mark.usefixtures("x64")
def test_hierarchical_energy_is_the_latent_energy_at_the_mapped_state(shared_data):
    """Mapped from u, each prior term of the state energy is the matching ½‖u_block‖² and
    the likelihood terms agree, so both energies are equal (the hierarchical target
    differs only by the Jacobian of the map, the normaliser it omits)."""
    from dgm.data.pose import pose_generator

    gen = pose_generator("thesis", root=shared_data)
    u_data = scene_inputs()
    y = np.asarray(jax.jit(lambda u: gen(u))(jnp.asarray(u_data[0])))
    z = jnp.asarray(u_data[1:3, :LATENT_DIM])

    @jax.jit
    def both(z):
        s = methods.hierarchical_state(gen, z)
        return (
            methods.latent_energy(gen, z, y),
            methods.hierarchical_energy(gen, s, y),
            methods.hierarchical_positions(gen, s) - gen.joint_positions(z),
        )

    for k in range(2):
        e_latent, e_hier, diff = both(z[k])
        np.testing.assert_allclose(e_hier, e_latent, rtol=1e-10)
        assert float(jnp.max(jnp.abs(diff))) < 1e-12


def test_hmc_baseline_compiles_its_start_states_as_one_program(compiles):
    """The baselines' start states (energy and gradient at every chain's start) are one
    compiled program: run op by op, each operation compiled one (the pose experiment's
    quick preset compiled 547 programs, about 490 of them here; now 38). A 13-operation
    energy on shapes no other test uses: the old code compiled 37 programs in this test."""

    def energy(x):
        a = jnp.sin(x) * jnp.cos(x) + jnp.tanh(x)
        b = jnp.exp(-(x**2)) + jnp.log1p(x**2) - jnp.arctan(x)
        return 0.5 * jnp.sum(x**2) + 1e-3 * jnp.sum(a * b) / jnp.sqrt(1.0 + jnp.sum(b**2))

    starts, key = np.linspace(-1.0, 1.0, 3 * 11).reshape(3, 11), jax.random.key(5)
    compiles.clear()
    draws, *_ = methods.run_hmc(energy, starts, key, 0.3, (2, 3), 4, 4, None, False)
    assert draws.shape == (3, 4, 11) and np.all(np.isfinite(draws))
    assert len(compiles) <= 3  # the start states, the chains' keys, the sampling chunk


def test_running_rmse_includes_the_homogeneous_ones():
    rng = np.random.default_rng(0)
    truth = np.vstack([rng.normal(size=(3, 19)), np.ones((1, 19))])
    draws = truth + 0.1 * rng.normal(size=(2, 5, 4, 19))
    draws[:, :, 3] = 1.0
    got = pose.running_rmse(draws, truth)
    for c in range(2):
        for i in range(5):
            mean = draws[c, : i + 1].mean(axis=0)
            assert got[c, i] == pytest.approx(np.sqrt(np.sum((mean - truth) ** 2) / 76))


def test_score_times_each_draw_by_its_chains_share_of_the_devices(monkeypatch):
    """4 chains on 2 devices (monkeypatched) for 8 s: each chain had 8 × 2 / 4 = 4 s, so
    draw k of 10 is at start_s + 0.4 k s; ``rmse_at_s[t]`` is the chain-averaged RMSE of
    the running mean at the last draw at or before t (None before the first draw and past
    the last). Recomputed here draw by draw.

    Catches (audit plants): the device count dropped from the chain's share, draw k timed
    at (k − 1)/draws, ``start_s`` dropped, the time index off by one, the chains' RMSEs
    combined by other than their mean, ``rmse_pooled_mean`` without its square root, the
    report's seconds per chain the run's wall time.
    """
    rng = np.random.default_rng(1)
    truth = np.vstack([rng.normal(size=(3, 19)), np.ones((1, 19))])
    positions = truth + rng.normal(size=(4, 10, 4, 19)) * rng.uniform(0.1, 1.0, (4, 1, 1, 1))
    positions[:, :, 3] = 1.0
    two_devices = lambda n: [(None, c) for c in np.split(np.arange(n), 2)]  # noqa: E731
    monkeypatch.setattr(base, "device_groups", two_devices)
    res = methods.MethodResult(positions, 8.0, 0.5, 0.7, {}, None)
    cfg = pose.Config(rmse_times=(1.0, 2.0, 3.0, 5.0, 6.0))
    metrics, curve = pose.score(res, truth, cfg, start_s=1.0)

    def rmse_after(k):  # draws 1..k of each chain, averaged over the 4 chains
        means = positions[:, :k].mean(axis=1)
        return np.mean([np.sqrt(np.mean((m - truth) ** 2)) for m in means])

    assert metrics["s_per_chain"] == 4.0
    np.testing.assert_allclose(curve[:, 0], 1.0 + 0.4 * np.arange(1, 11))
    np.testing.assert_allclose(curve[:, 1], [rmse_after(k) for k in range(1, 11)])
    at = metrics["rmse_at_s"]
    assert at["1"] is None and at["6"] is None
    # 2 s: draw 2 (at 1.8 s); 3 s: draw 5, exactly at 3 s; 5 s: the last draw
    np.testing.assert_allclose([at["2"], at["3"], at["5"]], [rmse_after(k) for k in (2, 5, 10)])
    assert metrics["rmse_final"] == pytest.approx(rmse_after(10))
    pooled = positions.reshape(-1, 4, 19).mean(axis=0)
    assert metrics["rmse_pooled_mean"] == pytest.approx(np.sqrt(np.mean((pooled - truth) ** 2)))
    # the report's table: seconds per chain in its column, the milestones in theirs
    from dgm.experiments._pose_report import report

    m = {"hmc": metrics, "scene": 1, "setting": "fast", "sigma": 0.1, "observation": "notebook"}
    lines = report(m).splitlines()
    header = lines.index(next(line for line in lines if line.lstrip().startswith("method")))
    row = dict(zip(lines[header].split(), lines[header + 2].split(), strict=True))
    assert row["s/chain"] == "4" and row["rmse_final"] == f"{rmse_after(10):.4g}"
    (at_row,) = [line for line in lines if line.startswith("| hmc |")]
    assert at_row == "| hmc | — | " + " | ".join(f"{at[t]:.4g}" for t in "235") + " | — |"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--scene", "4"], "`scene` must be 1, 2 or 3; got 4"),
        (["--config", "paper"], "`setting` must be one of \\['notebook', 'thesis', 'fast'\\]"),
        (["--set", 'methods=["mcmc"]'], "`methods` must be one of"),
        (["--set", "observation=thesis"], "`observation` must be one of \\['notebook', 'model'\\]"),
    ],
)
def test_bad_arguments_fail_with_one_line(args, match, tmp_path, capsys):
    assert cli.main(["run", "pose", "--smoke", "--out", str(tmp_path / "r"), *args]) == 1
    err = capsys.readouterr().err
    assert err.startswith("dgm: error:") and len(err.strip().splitlines()) == 1
    import re

    assert re.search(match, err), err


@pytest.mark.slow
def test_smoke_through_cli_and_resume(tmp_path, shared_data, monkeypatch):
    """The smoke preset end to end (8 min wall, 1.3 min CPU, on the 2 cores at load 12), then a
    resume that reuses every method's checkpoint and gives the same metrics."""
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    out = tmp_path / "run"
    argv = ["run", "pose", "--smoke", "--config", "fast", "--out", str(out), "--no-progress"]
    assert cli.main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for name in pose.METHODS:
        m = metrics[name]
        assert np.isfinite(m["rmse_final"]) and m["num_draws"] >= 2
    assert metrics["chmc"]["max_constraint_residual"] < 1e-8
    assert metrics["start"] == "typical" and metrics["start_s"] > 0  # the fast setting's starts
    for f in ("posterior.nc", "rmse.png", "skeleton.png", "report.md"):
        assert (out / f).stat().st_size > 0
    import arviz as az

    idata = az.from_netcdf(str(out / "posterior.nc"))
    assert {"posterior", "hmc", "hier"} <= set(idata.groups())
    dims = ("chain", "draw", "coordinate", "joint")  # shared: the groups line up in xarray
    assert idata.posterior["positions"].dims == idata.hmc["positions"].dims == dims
    assert cli.main([*argv, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for name in pose.METHODS:
        assert again[name]["rmse_final"] == metrics[name]["rmse_final"]
        assert again[name]["wall_s"] == metrics[name]["wall_s"]
    assert again["start_s"] == metrics["start_s"]


def test_resuming_a_run_from_before_the_observation_field_needs_the_old_observation(
    tmp_path, monkeypatch, capsys
):
    """A run saved before ``observation`` existed drew y from the setting's generator, so
    ``--resume`` with the new default is refused, naming the field, and with
    ``--set observation=model`` it goes on (here to fail later, on the missing data)."""
    out = tmp_path / "run"
    argv = ["run", "pose", "--smoke", "--config", "fast", "--out", str(out), "--no-progress"]
    monkeypatch.setenv("DGM_DATA_DIR", str(tmp_path / "no-data"))
    check_resume_of_a_run_from_before("observation", "model", argv, capsys)


def test_chmc_milestones_compare_only_where_every_curve_is_defined():
    t = np.arange(1.0, 11.0)
    chmc = np.stack([t, np.linspace(0.3, 0.01, 10)], axis=1)
    slow = np.stack([t[:8], np.full(8, 0.2)], axis=1)  # defined until 8 s
    m = pose._chmc_milestones({"chmc": chmc, "hmc": slow}, 0.05)
    assert m["s_compared_until"] == 8.0
    assert m["s_below_baselines"] == 4.0  # 0.203 at 4 s ≥ 0.2; 0.171 at 5 s < 0.2
    assert m["s_below_thesis_final"] == 9.0  # first value below 0.05: 0.042 at 9 s
    good = np.stack([t[:8], np.full(8, 0.02)], axis=1)  # a baseline below CHMC at 8 s
    m = pose._chmc_milestones({"chmc": chmc, "hmc": slow, "hier": good}, None)
    assert m["s_below_baselines"] is None and m["s_below_thesis_final"] is None


@pytest.mark.usefixtures("x64")
def test_scene_observation_is_the_notebooks_unless_drawn_from_the_model(shared_data):
    """Every setting conditions on the notebook's observation (its σ = 0.001 generator at
    the scene's inputs); ``observation="model"`` draws it from the setting's generator."""
    from dgm.data.pose import pose_generator

    u = jnp.asarray(scene_inputs()[2])
    gens = {s: pose_generator(s) for s in ("notebook", "thesis")}
    by = {s: np.asarray(jax.jit(lambda v, g=gen: g(v))(u)) for s, gen in gens.items()}
    for setting in ("notebook", "thesis", "fast"):
        gen = gens[pose.SIGMA_OF_SETTING[setting]]
        got = pose.scene_observation(pose.Config(scene=3, setting=setting), gen)
        np.testing.assert_array_equal(got, by["notebook"])
    config = pose.Config(scene=3, setting="fast", observation="model")
    model = pose.scene_observation(config, gens["thesis"])
    np.testing.assert_array_equal(model, by["thesis"])
    # the two differ by the noise inputs' scale alone: 0.009 u_noise
    np.testing.assert_allclose(model - by["notebook"], 0.009 * np.asarray(u[LATENT_DIM:]))


def test_latent_starts_of_each_kind():
    """``start=truth`` puts every chain at the scene's true latent inputs; the other kinds
    keep what they were (zeros; prior draws from the key)."""
    u_true = scene_inputs()[1]
    key = jax.random.key(3)
    cfg = pose.Config(scene=2, setting="thesis", num_chains=3, start="truth")
    starts, info = pose.latent_starts(cfg, None, None, u_true, key)
    assert starts.shape == (3, LATENT_DIM) and info["start_s"] == 0.0
    np.testing.assert_array_equal(starts, np.tile(u_true[:LATENT_DIM], (3, 1)))
    zero, _ = pose.latent_starts(pose.Config(num_chains=2), None, None, u_true, key)
    np.testing.assert_array_equal(zero, np.zeros((2, LATENT_DIM)))
    prior, _ = pose.latent_starts(
        pose.Config(setting="thesis", num_chains=2), None, None, u_true, key
    )
    with jax.enable_x64(True):
        want = np.asarray(jax.random.normal(key, (2, LATENT_DIM), jnp.float64))
    np.testing.assert_array_equal(prior, want)


def test_amortized_starts_are_valid_poses_and_resume_from_the_checkpoint(tmp_path, shared_data):
    """``start=amortized``: one draw per chain of q refined on the scene (a few steps here),
    every joint in front of both cameras, the seconds charged; a resumed run reads the
    saved starts instead of training again."""
    from dgm.data.pose import pose_generator
    from dgm.runs import RunContext

    gen = pose_generator("thesis", root=shared_data)
    u_true = scene_inputs()[1]
    y_obs = np.asarray(gen(jnp.asarray(u_true, jnp.float32)))
    cfg = pose.Config(scene=2, setting="thesis", num_chains=3, start="amortized",
                      amortize_steps=40, refine_steps=20)  # fmt: skip
    ctx = RunContext(tmp_path)
    starts, info = pose.latent_starts(cfg, gen, y_obs, u_true, jax.random.key(0), ctx)
    assert starts.shape == (3, LATENT_DIM) and info["start_s"] > 0
    assert np.all(np.isfinite(np.asarray(jax.vmap(gen.noise_free)(jnp.asarray(starts)))))
    assert len({tuple(row) for row in starts}) == 3  # three draws, not one start repeated
    again = pose.latent_starts(
        cfg, None, None, u_true, jax.random.key(0), RunContext(tmp_path, resume=True)
    )
    np.testing.assert_array_equal(again[0], starts)
    assert again[1] == info
    with pytest.raises(ValueError, match="`amortize_steps`"):
        pose.Config(start="amortized", amortize_steps=0)


@pytest.mark.parametrize("stage", ["amortize", "refine"])
def test_ctrl_c_while_training_the_amortized_starts_stops_the_run(monkeypatch, stage):
    """``dgm.amortize`` and ``refine`` return the q so far on Ctrl-C; the experiment must
    stop there (exit 130), not start its chains from a half-trained q."""
    import dgm

    class Q:
        def __init__(self, status):
            self.status, self.wall_s, self.compile_s = status, 0.0, 0.0

        def refine(self, *args, **kwargs):
            return Q("interrupted" if stage == "refine" else "completed")

        def sample(self, *args, **kwargs):
            raise AssertionError("the run went on to draw starts from a half-trained q")

    first = "interrupted" if stage == "amortize" else "completed"
    monkeypatch.setattr(dgm, "amortize", lambda *args, **kwargs: Q(first))
    gen = type("Gen", (), {"noise_free": staticmethod(lambda z: z[:76]), "sigma": 0.01})()
    cfg = pose.Config(start="amortized", num_chains=2)
    with pytest.raises(KeyboardInterrupt):
        pose.amortized_latent_starts(cfg, gen, np.zeros(76), jax.random.key(0))


def test_posterior_file_of_any_subset_of_methods(tmp_path):
    """CHMC alone (its draws already in ``posterior.nc``), or the baselines alone, give a
    file with the groups of the methods that ran (CHMC alone used to raise in ArviZ)."""
    import arviz as az

    from dgm.experiments._pose_report import save_posterior
    from dgm.runs import RunContext

    pos = np.random.default_rng(0).normal(size=(2, 5, 4, 19))
    ctx = RunContext(tmp_path / "chmc", progress=False)
    az.from_dict(posterior={"positions": pos}).to_netcdf(str(ctx.path("posterior.nc")))
    save_posterior(ctx, {"chmc": pos})
    idata = az.from_netcdf(str(ctx.path("posterior.nc")))
    assert set(idata.groups()) == {"posterior"}
    np.testing.assert_array_equal(idata.posterior["positions"].values, pos)
    ctx = RunContext(tmp_path / "baselines", progress=False)
    save_posterior(ctx, {"hmc": pos, "hier": pos + 1})
    idata = az.from_netcdf(str(ctx.path("posterior.nc")))
    assert set(idata.groups()) == {"hmc", "hier"}
    np.testing.assert_array_equal(idata.hier["positions"].values, pos + 1)


def test_an_empty_method_list_is_refused_before_the_run(capsys):
    """``--set methods=`` (or ``[]``) ran the scene and ended in an ``IndexError`` traceback
    from the report's empty table, after the figures were written."""
    with pytest.raises(ValueError, match=r"`methods` must name at least one of \['chmc'"):
        pose.Config(methods=())
    assert cli.main(["run", "pose", "--smoke", "--set", "methods=", "--print-config"]) == 1
    assert "`methods` must name at least one of" in capsys.readouterr().err
