"""Bad input to dgm.condition / sample: each error names the argument, expected and received."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm


def sphere(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


def test_wrong_output_shape():
    with pytest.raises(ValueError, match=r"`generator` must return a vector of shape \(2,\)"):
        dgm.condition(sphere, [1.0, 2.0], 3)


def test_more_outputs_than_inputs():
    with pytest.raises(ValueError, match="at least as many inputs as outputs"):
        dgm.condition(lambda u: jnp.concatenate([u, u]), np.ones(4), 2)


def test_y_obs_not_finite_or_not_vector():
    with pytest.raises(ValueError, match="`y_obs` must be finite"):
        dgm.condition(sphere, [np.nan], 3)
    with pytest.raises(ValueError, match="`y_obs` must be a vector"):
        dgm.condition(sphere, [[1.0]], 3)


def test_bad_input_dim():
    with pytest.raises(ValueError, match="`input_dim` must be a positive int; got 0"):
        dgm.condition(sphere, [1.0], 0)


@pytest.fixture(scope="module")
def posterior():
    return dgm.condition(sphere, [1.0], 3)


def test_nan_start(posterior):
    with pytest.raises(ValueError, match="NaN"):
        posterior.sample(
            jax.random.key(0), num_chains=1, init=[[np.nan, 0.0, 1.0]], progress_bar=False
        )


def test_start_off_manifold_reports_residual(posterior):
    with pytest.raises(
        RuntimeError, match=r"not on the manifold: max \|generator\(u\) - y_obs\| = 1"
    ):
        posterior.sample(
            jax.random.key(0), num_chains=1, init=[[0.0, 0.0, 2.0]], progress_bar=False
        )


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"step_size": 0.0}, "`step_size` must be a positive number; got 0.0"),
        ({"step_size": -1.0}, "`step_size` must be a positive number"),
        ({"num_steps": 0}, "`num_steps` must satisfy 1 <= low <= high"),
        ({"num_steps": (5, 2)}, "`num_steps` must satisfy"),
        ({"num_chains": 0}, "`num_chains` must be a positive int; got 0"),
        ({"num_samples": -3}, "`num_samples` must be a positive int"),
        ({"num_geodesic_steps": 0}, "`num_geodesic_steps` must be a positive int"),
    ],
)
def test_bad_sampler_settings(posterior, kwargs, match):
    with pytest.raises(ValueError, match=match):
        posterior.sample(jax.random.key(0), progress_bar=False, **kwargs)


def test_gauss_newton_start_lands_on_manifold(posterior):
    u = posterior.initial_points(jax.random.key(4), 3)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=1), 1.0, atol=1e-9)
