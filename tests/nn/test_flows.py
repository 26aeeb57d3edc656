"""IAF flow layer: exact log-determinant, triangular Jacobian, inverse round trip."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn.flows import IAF, IAFStep, made_masks


@pytest.fixture(scope="module")
def flow():
    return IAF(5, 2, (16, 16), key=jax.random.key(0))


@pytest.fixture(scope="module")
def z():
    return jax.random.normal(jax.random.key(1), (5,), jnp.float32)


def test_log_det_equals_slogdet_of_jacobian(flow, z):
    _, log_det = flow(z)
    jac = jax.jacfwd(lambda v: flow(v)[0])(z)
    sign, logabs = np.linalg.slogdet(np.asarray(jac, np.float64))
    assert float(sign) == 1.0
    np.testing.assert_allclose(float(log_det), float(logabs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("reverse", [False, True])
def test_step_jacobian_is_triangular(reverse, z):
    step = IAFStep(5, (16,), reverse=reverse, key=jax.random.key(2))
    jac = np.asarray(jax.jacfwd(lambda v: step(v)[0])(z))
    strict = np.triu(jac, 1) if not reverse else np.tril(jac, -1)
    assert np.all(strict == 0.0)
    # the other triangle is not all zero: the step really is autoregressive
    other = np.tril(jac, -1) if not reverse else np.triu(jac, 1)
    assert np.any(other != 0.0)


def test_inverse_round_trips(flow, z):
    y, _ = flow(z)
    np.testing.assert_allclose(np.asarray(flow.inverse(y)), np.asarray(z), atol=1e-5)


def test_made_masks_are_autoregressive():
    masks = made_masks(np.arange(1, 5), (7, 6))
    total = masks[0].astype(int)
    for m in masks[1:]:
        total = m.astype(int) @ total
    assert np.all(np.triu(total) == 0)


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="`dim` must be a positive int; got 0"):
        IAFStep(0, (4,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`num_steps` must be a non-negative int"):
        IAF(3, -1, (4,), key=jax.random.key(0))
