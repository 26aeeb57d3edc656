"""Additive-noise generators y = f(z) + σ n: the Woodbury Gram factor against the dense one,
and constrained HMC on [z | n] against HMC on z with the noise integrated out.

The statistical test conditions a small random decoder (3 latents, 8 observed outputs, 4
"in-painted" outputs, σ = 0.3) and z-tests CHMC's posterior means of the 4 in-painted
outputs and the 3 latents against a latent-HMC reference (tests/stats.py, both runs' Monte
Carlo variances). The decoder is nonlinear enough that ½ log det(J Jᵀ) varies over the
posterior: with that term dropped (test_planted_log_det_bug_is_caught, slow) the worst z was
15.7 in development (4 chains × 500 draws), against 0.67 for the correct sampler.
Calibration: `pytest -m calibration tests/inference/test_additive_noise.py` (seeds 1000-1049)
gave a worst z of 3.56 (threshold 4.5), bulk ESS ≥ 262 of 2100 draws and acceptance
0.871-0.913 (the floors below: ESS ≥ 200, acceptance in (0.8, 0.97)). CHMC runs at a fixed
step (no step-size adaptation): one in-painted output sits near 1 with 1.4 % of its mass
below 0.9, and chains adapted to smaller steps over 20 warm-up iterations could miss that
tail for all 700 draws (seed 1009: worst z 6.5 against the latent-HMC reference and 16
against exact quadrature means, where 12,000 draws of the same run gave 2.1).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.conditioning import ConditionedGenerator
from dgm.inference import hmc
from dgm.inference.additive_noise import AdditiveNoise, WoodburyGram
from dgm.inference.base import ChainRunner
from dgm.inference.manifold import DenseCholesky, ManifoldSystem, project_tangent
from tests.stats import z_scores

Z_MAX = 4.5
K, N, P, SIGMA = 3, 8, 4, 0.3


def _decoder(seed: int = 0, k: int = K, n: int = N + P, scale: float = 2.0):
    rng = np.random.default_rng(seed)
    w1, b1 = scale * rng.normal(size=(10, k)), rng.normal(size=10)
    w2, b2 = rng.normal(size=(n, 10)), rng.normal(size=n)

    def m(z):
        h = jax.nn.softplus(jnp.asarray(w1, z.dtype) @ z + jnp.asarray(b1, z.dtype))
        return jax.nn.sigmoid(jnp.asarray(w2, z.dtype) @ h + jnp.asarray(b2, z.dtype))

    return m


# ---------------------------------------------------------------- exact linear algebra


def _linear_algebra(k: int, n: int, sigma: float):
    """Woodbury and dense results side by side, in one compiled function."""
    noise = AdditiveNoise(_decoder(1, k, n), k, n, sigma, gram="woodbury")
    system = ManifoldSystem(noise.generator, k + n, n, noise.jacobian, noise.gram_factor)

    def dense_phi(u):
        j = jax.jacfwd(noise.generator)(u)
        return 0.5 * u @ u + 0.5 * jnp.linalg.slogdet(j @ j.T)[1]

    @jax.jit
    def both(u, rhs, v):
        jac = noise.jacobian(u)
        wood, dense = noise.gram_factor(u, jac), DenseCholesky.from_jacobian(jac)
        pairs = [
            (jac, jax.jacfwd(noise.generator)(u)),
            (wood.solve(rhs), dense.solve(rhs)),
            (wood.solve(rhs[:, 0]), dense.solve(rhs[:, 0])),
            (project_tangent(v, jac, wood), project_tangent(v, jac, dense)),
            (wood.half_log_det(), dense.half_log_det()),
            # ∇φ through the Woodbury solve and the structured Jacobian (a VJP with the
            # solve held fixed), against autodiff of the dense slogdet of J Jᵀ
            (system.potential_and_grad(u)[1], jax.grad(dense_phi)(u)),
        ]
        return pairs, isinstance(wood, WoodburyGram)

    keys = jax.random.split(jax.random.key(2), 3)
    u = jax.random.normal(keys[0], (k + n,), jnp.float64)
    rhs = jax.random.normal(keys[1], (n, 7), jnp.float64)
    v = jax.random.normal(keys[2], (k + n,), jnp.float64)
    return both(u, rhs, v)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(
    ("k", "n", "sigma"), [(5, 12, 0.05), pytest.param(6, 4, 0.5, marks=pytest.mark.slow)]
)
def test_woodbury_equals_dense(k, n, sigma):
    """Solves, projection, ½ log det and its gradient equal the dense ones to 1e-10 (k < N
    and k > N)."""
    pairs, is_woodbury = _linear_algebra(k, n, sigma)
    assert is_woodbury
    names = ["jacobian", "solve (matrix)", "solve (vector)", "projection", "½ log det", "∇φ"]
    for name, (wood, dense) in zip(names, pairs, strict=True):
        np.testing.assert_allclose(wood, dense, rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.usefixtures("x64")
def test_reverse_jacobian_vjp_equals_autodiff():
    """``jacobian="rev"``: J_f by N reverse passes, its VJP (∇ ½ log det's second-order
    term) by forward mode inside; both equal autodiff of ``jax.jacrev`` to 1e-12."""
    m = _decoder(3, k=9, n=4)
    noise = AdditiveNoise(m, 9, 4, SIGMA, jacobian="rev")
    z = jax.random.normal(jax.random.key(4), (9,), jnp.float64)
    cot = jax.random.normal(jax.random.key(5), (4, 9), jnp.float64)

    @jax.jit
    def both(z, cot):
        jac, vjp = jax.vjp(noise._jac_f, z)
        ref_jac, ref_vjp = jax.vjp(jax.jacrev(m), z)
        return jac, ref_jac, vjp(cot)[0], ref_vjp(cot)[0]

    jac, ref_jac, grad, ref_grad = both(z, cot)
    np.testing.assert_allclose(jac, ref_jac, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.usefixtures("x64")
@pytest.mark.parametrize(("k", "n"), [(3, 8), pytest.param(9, 4, marks=pytest.mark.slow)])
def test_log_det_grad_through_latent_columns(k, n):
    """``condition_additive_noise``'s ∇φ (:meth:`AdditiveNoise.log_det_grad`: P's k latent
    columns only, the VJP of J_f alone) equals autodiff of the dense slogdet to 1e-10, for a
    Woodbury (k < N) and a dense (k > N) factor; a planted bug (P without the solve) fails."""
    noise = AdditiveNoise(_decoder(5, k, n), k, n, SIGMA)
    # as condition_additive_noise builds it
    fns = (noise.jacobian, noise.gram_factor)
    system = ManifoldSystem(noise.generator, k + n, n, *fns, log_det_grad_fn=noise.log_det_grad)

    def dense_phi(u):
        j = jax.jacfwd(noise.generator)(u)
        return 0.5 * u @ u + 0.5 * jnp.linalg.slogdet(j @ j.T)[1]

    def planted(u, jac, factor):  # P = J_f: the solve with J Jᵀ left out
        return jnp.concatenate([jax.vjp(noise._jac_f, u[:k])[1](jac[:, :k])[0], jnp.zeros(n)])

    @jax.jit
    def grads(u):
        jac, factor = system.cache(u)
        return system.potential_grad(u, jac, factor), u + planted(u, jac, factor)

    u = jax.random.normal(jax.random.key(6), (k + n,), jnp.float64)
    got, bad = grads(u)
    want = jax.grad(dense_phi)(u)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.max(np.abs(bad - want)) > 1e-3


def test_gram_choice_and_bad_arguments():
    m = _decoder()
    assert AdditiveNoise(m, K, N, SIGMA).gram == "woodbury"  # k < N: capacitance k×k
    assert AdditiveNoise(m, 9, 8, SIGMA).gram == "dense"
    with pytest.raises(ValueError, match="`sigma` must be a positive number; got 0.0"):
        AdditiveNoise(m, K, N, 0.0)
    with pytest.raises(ValueError, match="`latent_dim` must be a positive int; got 0"):
        AdditiveNoise(m, 0, N, SIGMA)
    with pytest.raises(ValueError, match="`gram` must be 'auto', 'woodbury' or 'dense'"):
        AdditiveNoise(m, K, N, SIGMA, gram="qr")
    f = lambda z: m(z)[:N]  # noqa: E731
    with pytest.raises(
        ValueError, match=r"`f` must return a vector of shape \(5,\) to match `y_obs`; got \(8,\)"
    ):
        dgm.condition_additive_noise(f, np.zeros(5), K, SIGMA)
    with pytest.raises(ValueError, match="`y_obs` must be finite"):
        dgm.condition_additive_noise(f, np.full(N, np.nan), K, SIGMA)
    with pytest.raises(ValueError, match="`f` must return floating-point values .* int32"):
        dgm.condition_additive_noise(lambda z: f(z).astype(jnp.int32), np.zeros(N), K, SIGMA)


def test_custom_jacobian_function_is_used_and_checked():
    """A Jacobian function z -> J_f replaces autodiff (here a scaled copy, to see it used);
    one of the wrong shape or that fails is a ValueError naming `jacobian`."""
    m = _decoder()
    f = lambda z: m(z)[:N]  # noqa: E731
    y = np.zeros(N)
    posterior = dgm.condition_additive_noise(
        f, y, K, SIGMA, jacobian=lambda z: 2 * jax.jacfwd(f)(z)
    )
    with jax.enable_x64(True):
        z = jnp.ones(K, jnp.float64)
        u = jnp.concatenate([z, jnp.zeros(N, jnp.float64)])
        jac = posterior.system.jacobian(u)
        np.testing.assert_allclose(jac[:, :K], 2 * jax.jacfwd(f)(z), rtol=1e-12)
    assert posterior.additive_noise.jacobian_mode == "custom"
    assert posterior.system._log_det_grad_fn == posterior.additive_noise.log_det_grad
    with pytest.raises(ValueError, match=r"`jacobian` must return a matrix of shape \(8, 3\)"):
        dgm.condition_additive_noise(f, y, K, SIGMA, jacobian=lambda z: jnp.zeros((K, N)))
    with pytest.raises(ValueError, match=r"`jacobian` failed on an input of shape \(3,\)"):
        dgm.condition_additive_noise(f, y, K, SIGMA, jacobian=lambda z: z @ jnp.ones((7, 2)))
    with pytest.raises(ValueError, match="`jacobian` must be 'auto', 'fwd', 'rev' or a function"):
        AdditiveNoise(m, K, N, SIGMA, jacobian="central")


def test_lapack_capacitance_is_never_vmapped():
    """A capacitance matrix of more than SMALL_GRAM latents is a LAPACK Cholesky, which hangs
    under vmap on several host devices (it did in a 4-chain in-painting run): "auto" maps."""
    small = dgm.condition_additive_noise(lambda z: _decoder(0)(z)[:N], np.zeros(N), K, SIGMA)
    assert not small.system.uses_lapack_cholesky  # 3×3: unrolled
    m = _decoder(0, k=6)
    wide = dgm.condition_additive_noise(lambda z: m(z)[:N], np.zeros(N), 6, SIGMA)
    assert wide.system.uses_lapack_cholesky
    with pytest.raises(ValueError, match="needs a structured Gram factor with no LAPACK"):
        wide.sample(jax.random.key(0), num_chains=1, chain_map="vmap", progress_bar=False)


# ---------------------------------------------------------------- CHMC vs latent HMC


@functools.cache
def _problem():
    """The decoder, the observation, and the compiled pieces (reused across seeds)."""
    m = _decoder(0)
    rng = np.random.default_rng(100)
    y = np.asarray(m(jnp.asarray(rng.normal(size=K), jnp.float32)))[:N]
    y = y + SIGMA * rng.normal(size=N)
    noise = AdditiveNoise(lambda z: m(z)[:N], K, N, SIGMA)
    with jax.enable_x64(True):
        y64 = jnp.asarray(y, jnp.float64)
    logp = lambda z: noise.latent_log_density(z, y64)  # noqa: E731
    hmc_runner = ChainRunner(hmc.build_kernel(logp), chunk_size=2200)
    pixels = jax.jit(jax.vmap(jax.vmap(lambda z: m(z)[N:])))
    return m, y, logp, hmc_runner, pixels


def _latent_hmc(key, chains=3, draws=2000, warmup=200):
    """Reference draws of [pixels | z] from HMC on z (the noise integrated out)."""
    _, _, logp, runner, pixels = _problem()
    with jax.enable_x64(True):
        k_init, k_run = jax.random.split(key)
        z0 = jax.random.normal(k_init, (chains, K), jnp.float64)
        states = jax.vmap(lambda z: hmc.init(z, logp))(z0)
        params = hmc.HMCParams(jnp.asarray(0.2, jnp.float64), jnp.ones((), jnp.float64), 5, 10)
        res = runner.run(jax.random.split(k_run, chains), states, params, warmup + draws)
        z = res.draws[:, warmup:]
        return np.concatenate([np.asarray(pixels(jnp.asarray(z))), z], -1)


def _chmc(posterior, key, draws=700):
    idata = posterior.sample(
        key, num_chains=3, num_samples=draws, num_warmup=20, step_size=0.35, adapt=False,
        num_steps=(4, 6), chain_map="vmap", progress_bar=False,
    )  # fmt: skip
    vals = np.concatenate(
        [idata.posterior["pixels"].values, idata.posterior["u"].values[..., :K]], -1
    )
    return vals, float(idata.sample_stats["is_accepted"].values.mean())


@functools.cache
def _posterior(drop_log_det: bool = False):
    m, y = _problem()[:2]
    derived = {"pixels": lambda u: m(u[:K])[N:]}
    post = dgm.condition_additive_noise(lambda z: m(z)[:N], y, K, SIGMA, derived=derived)
    if not drop_log_det:
        return post
    s = post.system  # the planted bug: φ(u) = ½ uᵀu, no ½ log det(J Jᵀ)
    return ConditionedGenerator(
        s.generator, post.y_obs, s.input_dim, derived, s._jac, s._gram_factor_fn,
        post.init_fn, half_log_det_fn=lambda u: jnp.zeros((), u.dtype),
    )  # fmt: skip


def _z_test(chmc_vals, ref_vals):
    ref = ref_vals.reshape(-1, ref_vals.shape[-1])
    _, ess_ref = z_scores(ref_vals, ref.mean(0))
    return z_scores(chmc_vals, ref.mean(0), ref.var(0, ddof=1) / ess_ref)


@pytest.fixture(scope="module")
def reference():
    return _latent_hmc(jax.random.key(7))


def test_chmc_matches_latent_hmc(reference):
    """Posterior means of the in-painted outputs and the latents agree within MC error."""
    vals, accept = _chmc(_posterior(), jax.random.key(11))
    z, ess = _z_test(vals, reference)
    assert np.all(z < Z_MAX), z
    assert np.all(ess >= 200), ess  # calibration: ESS 282-1733
    assert 0.8 < accept < 0.97, accept  # calibration: 0.873-0.905


@pytest.mark.slow
def test_planted_log_det_bug_is_caught(reference):
    """Dropping ½ log det(J Jᵀ) from the potential fails the same z-test (14 s CPU; z 16.2)."""
    vals, _ = _chmc(_posterior(drop_log_det=True), jax.random.key(11))
    z, _ = _z_test(vals, reference)
    print(f"planted log-det bug: worst z {z.max():.2f}")
    assert np.max(z) > Z_MAX, z


@pytest.mark.calibration
@pytest.mark.parametrize("seed", range(50))
def test_calibration_chmc_vs_latent_hmc(seed):
    key = jax.random.key(1000 + seed)
    ref = _latent_hmc(jax.random.fold_in(key, 1))
    vals, accept = _chmc(_posterior(), jax.random.fold_in(key, 2))
    z, ess = _z_test(vals, ref)
    print(f"seed {seed}: worst z {z.max():.2f}, ESS {ess.min():.0f}-{ess.max():.0f}, {accept=:.3f}")
    assert np.all(z < Z_MAX)
