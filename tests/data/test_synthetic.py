"""Nonlinear synthetic state-space data of the DMM paper (synthetic10, synthetic11)."""

import jax
import numpy as np
import pytest

from dgm.data import synthetic


@pytest.mark.parametrize("name,dim", [("synthetic10", 1), ("synthetic11", 2)])
def test_nonlinear_shapes_and_residuals(name, dim):
    x, z = synthetic.sample_nonlinear(name, 2000, 6, jax.random.key(0))
    x, z = np.asarray(x, np.float64), np.asarray(z, np.float64)
    assert x.shape == z.shape == (2000, 6, dim) and synthetic.nonlinear_latent_dim(name) == dim
    _, mean_fn, q_var, r_var, p0_var = synthetic._NONLINEAR_SPECS[name]
    # Residuals of each conditional have the stated variances (a 10 % band at n = 10⁴).
    trans = z[:, 1:] - np.asarray(mean_fn(z[:, :-1]))
    assert np.var(trans) == pytest.approx(q_var, rel=0.1)
    assert np.mean(trans) == pytest.approx(0.0, abs=0.1 * np.sqrt(q_var))
    assert np.var(x - 0.5 * z) == pytest.approx(r_var, rel=0.1)
    assert np.var(z[:, 0]) == pytest.approx(p0_var, rel=0.1)


def test_synthetic11_mean_uses_alpha_beta():
    z = np.array([[1.0, 2.0]], np.float32)
    out = np.asarray(synthetic._synthetic11_step(z))
    expected = [0.2 + np.tanh(0.5 * 2.0), 0.4 + np.sin(-0.1 * 1.0)]
    np.testing.assert_allclose(out[0], expected, rtol=1e-6)


@pytest.mark.parametrize("name", ["synthetic10", "synthetic11"])
def test_nonlinear_ssm_is_the_sampled_model(name):
    dim, mean_fn, q_var, r_var, p0_var = synthetic._NONLINEAR_SPECS[name]
    ssm = synthetic.nonlinear_ssm(name)
    z = np.array([0.3, -1.2][:dim], np.float32)
    np.testing.assert_allclose(ssm.f(z), mean_fn(z))
    np.testing.assert_allclose(ssm.h(z), 0.5 * z)
    for cov, var in [(ssm.Q, q_var), (ssm.R, r_var), (ssm.P0, p0_var)]:
        np.testing.assert_array_equal(cov, var * np.eye(dim, dtype=np.float32))
    np.testing.assert_array_equal(ssm.m0, np.zeros(dim, np.float32))


def test_nonlinear_rejects_bad_input():
    with pytest.raises(ValueError, match="dataset"):
        synthetic.sample_nonlinear("synthetic12", 2, 3, jax.random.key(0))
    with pytest.raises(ValueError, match="dataset"):
        synthetic.nonlinear_ssm("synthetic12")
    with pytest.raises(ValueError, match="num_steps"):
        synthetic.sample_nonlinear("synthetic10", 2, 0, jax.random.key(0))
