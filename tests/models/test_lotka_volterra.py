"""The Lotka–Volterra model: its noise inversion and the paper's observed data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.models.lotka_volterra import LotkaVolterra


@pytest.fixture(scope="module", autouse=True)
def _x64():
    """The model simulates in float64 (errors grow like (1 + z)^50)."""
    with jax.enable_x64(True):
        yield


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


def test_euler_maruyama_noise_enters_scaled_by_the_root_of_dt():
    """With dt = 0.25 and σ = 2 the first step is y(1) = y0 + dt·drift(y0) + √dt·σ·n(1), the
    predator's drift at the updated prey (NumPy). Every shipped configuration has dt = 1,
    where √dt = dt: only another dt tells them apart. Planted bug this caught: dt·σ."""
    model = LotkaVolterra(dt=0.25, sigma=2.0)
    u = np.random.default_rng(5).normal(size=model.input_dim)
    y = np.asarray(model.generate(jnp.asarray(u)))
    z, n = np.exp(u[:4] + model.prior_loc), u[4:6]
    y1 = 100.0 + 0.25 * (z[0] * 100.0 - z[1] * 100.0 * 100.0) + 0.5 * 2.0 * n[0]
    y2 = 100.0 + 0.25 * (-z[2] * 100.0 + z[3] * y1 * 100.0) + 0.5 * 2.0 * n[1]
    np.testing.assert_allclose(y[:2], [y1, y2], rtol=1e-12)
    back = model.noise_given_params(jnp.asarray(u[:4]), jnp.asarray(y))
    np.testing.assert_allclose(np.asarray(back), u[4:], atol=1e-9)
