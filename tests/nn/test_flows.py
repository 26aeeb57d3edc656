"""The stacked dense IAF (the DMM's ``--num-iafs``): exact log-det, order reversal, inverse."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn.autoregressive import made_mask
from dgm.nn.flows import IAF


@eqx.filter_jit
def _flow_results(flow, z):
    y, log_det = flow(z)
    step_jacs = [jax.jacfwd(lambda v, s=s: s(v)[0])(z) for s in flow.steps]
    return y, log_det, jax.jacfwd(lambda v: flow(v)[0])(z), step_jacs, flow.inverse(y)


@pytest.fixture(scope="module")
def results():
    with jax.enable_x64(True):
        flow = IAF(5, 2, (16, 16), key=jax.random.key(0))
        flow = jax.tree.map(
            lambda a: jnp.asarray(np.asarray(a, np.float64)) if eqx.is_inexact_array(a) else a,
            flow,
        )
        z = jnp.asarray(np.random.default_rng(1).standard_normal(5))
        return z, _flow_results(flow, z)


def test_log_det_equals_slogdet_of_jacobian(results):
    _, (_, log_det, jac, _, _) = results
    sign, logabs = np.linalg.slogdet(np.asarray(jac))
    assert float(sign) == 1.0
    np.testing.assert_allclose(float(log_det), float(logabs), rtol=1e-10)


def test_order_is_reversed_between_steps(results):
    _, (_, _, _, step_jacs, _) = results
    first, second = (np.asarray(j) for j in step_jacs)
    assert np.all(np.triu(first, 1) == 0.0) and np.any(np.tril(first, -1) != 0.0)
    assert np.all(np.tril(second, -1) == 0.0) and np.any(np.triu(second, 1) != 0.0)


def test_inverse_round_trips(results):
    z, (_, _, _, _, z_back) = results
    np.testing.assert_allclose(np.asarray(z_back), np.asarray(z), atol=1e-10)


def test_made_masks_compose_to_a_strictly_triangular_map():
    # 4 variables, hidden widths 7 and 6 (not multiples of 4): still autoregressive
    masks = [
        made_mask(4, 7, strict=False),
        made_mask(7, 6, strict=False),
        made_mask(6, 4, strict=True),
    ]
    total = masks[0].astype(int)
    for m in masks[1:]:
        total = m.astype(int) @ total
    assert np.all(np.triu(total) == 0)
    assert np.all(total[np.tril_indices(4, -1)] > 0)  # every earlier variable is reachable


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="`dim` must be a positive int; got 0"):
        IAF(0, 1, (4,), key=jax.random.key(0))
    with pytest.raises(ValueError, match="`num_steps` must be a non-negative int"):
        IAF(3, -1, (4,), key=jax.random.key(0))
