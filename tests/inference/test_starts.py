"""Starting points in the typical set (:mod:`dgm.inference.starts`).

The case of issue 16: ``u = [z (3) | n (3)]``, ``y = f(z) + 0.1 n`` with ``f`` a random
2-layer tanh MLP plus ``0.5 z`` (:class:`~dgm.models.mlp_generator.MLPGenerator`, weight
seed 8, observation simulated in float64 with key 8). p(z | y) has a main mode and local modes 5.5
and 11 nats below it. Each start is followed uphill on the exact log p(z | y) (BFGS) to
the mode it belongs to. The old default (Gauss–Newton from a prior draw) sends 7 of 16
chains to the lower modes (the control test below, which is what the new default is
checked against: that is the planted bug). The new default sends none there.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

import dgm
from dgm.inference.starts import default_agree_nats
from dgm.models.mlp_generator import MLPGenerator

NUM_CHAINS = 16


@pytest.fixture(scope="module")
def case():
    model = MLPGenerator.random(8)
    with jax.enable_x64(True):
        y = model.simulate(jax.random.key(8), 1)[1][0]
        neg = jax.jit(lambda z: -model.log_posterior_latent(z, y))
        grad = jax.jit(jax.grad(lambda z: -model.log_posterior_latent(z, y)))

        def mode_value(z0):
            res = scipy.optimize.minimize(
                lambda z: float(neg(z)), z0, jac=lambda z: np.asarray(grad(z)), method="BFGS"
            )
            return -res.fun

        rng = np.random.default_rng(0)
        best = max(mode_value(z0) for z0 in 2.0 * rng.normal(size=(20, 3)))
        posterior = dgm.condition(model.generate, y, model.input_dim)
    return posterior, mode_value, best


def _gaps(starts, case):
    posterior, mode_value, best = case
    with jax.enable_x64(True):
        return np.array([best - mode_value(np.asarray(u[:3])) for u in starts])


def test_default_starts_reach_the_main_mode(case):
    posterior = case[0]
    starts = posterior.initial_points(jax.random.key(108), NUM_CHAINS)
    gaps = _gaps(starts, case)
    assert np.all(gaps < 0.5), f"starts in modes {gaps.round(1)} nats below the main one"
    info = posterior._typical_starts.last_info  # one row per observation (here one)
    values = np.asarray(info.log_density)[0]
    kept = values[np.asarray(info.chosen)[0]]
    assert np.all(kept >= values.max() - default_agree_nats(3))
    assert int(np.asarray(info.num_agreeing)[0]) < values.size, "some candidates were dropped"


@pytest.mark.slow
def test_old_default_lands_in_lower_modes(case):
    """The control: minimum-norm Gauss–Newton from prior draws (the previous default)."""
    posterior = case[0]
    with jax.enable_x64(True):
        u0 = jax.random.normal(jax.random.key(108), (NUM_CHAINS, 6), jnp.float64)
        starts = posterior._newton(u0, jnp.repeat(posterior.y_obs[None], NUM_CHAINS, 0), 1e-11, 100)
    gaps = _gaps(starts, case)
    assert np.sum(gaps > 5.0) >= 3, gaps.round(1)
