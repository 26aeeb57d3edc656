"""``dgm.svgd``: the one-call SVGD front end (pytree particles, ArviZ out, no recompiles)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm import stein

MEAN = np.array([1.0, -1.0])
SD = np.array([1.0, 2.0])


def _gaussian(x):
    return -0.5 * jnp.sum(((x - MEAN) / SD) ** 2)


def _tree_target(p):
    """a ~ N(2, 0.5²) (a scalar per particle), c ~ N(0, I) of shape (1, 2)."""
    return -0.5 * ((p["a"] - 2.0) / 0.5) ** 2 - 0.5 * jnp.sum(p["b"]["c"] ** 2)


def test_particles_match_a_gaussian_and_carry_the_trace():
    """200 particles of a 2-d Gaussian: SVGD's fixed point matches the mean and the sds
    (deterministic given the start; tolerances from this run's 0.01 and 3 % errors)."""
    x0 = jax.random.normal(jax.random.key(0), (200, 2))
    idata = dgm.svgd(_gaussian, x0, num_iterations=1500, step_size=0.05)
    x = idata.posterior["x"].values
    assert x.shape == (1, 200, 2) and idata.posterior["x"].dims[-1] == "x_dim"
    np.testing.assert_allclose(x.mean(axis=(0, 1)), MEAN, atol=0.05)
    np.testing.assert_allclose(x.std(axis=(0, 1)), SD, rtol=0.08)
    trace = idata.svgd_trace
    assert (
        trace["ksd"].shape == (1, 1500) and trace["ksd"].values[0, -1] < trace["ksd"].values[0, 0]
    )
    attrs = idata.posterior.attrs
    assert attrs["sampler"] == "svgd" and attrs["num_iterations"] == 1500
    assert attrs["status"] == "completed" and attrs["compile_s"] > 0


def test_pytree_particles_are_unravelled_leaf_by_leaf():
    """Each leaf gets its own target's moments back (a swapped unravel would mix a's mean 2
    into c's zeros), with the leaf's shape and its key path as the name."""
    k1, k2 = jax.random.split(jax.random.key(1))
    p0 = {"a": jax.random.normal(k1, (100,)), "b": {"c": jax.random.normal(k2, (100, 1, 2))}}
    idata = dgm.svgd(_tree_target, p0, num_iterations=800, step_size=0.05)
    a, c = idata.posterior["a"].values, idata.posterior["b.c"].values
    assert a.shape == (1, 100) and c.shape == (1, 100, 1, 2)
    assert abs(a.mean() - 2.0) < 0.05 and abs(a.std() - 0.5) < 0.06
    np.testing.assert_allclose(c.mean(axis=(0, 1)), 0.0, atol=0.1)


def test_second_call_compiles_nothing_and_stops_on_the_tolerance():
    x0 = jax.random.normal(jax.random.key(2), (30, 2))
    dgm.svgd(_gaussian, x0, num_iterations=50, step_size=0.05)
    runner = stein._runner(_gaussian, "rbf", "median", None, 100)
    compiles = runner.num_compiles
    idata = dgm.svgd(_gaussian, x0 + 0.1, num_iterations=3000, step_size=0.05, ksd_tol=0.3)
    assert runner.num_compiles == compiles and idata.posterior.attrs["compile_s"] == 0
    assert idata.posterior.attrs["status"] == "converged"
    assert idata.posterior.attrs["num_iterations"] < 3000


def test_ksd_tol_stops_only_near_the_target():
    """200 particles started 5 sds off N(0, I): the V-statistic KSD (the RKHS norm of the SVGD
    direction) falls below 0.05 at iteration 137 with the mean 0.026 off (iid standard error
    0.071). The U-statistic, clipped at 0, read 0 from iteration 113 with the mean 0.39 off:
    a rule on it passed for converged there."""
    x0 = jax.random.normal(jax.random.key(0), (200, 2)) + 5.0
    target = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    idata = dgm.svgd(target, x0, num_iterations=3000, step_size=0.05, ksd_tol=0.05)
    attrs, x = idata.posterior.attrs, idata.posterior["x"].values[0]
    assert attrs["status"] == "converged" and attrs["num_iterations"] < 3000
    assert np.abs(x.mean(axis=0)).max() < 3 / np.sqrt(200), x.mean(axis=0)
    trace = idata.svgd_trace
    assert float(trace["ksd_v"][0, -1]) < 0.05 <= float(trace["ksd_v"][0, -2])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"log_density_fn": 3}, "`log_density_fn` must be callable"),
        ({"init_particles": jnp.zeros(5)}, r"`init_particles` must be an array \(num_particles"),
        ({"init_particles": jnp.full((4, 2), jnp.nan)}, "`init_particles` must be finite"),
        (
            {"init_particles": {"a": jnp.zeros(4), "b": jnp.zeros((3, 2))}},
            "every leaf must have the particles on its leading axis",
        ),
        ({"init_particles": {}}, "empty pytree"),
        ({"log_density_fn": lambda x: x}, "must return a scalar"),
        ({"kernel": "gauss"}, "`kernel`"),
        ({"num_iterations": 0}, "`num_iterations`"),
        ({"step_size": -1.0}, "`step_size`"),
        ({"optimizer": "adam"}, "`optimizer` must be an Optax"),
        ({"var_name": ""}, "`var_name`"),
    ],
)
def test_bad_arguments_name_themselves(kwargs, match):
    args = {"log_density_fn": _gaussian, "init_particles": jnp.zeros((4, 2))} | kwargs
    with pytest.raises(ValueError, match=match):
        dgm.svgd(args.pop("log_density_fn"), args.pop("init_particles"), **args)
