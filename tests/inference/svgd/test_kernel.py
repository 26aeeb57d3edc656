"""SVGD direction and KSD U-statistic against a brute-force autodiff construction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference import svgd

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
    u = 0.0
    for i in range(n):
        for j in range(n):
            phi[i] += np.asarray(k(x[j], x[i]) * s[j] + dkx(x[j], x[i]))
            if i != j:
                kp = (
                    k(x[i], x[j]) * s[i] @ s[j]
                    + s[i] @ dky(x[i], x[j])
                    + dkx(x[i], x[j]) @ s[j]
                    + jnp.trace(dkxy(x[i], x[j]))
                )
                u += float(kp)
    return phi / n, u / (n * (n - 1))


@pytest.mark.parametrize("kernel", ["rbf", "imq"])
def test_phi_and_ksd_match_brute_force(kernel):
    kx, ks = jax.random.split(jax.random.key(11))
    x = jax.random.normal(kx, (7, 3), jnp.float64)
    s = jax.random.normal(ks, (7, 3), jnp.float64)  # any scores: the identities hold for all
    phi, u, h = svgd.phi_and_ksd(x, s, kernel, H)
    phi_ref, u_ref = _brute_force(x, s, kernel)
    assert phi.dtype == jnp.float64
    assert float(h) == H
    np.testing.assert_allclose(np.asarray(phi), phi_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(u), u_ref, rtol=0, atol=1e-10)
    # the blocked path computes the same quantities
    phi_b, u_b, _ = svgd.phi_and_ksd(x, s, kernel, H, block_size=3)
    np.testing.assert_allclose(np.asarray(phi_b), phi_ref, rtol=0, atol=1e-10)
    np.testing.assert_allclose(float(u_b), u_ref, rtol=0, atol=1e-10)
