"""Constrained HMC: manifold invariants, reversibility check, and exact-moment z-tests.

Targets with exact answers:
- uniform distribution on the unit sphere in R³ (generator ‖u‖): E u = 0, E u_i² = 1/3;
- a linear-Gaussian generator with noise: the conditional of θ is Gaussian in closed form;
- an ellipsoid ‖D u‖ = 1, whose Gram determinant varies along the manifold, so it is the
  target on which a missing ½ log det(J Jᵀ) term shows (on the sphere and on the linear
  generator J Jᵀ is constant on the manifold and that term cannot matter). Its exact
  moments come from 2-d quadrature.

Calibration: `pytest -m calibration` runs the three moment tests on 50 fresh seeds
(1000-1049); with the correct kernel the worst z was 2.87 (sphere), 3.17 (ellipsoid) and
3.13 (linear), against the threshold 4.5.
Power: test_planted_bugs_are_caught (marked slow) removes the log-det term, the
Metropolis step and the momentum projection in turn and requires the z-test to fail.
"""

import arviz as az
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.inference import constrained_hmc, manifold
from dgm.inference.adaptation import warmup
from tests.stats import moment_stats, z_scores

Z_MAX = 4.5
D_ELLIPSOID = np.array([1.0, 1.5, 2.5])


def sphere(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


def ellipsoid(u):
    return jnp.sqrt(jnp.sum((jnp.asarray(D_ELLIPSOID) * u) ** 2, keepdims=True))


A = np.array([[1.0, 0.5], [-0.3, 1.2], [0.8, -0.7]])
SIGMA = 0.5
Y_LIN = np.array([0.7, -1.1, 0.4])


def linear(u):
    return jnp.asarray(A) @ u[:2] + SIGMA * u[2:]


def linear_posterior():
    cov = np.linalg.inv(np.eye(2) + A.T @ A / SIGMA**2)
    return cov @ A.T @ Y_LIN / SIGMA**2, cov


def ellipsoid_moments(n=800):
    """E[u_i²] under exp(−½‖u‖²)/‖∇G‖ on {‖D u‖ = 1} by midpoint quadrature."""
    th = (np.arange(n) + 0.5) * np.pi / n
    ph = (np.arange(2 * n) + 0.5) * np.pi / n
    th, ph = np.meshgrid(th, ph, indexing="ij")
    s = np.stack([np.sin(th) * np.cos(ph), np.sin(th) * np.sin(ph), np.cos(th)], -1)
    u = s / D_ELLIPSOID
    du_th = (
        np.stack([np.cos(th) * np.cos(ph), np.cos(th) * np.sin(ph), -np.sin(th)], -1) / D_ELLIPSOID
    )
    du_ph = np.stack([-np.sin(th) * np.sin(ph), np.sin(th) * np.cos(ph), 0 * th], -1) / D_ELLIPSOID
    area = np.linalg.norm(np.cross(du_th, du_ph), axis=-1)
    grad_norm = np.linalg.norm(D_ELLIPSOID**2 * u, axis=-1)
    w = np.exp(-0.5 * np.sum(u**2, -1)) / grad_norm * area
    return np.einsum("ij,ijk->k", w, u**2) / w.sum()


def run(
    generator, y, dim, key, step_size, num_steps, num_geodesic_steps=2, chains=8, draws=1000,
    num_warmup=50, init=None,
):  # fmt: skip
    posterior = dgm.condition(generator, y, dim)
    return posterior.sample(
        key,
        num_chains=chains,
        num_samples=draws,
        num_warmup=num_warmup,
        step_size=step_size,
        num_steps=num_steps,
        num_geodesic_steps=num_geodesic_steps,
        init=init,
        progress_bar=False,
    )


def linear_exact_starts(key, chains=8):
    """Exact posterior draws on the linear manifold: θ from its Gaussian conditional, the
    noise inputs solved from y = Aθ + σ n (no burn-in needed, no Gauss–Newton compile)."""
    mean, cov = linear_posterior()
    theta = np.asarray(jax.random.multivariate_normal(key, mean, cov, (chains,)), np.float64)
    noise = (Y_LIN[None, :] - theta @ A.T) / SIGMA
    return np.concatenate([theta, noise], axis=1)


@pytest.fixture(scope="module")
def sphere_run():
    return run(sphere, [1.0], 3, jax.random.key(11), 0.8, (2, 4))


@pytest.fixture(scope="module")
def ellipsoid_run():
    return run(ellipsoid, [1.0], 3, jax.random.key(12), 0.3, (3, 6))


@pytest.fixture(scope="module")
def linear_run():
    return run(linear, Y_LIN, 5, jax.random.key(13), 0.6, (2, 4))


def test_sphere_moments(sphere_run):
    u = sphere_run.posterior["u"].values
    z, n_eff = z_scores(moment_stats(u), np.r_[np.zeros(3), np.full(3, 1 / 3)])
    assert np.all(n_eff >= 1000), n_eff
    assert np.all(z < Z_MAX), z


def test_sphere_energy_is_the_kept_states_hamiltonian(sphere_run):
    """``sample_stats.energy`` (ArviZ's, for ``az.bfmi`` / ``az.plot_energy``) is H of the
    state kept with its momentum: on the unit sphere φ = ½, and the tangent momentum of the
    kept pair is N(0, I₂) (Metropolis keeps the joint law), so E H = ½ + 1 and var H = 1."""
    energy = sphere_run.sample_stats["energy"].values
    z, n_eff = z_scores(energy[..., None], np.array([1.5]))
    assert n_eff[0] >= 1000 and z[0] < Z_MAX, (z, n_eff)
    assert abs(energy.var() - 1.0) < 0.1, energy.var()
    assert np.all(az.bfmi(sphere_run) > 0.3)


def test_lp_is_each_draws_log_density_on_the_manifold(ellipsoid_run):
    """``sample_stats.lp`` (ArviZ's) of a draw u is −½ uᵀu − ½ log det J Jᵀ, here
    recomputed from the draws with ``jax.jacfwd``; on the ellipsoid it varies with u."""
    u = ellipsoid_run.posterior["u"].values.reshape(-1, 3)
    with jax.enable_x64(True):
        jac = np.asarray(jax.vmap(jax.jacfwd(ellipsoid))(jnp.asarray(u)))
    gram = np.einsum("nij,nkj->nik", jac, jac)
    expected = -0.5 * np.sum(u**2, -1) - 0.5 * np.linalg.slogdet(gram)[1]
    lp = ellipsoid_run.sample_stats["lp"].values.reshape(-1)
    assert np.ptp(expected) > 0.3
    np.testing.assert_allclose(lp, expected, rtol=0, atol=1e-9)


def test_linear_gaussian_moments(linear_run):
    theta = linear_run.posterior["u"].values[..., :2]
    mean, cov = linear_posterior()
    stats = np.concatenate([theta, theta**2, theta[..., :1] * theta[..., 1:]], -1)
    expected = np.r_[mean, np.diag(cov) + mean**2, cov[0, 1] + mean[0] * mean[1]]
    z, n_eff = z_scores(stats, expected)
    assert np.all(n_eff >= 1000), n_eff
    assert np.all(z < Z_MAX), z


def test_ellipsoid_second_moments(ellipsoid_run):
    u = ellipsoid_run.posterior["u"].values
    z, n_eff = z_scores(u**2, ellipsoid_moments())
    assert np.all(n_eff >= 1000), n_eff
    assert np.all(z < Z_MAX), z


@pytest.mark.parametrize("name", ["sphere_run", "ellipsoid_run", "linear_run"])
def test_diagnostic_floors(name, request):
    """Floors around the correct kernel's values (seed 11-13: acceptance 0.52-0.74 and
    projection failures 0-22 %, highest on the curved ellipsoid), residual tiny."""
    stats = request.getfixturevalue(name).sample_stats
    accept = float(stats["is_accepted"].values.mean())
    assert 0.4 < accept < 0.995, accept
    assert int(stats["diverging"].values.sum()) == 0
    assert float(stats["projection_failed"].values.mean()) < 0.35
    assert float(stats["constraint_residual"].values.max()) < 1e-8


def _system(generator, dim, out):
    return manifold.ManifoldSystem(generator, dim, out)


def test_constraint_and_tangent_momentum_after_every_step():
    """|c(u)| < 1e-8 and J p ≈ 0 after each integrator step, in float64."""
    with jax.enable_x64(True):
        system = _system(ellipsoid, 3, 1)
        y = jnp.ones(1)
        traj = jax.jit(constrained_hmc.build_trajectory(system, y, num_geodesic_steps=2))
        u = jnp.array([1.0, 0.0, 0.0])
        phi, grad, jac, factor = system.potential_and_grad(u)
        p = manifold.project_tangent(jnp.array([0.3, -1.0, 0.7]), jac, factor)
        f = jnp.asarray(False)
        t = constrained_hmc.TrajectoryState(u, p, jac, factor, phi, grad, f, f)
        for _ in range(20):
            t = traj(t, 0.2, 1)
            assert not bool(t.projection_failed | t.is_irreversible)
            assert float(jnp.abs(ellipsoid(t.position) - 1.0)[0]) < 1e-8
            assert float(jnp.max(jnp.abs(t.jac @ t.momentum))) < 1e-10


def test_reversibility_flag_clean_for_small_steps_raised_for_absurd():
    with jax.enable_x64(True):
        system = _system(sphere, 3, 1)
        kernel = jax.jit(constrained_hmc.build_kernel(system, jnp.ones(1), num_geodesic_steps=1))
        state = constrained_hmc.init(system, jnp.array([0.0, 0.6, 0.8]))
        keys = jax.random.split(jax.random.key(3), 50)
        small_params = constrained_hmc.CHMCParams(jnp.asarray(0.05), 1, 3)
        small = [kernel(k, state, small_params)[1] for k in keys]
        assert not any(bool(i.is_irreversible | i.projection_failed) for i in small)
        big_params = constrained_hmc.CHMCParams(jnp.asarray(2.5), 1, 3)
        big = [kernel(k, state, big_params)[1] for k in keys]
        flagged = sum(bool(i.is_irreversible | i.projection_failed) for i in big)
        assert flagged >= 10, flagged
        failed = [i for i in big if bool(i.is_irreversible | i.projection_failed)]
        assert all(not bool(i.is_accepted) and float(i.accept_prob) == 0.0 for i in failed)


def _trajectory_start(system, u, v):
    """The trajectory state at ``u`` on the manifold with momentum Π_u(v)."""
    phi, grad, jac, factor = system.potential_and_grad(u)
    p = manifold.project_tangent(v, jac, factor)
    f = jnp.asarray(False)
    return constrained_hmc.TrajectoryState(u, p, jac, factor, phi, grad, f, f)


def _energy(t):
    return float(t.potential + 0.5 * jnp.dot(t.momentum, t.momentum))


def test_trajectory_is_reversible_and_its_energy_error_second_order():
    """The whole integration on the ellipsoid (float64, N_g = 2, tol 1e-8): S steps forward,
    the momentum negated, S steps back return to the start, positions within 1e-9 and
    momenta within 1e-8 (measured: 2e-10 and 1e-9 at dt 0.1, limited by the projection's
    tolerance); and the energy error over a fixed time 1.2 is second order: |ΔH(dt)| /
    |ΔH(dt/2)| in [3, 5] (measured 4.42 and 4.08 for dt 0.1 → 0.05 → 0.025; |ΔH| 1.8e-2,
    4.1e-3, 1.0e-3). The trajectory travels 0.95 in position, so neither check is vacuous.

    Bugs this catches, each planted by hand in constrained_hmc.py and then reverted: a
    full last kick instead of the half kick (positions back 1.1e-2 off at dt 0.1; the
    energy ratios stay second order, 4.7 and 4.9); a full first kick (positions 1.0e-2
    off); the kicks without the tangent projection (momenta 5.0e-2 off); p' projected with
    the sub-step start's Jacobian instead of the end's (the reversibility check fires).
    """
    with jax.enable_x64(True):
        system = _system(ellipsoid, 3, 1)
        traj = jax.jit(constrained_hmc.build_trajectory(system, jnp.ones(1), num_geodesic_steps=2))
        u = jnp.array([1.0, 0.0, 0.0])
        t0 = _trajectory_start(system, u, jnp.array([0.3, -1.0, 0.7]))
        errors = []
        for dt, num_steps in ((0.1, 12), (0.05, 24), (0.025, 48)):
            t1 = traj(t0, dt, num_steps)
            back = traj(t1._replace(momentum=-t1.momentum), dt, num_steps)
            for t in (t1, back):
                assert not bool(t.projection_failed | t.is_irreversible)
            assert float(jnp.max(jnp.abs(t1.position - u))) > 0.5
            assert float(jnp.max(jnp.abs(back.position - u))) < 1e-9
            assert float(jnp.max(jnp.abs(back.momentum + t0.momentum))) < 1e-8
            errors.append(abs(_energy(t1) - _energy(t0)))
        ratios = np.array(errors[:-1]) / np.array(errors[1:])
        assert np.all((ratios > 3) & (ratios < 5)), (errors, ratios)


def test_reverse_check_tests_both_constraint_space_and_position_space(plant):
    """The sub-step's reversibility check (spec §2.4) flags a step back that misses the
    start by δ along the manifold's normal n̂ with |δ| = 1e-6: within the position test's
    √tol = 1e-4, so only the constraint-space test |J(u)(u − u_r)|∞ > tol (here
    |J δ n̂| = 1e-6 > 1e-8) can flag it; and by δ = 1e-3 along a tangent t̂, which only the
    position test can flag (J(u) t̂ = 0). δ n̂ = 1e-9 and δ t̂ = 1e-5, under both
    thresholds, are not flagged. The plant moves the reverse projection's result (the
    second of the sub-step's two projections) by δ, on a sub-step of h = 0.05 from the
    ellipsoid's (1, 0, 0), where |J| = 1 and the unplanted step back misses by 1.1e-10.

    Each test deleted from constrained_hmc.py by hand (then reverted) fails this test:
    without the constraint-space test the normal δ = 1e-6 goes unflagged, without the
    position test the tangential 1e-3; with the position test at tol instead of √tol the
    tangential 1e-5 is flagged.
    """
    tol = 1e-8
    shift = {}
    calls = []
    project = constrained_hmc.project_onto_manifold

    def planted(system, x, y, jac, factor, tol, max_iters):
        out = project(system, x, y, jac, factor, tol, max_iters)
        calls.append(None)
        if len(calls) % 2:  # the forward projection: untouched
            return out
        jac_r, factor_r = system.cache(out.position)
        normal = jac_r[0] / jnp.linalg.norm(jac_r[0])
        tangent = manifold.project_tangent(jnp.array([0.0, 1.0, 1.0]), jac_r, factor_r)
        tangent = tangent / jnp.linalg.norm(tangent)
        moved = out.position + shift["normal"] * normal + shift["tangent"] * tangent
        return out._replace(position=moved)

    with jax.enable_x64(True), plant() as m:
        m.setattr(constrained_hmc, "project_onto_manifold", planted)
        system = _system(ellipsoid, 3, 1)
        substep = constrained_hmc.build_geodesic_step(system, jnp.ones(1), tol, 100, True)

        @jax.jit
        def step(t, normal, tangent):
            shift["normal"], shift["tangent"] = normal, tangent
            return substep(t, 0.05)

        t0 = _trajectory_start(system, jnp.array([1.0, 0.0, 0.0]), jnp.array([0.3, -1.0, 0.7]))
        cases = [(0.0, 0.0, False), (1e-6, 0.0, True), (-1e-6, 0.0, True), (1e-9, 0.0, False)]
        cases += [(0.0, 1e-3, True), (0.0, 1e-5, False)]
        for normal, tangent, flagged in cases:
            out = step(t0, normal, tangent)
            assert not bool(out.projection_failed)
            assert bool(out.is_irreversible) == flagged, (normal, tangent)
        assert len(calls) == 2  # traced once: forward, then reverse projection


def test_metropolis_accept_prob_is_exp_of_minus_energy_error():
    """The shared Metropolis step sees −energy_error: accept_prob = min(1, exp(−ΔH))."""
    with jax.enable_x64(True):
        kernel = constrained_hmc.constrained_hmc(
            _system(ellipsoid, 3, 1), jnp.ones(1), step_size=0.4, num_steps=(2, 4)
        )
        state = kernel.init(jnp.array([1.0, 0.0, 0.0]))
        step = jax.jit(kernel.step)
        for k in jax.random.split(jax.random.key(8), 20):
            _, info = step(k, state, kernel.params)
            if not bool(info.projection_failed | info.is_irreversible):
                expected = min(1.0, float(np.exp(-float(info.energy_error))))
                np.testing.assert_allclose(float(info.accept_prob), expected, rtol=1e-12)


def test_constructor_kernel_matches_build_kernel_and_validates():
    with jax.enable_x64(True):
        system = _system(sphere, 3, 1)
        kernel = constrained_hmc.constrained_hmc(system, [1.0], step_size=0.5, num_steps=3)
        assert kernel.params.num_steps_min == kernel.params.num_steps_max == 3
        state = kernel.init(jnp.array([0.0, 0.6, 0.8]))
        direct = constrained_hmc.build_kernel(system, jnp.ones(1))
        a, _ = kernel.step(jax.random.key(2), state, kernel.params)
        b, _ = direct(jax.random.key(2), state, constrained_hmc.CHMCParams(0.5, 3, 3))
        np.testing.assert_array_equal(a.position, b.position)
    with pytest.raises(ValueError, match="`step_size` must be a positive scalar"):
        constrained_hmc.constrained_hmc(system, [1.0], step_size=0.0)
    with pytest.raises(ValueError, match="`num_steps` must satisfy"):
        constrained_hmc.constrained_hmc(system, [1.0], step_size=0.5, num_steps=(3, 1))


def test_warmup_adapts_step_size_on_the_sphere():
    """adaptation.warmup runs CHMC (params without a mass matrix: metric "none", and the
    kernel's own step-size search) and returns a positive step size."""
    with jax.enable_x64(True):
        kernel = constrained_hmc.constrained_hmc(
            _system(sphere, 3, 1), jnp.ones(1), step_size=0.1, num_steps=(2, 4)
        )
        state = kernel.init(jnp.array([0.0, 0.6, 0.8]))
        run = jax.jit(lambda k, s: warmup(k, kernel, s, 60, metric="none"))
        out = run(jax.random.key(4), state)
        step_size = float(out.params.step_size)
        assert np.isfinite(step_size) and step_size > 0, step_size
        assert abs(float(jnp.linalg.norm(out.state.position)) - 1.0) < 1e-8


def test_chains_with_different_keys_differ():
    posterior = dgm.condition(sphere, [1.0], 3)
    init = np.tile([[0.0, 0.6, 0.8]], (2, 1))
    idata = posterior.sample(
        jax.random.key(5),
        num_chains=2,
        num_samples=5,
        init=init,
        step_size=0.5,
        num_steps=2,
        progress_bar=False,
    )
    u = idata.posterior["u"].values
    assert not np.allclose(u[0], u[1])


def test_second_call_same_shapes_does_not_recompile():
    posterior = dgm.condition(sphere, [1.0], 3)
    kwargs = dict(num_chains=2, num_samples=10, num_steps=(1, 3), progress_bar=False, chunk_size=5)
    posterior.sample(jax.random.key(0), step_size=0.3, **kwargs)
    runner = next(iter(posterior._runners.values()))
    compiles = runner.num_compiles
    posterior.sample(jax.random.key(1), step_size=0.6, **kwargs)
    assert runner.num_compiles == compiles


def test_plant_fixture_reaches_a_cached_runner(plant):
    """A bug planted with ``plant`` runs even where dgm's runner cache holds the correct
    kernel compiled before, and is gone afterwards (the planted-bug tests rely on both)."""
    kwargs = dict(num_chains=2, num_samples=3, step_size=0.5, num_steps=2, progress_bar=False)
    init = np.tile([[0.0, 0.6, 0.8]], (2, 1))

    def moved():
        u = dgm.condition(sphere, [1.0], 3).sample(jax.random.key(0), init=init, **kwargs)
        return not np.allclose(u.posterior["u"].values, init[:, None])

    def reject_all(key, log_ratio, proposal, state):
        return state, jnp.zeros_like(log_ratio), jnp.zeros((), bool)

    assert moved()
    with plant() as m, pytest.warns(dgm.diagnostics.StuckChainWarning):
        m.setattr(constrained_hmc, "metropolis", reject_all)
        assert not moved()
    assert moved()


def _accept_unless_failed(key, log_ratio, proposal, state):
    """The planted Metropolis bug: every proposal the kernel has not already rejected."""
    ok = jnp.isfinite(log_ratio)
    new = jax.tree.map(lambda a, b: jnp.where(ok, a, b), proposal, state)
    return new, ok.astype(log_ratio.dtype), ok


@pytest.mark.slow
def test_planted_bugs_are_caught(plant):
    """Each broken kernel fails the z-test that passes on the correct kernel.

    The log-det bug shows on the ellipsoid (the only target with a varying Gram
    determinant): worst z 15.5. Always-accept (failed projections still rejected) and
    unprojected momenta show on the linear target at a large step (1.3, 1-3 steps, N_g = 1,
    from exact draws, no warm-up), where the correct kernel gives worst z 0.41 at acceptance
    0.80 and the two broken ones 18.3 and 10.5 (seed 21; over seeds 20-39: at most 2.79,
    at least 17.4 and 9.2). Each bug runs under the ``plant`` fixture: dgm's runner cache
    would otherwise serve the correct kernel compiled before.
    """

    def linear_worst_z():
        key_init, key = jax.random.split(jax.random.key(21))
        idata = run(
            linear, Y_LIN, 5, key, 1.3, (1, 3), num_geodesic_steps=1, num_warmup=0,
            init=linear_exact_starts(key_init),
        )  # fmt: skip
        theta = idata.posterior["u"].values[..., :2]
        mean, cov = linear_posterior()
        z, _ = z_scores(np.concatenate([theta, theta**2], -1), np.r_[mean, np.diag(cov) + mean**2])
        accept = float(idata.sample_stats["acceptance_rate"].values.mean())
        print("linear target: worst z", np.max(z), "acceptance", accept)
        return np.max(z)

    assert linear_worst_z() < Z_MAX
    with plant() as m:  # no ½ log det(J Jᵀ)
        m.setattr(manifold.ManifoldSystem, "potential", lambda self, u, factor: 0.5 * u @ u)
        m.setattr(manifold.ManifoldSystem, "potential_grad", lambda self, u, j, c: u)
        idata = run(ellipsoid, [1.0], 3, jax.random.key(21), 0.3, (2, 4))
        z = np.max(z_scores(idata.posterior["u"].values ** 2, ellipsoid_moments())[0])
        print("ellipsoid without the log-det term: worst z", z)
        assert z > Z_MAX
    with plant() as m:  # no Metropolis step: accept all but failed projections (−∞)
        m.setattr(constrained_hmc, "metropolis", _accept_unless_failed)
        assert linear_worst_z() > Z_MAX
    with plant() as m:  # momentum never projected onto the tangent space
        m.setattr(constrained_hmc, "project_tangent", lambda v, j, c: v)
        assert linear_worst_z() > Z_MAX


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_calibration_moments(seed):
    key = jax.random.key(1000 + seed)
    u = run(sphere, [1.0], 3, key, 0.8, (2, 4)).posterior["u"].values
    z_s, _ = z_scores(moment_stats(u), np.r_[np.zeros(3), np.full(3, 1 / 3)])
    u = run(ellipsoid, [1.0], 3, key, 0.3, (3, 6)).posterior["u"].values
    z_e, _ = z_scores(u**2, ellipsoid_moments())
    theta = run(linear, Y_LIN, 5, key, 0.6, (2, 4)).posterior["u"].values[..., :2]
    mean, cov = linear_posterior()
    stats = np.concatenate([theta, theta**2, theta[..., :1] * theta[..., 1:]], -1)
    z_l, _ = z_scores(stats, np.r_[mean, np.diag(cov) + mean**2, cov[0, 1] + mean[0] * mean[1]])
    print(f"seed {seed}: sphere {z_s.max():.2f} ellipsoid {z_e.max():.2f} linear {z_l.max():.2f}")
    assert max(z_s.max(), z_e.max(), z_l.max()) < Z_MAX
