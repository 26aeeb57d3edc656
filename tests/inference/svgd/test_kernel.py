"""SVGD's kernel machinery: the direction and KSD U-statistic against a brute-force
autodiff construction, distances, bandwidth rules, other kernels."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dgm.inference import svgd
from tests.inference.svgd.targets import gauss_grad

H = 1.7


def _scalar_kernel(kernel):
    if kernel == "rbf":
        return lambda x, y: jnp.exp(-jnp.sum((x - y) ** 2) / H)
    return lambda x, y: (1.0 + jnp.sum((x - y) ** 2) / H) ** -0.5


def _brute_force(x, s, kernel):
    """phi_i = mean_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)] and the U-statistic of
    k_p(x, y) = s(x)^T s(y) k + s(x)^T grad_y k + grad_x k^T s(y) + tr(grad_x grad_y k),
    pair by pair with jax.grad / jax.jacfwd of the scalar kernel."""
    k = _scalar_kernel(kernel)
    dkx = jax.grad(k, argnums=0)
    dky = jax.grad(k, argnums=1)
    dkxy = jax.jacfwd(dky, argnums=0)  # [a, b] = d^2 k / dy_a dx_b
    n = x.shape[0]
    phi = np.zeros(x.shape)
    u = v = 0.0
    for i in range(n):
        for j in range(n):
            phi[i] += np.asarray(k(x[j], x[i]) * s[j] + dkx(x[j], x[i]))
            kp = float(
                k(x[i], x[j]) * s[i] @ s[j]
                + s[i] @ dky(x[i], x[j])
                + dkx(x[i], x[j]) @ s[j]
                + jnp.trace(dkxy(x[i], x[j]))
            )
            u, v = u + (kp if i != j else 0.0), v + kp
    return phi / n, u / (n * (n - 1)), v / (n * n)


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_phi_and_ksd_match_brute_force(kernel, x64):
    kx, ks = jax.random.split(jax.random.key(11))
    x = jax.random.normal(kx, (7, 3), jnp.float64)
    s = jax.random.normal(ks, (7, 3), jnp.float64)  # any scores: the identities hold for all
    phi, u, v, h = svgd.phi_and_ksd_uv(x, s, kernel, H)
    phi_ref, u_ref, v_ref = _brute_force(x, s, kernel)
    assert phi.dtype == jnp.float64
    assert float(h) == H
    np.testing.assert_allclose(np.asarray(phi), phi_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose([float(u), float(v)], [u_ref, v_ref], rtol=0, atol=1e-10)
    # the blocked path computes the same quantities
    phi_b, u_b, v_b, _ = svgd.phi_and_ksd_uv(x, s, kernel, H, block_size=3)
    np.testing.assert_allclose(np.asarray(phi_b), phi_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose([float(u_b), float(v_b)], [u_ref, v_ref], rtol=0, atol=1e-10)


@pytest.mark.parametrize("dim", [2, 10])
@pytest.mark.parametrize("block_size", [None, 30])
def test_float32_results_do_not_depend_on_where_the_particles_sit(dim, block_size):
    """SVGD's direction, KSD and bandwidth depend on particle differences only: 100 particles
    of spread 0.1 moved to 300 give what they give at 0, in float32 (uncentred, the Gram
    distances and ``K x − x (K 1)`` cancelled: φ 0.3 off at 100 in 10-d, h 21× at 1000)."""
    kx, ks = jax.random.split(jax.random.key(5))
    x = 0.1 * jax.random.normal(kx, (100, dim))
    s = jax.random.normal(ks, (100, dim))
    at_zero = svgd.phi_and_ksd_uv(x, s, block_size=block_size)
    moved = svgd.phi_and_ksd_uv(x + 300.0, s, block_size=block_size)
    scale = float(jnp.max(jnp.abs(at_zero[0])))
    np.testing.assert_allclose(moved[0], at_zero[0], rtol=0, atol=1e-2 * scale)
    np.testing.assert_allclose([float(a) for a in moved[1:]], [float(a) for a in at_zero[1:]],
                               rtol=2e-2)  # fmt: skip


@pytest.mark.parametrize("dim", [2, 55])
def test_squared_distances_symmetric_with_zero_diagonal(dim, x64):
    """The folded median counts each pair once: it needs D == D^T bit for bit, from
    coordinate differences (few dims) and from the Gram product (many)."""
    for dtype in (jnp.float32, jnp.float64):
        x = jnp.asarray(np.random.default_rng(dim).normal(size=(300, dim)), dtype)
        d = np.asarray(jax.jit(svgd.squared_distances)(x))
        assert np.array_equal(d, d.T)
        assert (np.diag(d) == 0).all() and (d >= 0).all()
        ref = np.sum((np.asarray(x, np.float64)[:, None] - np.asarray(x, np.float64)) ** 2, -1)
        np.testing.assert_allclose(d, ref, rtol=1e-5 if dtype == jnp.float32 else 1e-12, atol=1e-4)


def test_bandwidth_variants(x64):
    x = jax.random.normal(jax.random.key(2), (9, 3), jnp.float64)
    d = np.asarray(svgd.squared_distances(x))
    bandwidth_from = jax.jit(svgd.bandwidth_from, static_argnums=1)
    h = float(bandwidth_from(jnp.asarray(d), "median"))
    np.testing.assert_allclose(h, np.median(d) / np.log(10.0), rtol=1e-14)
    iu = np.triu_indices(9, 1)
    hp = float(bandwidth_from(jnp.asarray(d), "median-paper"))
    np.testing.assert_allclose(hp, np.median(np.sqrt(d[iu])) ** 2 / np.log(9.0), rtol=1e-12)
    same = jnp.zeros((4, 2), jnp.float64)
    assert float(svgd.bandwidth_from(svgd.squared_distances(same), "median")) == 1.0


@pytest.mark.parametrize(("kernel", "bandwidth"), [("imq", "median"), ("rbf", "median-paper")])
def test_other_kernels_reduce_ksd(kernel, bandwidth):
    x0 = jax.random.normal(jax.random.key(4), (50, 2))
    step = svgd.build_step(
        svgd.make_score_fn(grad_log_density_fn=jax.vmap(gauss_grad)),
        kernel=kernel,
        bandwidth=bandwidth,
        optimizer=optax.adam(0.05),
    )
    result = svgd.SVGDRunner(step, 200).run(svgd.init(x0, optax.adam(0.05)), 400)
    assert result.trace["ksd"][-1] < result.trace["ksd"][0] / 5
