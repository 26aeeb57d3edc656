"""The predator–prey ODE model: its RK4 solution against an independent solver."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.integrate import solve_ivp

from dgm.models.ode_predator_prey import PredatorPreyODE


def test_rk4_trajectory_matches_a_tight_reference_solution():
    model = PredatorPreyODE(num_obs_times=4)
    u_theta = np.array([0.3, -0.2, 0.1, 0.4])
    a, b, c, d = np.exp(np.asarray(model.prior_loc) + model.prior_scale * u_theta)

    def f(_, s):
        x, y = s
        return [a * x - b * x * y, -c * y + d * x * y]

    ref = solve_ivp(f, (0, 4), model.x0, t_eval=[1, 2, 3, 4], rtol=1e-11, atol=1e-11).y.T
    with jax.enable_x64(True):
        got = np.asarray(model.trajectory(jnp.asarray(u_theta)))
    # RK4 with 20 substeps per unit: errors near 1e-6 relative (a lower-order step: 1e-3)
    np.testing.assert_allclose(got, ref.reshape(-1), rtol=1e-4)
