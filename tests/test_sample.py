"""dgm.sample: NUTS with windowed warm-up behind a log density in, ArviZ data out.

The NUTS kernel's own moment tests are in tests/inference/test_nuts.py; here: the
adaptation reaches its target, the ArviZ output, no recompilation on a second call (these
three share one run: about 17 s under load, mostly compiling warm-up and sampling), and
bad input.

Calibration of the adaptation test (seeds 0-19, correct code): mean acceptance statistic
over the last 300 warm-up iterations 0.793-0.796 against the target 0.8; after warm-up
0.889-0.922 (the averaged step size is smaller than the last iterates, as with Stan).
Power: flipping the sign of the dual-averaging update drives the step size to infinity and
the acceptance statistic to 0 in warm-up and after.
"""

import warnings
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm import sampling
from tests.stats import z_scores

MEAN = np.array([0.5, -1.0, 2.0])
SD = np.array([1.0, 0.1, 3.0])
NUM_WARMUP = 1000


def log_density(x):
    return -0.5 * jnp.sum(((x - jnp.asarray(MEAN, x.dtype)) / jnp.asarray(SD, x.dtype)) ** 2)


def run(seed: int):
    return dgm.sample(
        log_density,
        jnp.zeros(3),
        key=jax.random.key(seed),
        num_warmup=NUM_WARMUP,
        num_samples=500,
        num_chains=4,
        chain_map="map",  # compiles faster than vmap
    )


@pytest.fixture(scope="module")
def idata():
    return run(0)


def test_adaptation_reaches_target_acceptance(idata):
    during = float(idata.warmup_sample_stats["acceptance_rate"].values[:, -300:].mean())
    assert abs(during - 0.8) < 0.05, during
    after = float(idata.sample_stats["acceptance_rate"].values.mean())
    assert 0.85 < after < 0.96, after
    assert int(idata.sample_stats["diverging"].values.sum()) == 0


def test_output_and_moments(idata):
    """Shapes, statistics, attributes; means and variances by z-test (float32 draws)."""
    x = idata.posterior["x"].values
    assert x.shape == (4, 500, 3) and x.dtype == np.float32
    names = ("acceptance_rate", "diverging", "tree_depth", "n_steps", "step_size", "energy", "lp")
    for name in names:
        assert idata.sample_stats[name].shape == (4, 500), name
    lp = np.asarray(jax.vmap(jax.vmap(log_density))(jnp.asarray(x)))  # each draw's
    np.testing.assert_allclose(idata.sample_stats["lp"].values, lp, rtol=1e-6, atol=1e-5)
    attrs = idata.posterior.attrs
    assert attrs["sampler"] == "nuts" and len(attrs["step_size"]) == 4
    assert attrs["wall_s"] > 0 and attrs["warmup_s"] > 0
    z, n_eff = z_scores(np.concatenate([x, (x - MEAN) ** 2], -1), np.r_[MEAN, SD**2])
    assert np.all(n_eff > 400), n_eff
    assert np.all(z < 4.5), z


def test_second_call_with_same_shapes_compiles_nothing(idata):
    again = run(1)
    assert again.posterior.attrs["compile_s"] == 0.0
    assert idata.posterior.attrs["compile_s"] > 0.0 or sampling._compiled.cache_info().hits
    fns = sampling._compiled.cache_info()
    assert fns.hits >= 1, fns
    assert not np.allclose(again.posterior["x"].values, idata.posterior["x"].values)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"target_accept": 1.0}, "`target_accept` must lie in \\(0, 1\\); got 1.0"),
        ({"target_accept": 0}, "`target_accept` must lie in \\(0, 1\\)"),
        ({"max_depth": 0}, "`max_depth` must be an int >= 1; got 0"),
        ({"num_warmup": 10}, "`num_warmup` must be 0 or at least 20 .* got 10"),
        ({"num_warmup": -1}, "`num_warmup` must be an int >= 0"),
        ({"kernel": "mala"}, "`kernel` must be one of"),
        ({"metric": "full"}, "`metric` must be one of"),
        ({"num_chains": 0}, "`num_chains` must be a positive int"),
        ({"step_size": 0.0}, "`step_size` must be a positive number"),
        ({"init_params": np.zeros((3, 3))}, "`init_params` must be a vector or have shape"),
        ({"init_params": [np.nan, 0.0, 0.0]}, "`init_params` must be finite"),
        ({"key": 0}, "`key` must be one PRNG key"),
        ({"key": jax.random.split(jax.random.key(0))}, "`key` must be one PRNG key"),
        ({"log_density_fn": 3}, "`log_density_fn` must be callable"),
    ],
)
def test_bad_input(kwargs, match):
    args = {"log_density_fn": log_density, "init_params": jnp.zeros(3), "key": jax.random.key(0)}
    args |= {"num_chains": 2} | kwargs
    with pytest.raises(ValueError, match=match):
        dgm.sample(args.pop("log_density_fn"), args.pop("init_params"), **args)


def test_short_warmup_warns_that_windows_shrink():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserWarning, match="num_warmup=100 is shorter than Stan's"):
            dgm.sample(log_density, jnp.zeros(3), key=jax.random.key(0), num_warmup=100)


def _tree_density(p):
    return log_density(jnp.concatenate([p["loc"], p["scale"]["z"][None]]))


def test_a_pytree_start_samples_what_its_vector_does(idata):
    """A nested dict start (leaves in key order: loc (2,), scale.z ()) runs the same chains
    as the vector start with the same key, split into one variable per leaf; a second call
    compiles nothing."""
    tree = {"scale": {"z": 0.0}, "loc": jnp.zeros(2)}
    kw = dict(num_warmup=NUM_WARMUP, num_samples=500, num_chains=4, chain_map="map")
    out = dgm.sample(_tree_density, tree, key=jax.random.key(0), **kw)
    x = idata.posterior["x"].values
    assert set(out.posterior.data_vars) == {"loc", "scale.z"}
    np.testing.assert_allclose(out.posterior["loc"].values, x[..., :2], rtol=0, atol=1e-6)
    np.testing.assert_allclose(out.posterior["scale.z"].values, x[..., 2], rtol=0, atol=1e-6)
    again = dgm.sample(_tree_density, tree, key=jax.random.key(1), **kw)
    assert again.posterior.attrs["compile_s"] == 0.0


class Params(NamedTuple):
    mu: jax.Array
    log_sd: jax.Array


@pytest.mark.parametrize(
    "fn, init, shapes",
    [
        (lambda x: -0.5 * x**2, 0.0, {"x": (2, 30)}),
        (
            lambda p: -0.5 * (jnp.sum(p.mu**2) + p.log_sd**2),
            Params(jnp.zeros((2, 2)), jnp.asarray(1.0)),
            {"mu": (2, 30, 2, 2), "log_sd": (2, 30)},
        ),
    ],
)
def test_scalar_and_named_tuple_starts(fn, init, shapes):
    out = dgm.sample(fn, init, key=jax.random.key(0), num_warmup=0, num_samples=30, num_chains=2)
    assert {k: v.shape for k, v in out.posterior.data_vars.items()} == shapes


@pytest.mark.parametrize(
    "fn, init, match",
    [
        (lambda x: -0.5 * x**2, jnp.zeros(3), r"`log_density_fn` must return a scalar; got shape"),
        (lambda p: 0.0, {}, r"`init_params` is an empty pytree"),
    ],
)
def test_bad_log_density_or_pytree(fn, init, match):
    with pytest.raises(ValueError, match=match):
        dgm.sample(fn, init, key=jax.random.key(0), num_warmup=0, num_chains=2)


def test_a_raw_prng_key_gives_the_typed_keys_draws():
    """``jax.random.PRNGKey(0)`` (NumPyro's and BlackJAX's examples use it) is accepted and
    samples what ``jax.random.key(0)`` does."""
    kw = dict(num_warmup=0, num_samples=20, num_chains=2, progress_bar=False, step_size=0.1)
    raw = dgm.sample(log_density, jnp.zeros(3), key=jax.random.PRNGKey(0), **kw)
    typed = dgm.sample(log_density, jnp.zeros(3), key=jax.random.key(0), **kw)
    np.testing.assert_array_equal(raw.posterior["x"].values, typed.posterior["x"].values)


def test_warm_up_spreads_the_chains_over_the_devices(monkeypatch):
    """Warm-up runs each device's chains on that device, as sampling does (it ran every
    chain on one device); the suite has two host devices."""
    from dgm.inference import mesh as mesh_lib

    real, meshes = mesh_lib.shard_chains, []

    def recording(fn, mesh, in_specs, *args):
        meshes.append((len(in_specs), mesh.size))
        return real(fn, mesh, in_specs, *args)

    monkeypatch.setattr(mesh_lib, "shard_chains", recording)
    kw = dict(num_warmup=30, num_samples=5, progress_bar=False, metric="none")
    kw |= dict(kernel="hmc", num_steps=2, chain_map="map")
    logp = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    idata = dgm.sample(logp, jnp.zeros(7), key=jax.random.key(0), num_chains=3, **kw)
    assert (3, 2) in meshes  # the warm-up: (keys, states, params) over 2 devices
    assert idata.posterior["x"].shape == (3, 5, 7)


def test_sampling_continues_from_the_warmed_up_state():
    """Chains started 30 sd out reach the typical set during warm-up, and sampling goes on
    from where warm-up left them: the first kept draw of every chain is in the typical set
    (|x_i| < 6 has probability 1 − 4e-9 per coordinate). Sampling that restarted from the
    initial positions draws its first states from a trajectory of energy about 900."""
    idata = dgm.sample(
        lambda x: -0.5 * jnp.sum(x**2),
        jnp.full(2, 30.0),
        key=jax.random.key(3),
        num_warmup=200,
        num_samples=5,
        num_chains=4,
        kernel="hmc",
        num_steps=4,
        chain_map="map",
        progress_bar=False,
    )
    first = idata.posterior["x"].values[:, 0]
    assert np.all(np.abs(first) < 6.0), first


def test_warm_up_and_sampling_use_different_keys(monkeypatch):
    """The chain keys of the warm-up and of the sampling run are split from two different
    halves of ``key``: no sampling chain reuses a warm-up chain's key (split from one half,
    the two runs' keys coincide, chain for chain). The keys are read by spying on the two
    calls; the settings are the mesh test's above, so its compilation is reused."""
    from dgm.inference.base import ChainRunner

    seen = {}
    real_warmup, real_run = sampling._Compiled.warmup, ChainRunner.run

    def raw(keys):
        if jnp.issubdtype(keys.dtype, jax.dtypes.prng_key):
            keys = jax.random.key_data(keys)
        return np.asarray(keys).reshape(-1, 2)

    def warmup(self, keys, *args):
        seen["warmup"] = raw(keys)
        return real_warmup(self, keys, *args)

    def run(self, keys, *args, **kwargs):
        seen["run"] = raw(keys)
        return real_run(self, keys, *args, **kwargs)

    monkeypatch.setattr(sampling._Compiled, "warmup", warmup)
    monkeypatch.setattr(ChainRunner, "run", run)
    kw = dict(num_warmup=30, num_samples=5, progress_bar=False, metric="none")
    kw |= dict(kernel="hmc", num_steps=2, chain_map="map")
    logp = lambda x: -0.5 * jnp.sum(x**2)  # noqa: E731
    dgm.sample(logp, jnp.zeros(7), key=jax.random.key(0), num_chains=3, **kw)
    rows = np.concatenate([seen["warmup"], seen["run"]])
    assert rows.shape == (6, 2) and np.unique(rows, axis=0).shape[0] == 6


def test_ctrl_c_while_sampling_keeps_the_draws_and_says_so(monkeypatch, capsys):
    """Ctrl-C in the second chunk of draws: the first chunk's draws come back with
    ``interrupted`` = 1 and a line on stderr (an experiment then stops; it used to carry
    on with the short run as if it were whole)."""
    from dgm.inference.base import ChainRunner

    kwargs = dict(key=jax.random.key(0), num_warmup=0, num_samples=8, num_chains=2,
                  kernel="hmc", num_steps=2, step_size=0.05, chunk_size=4)  # fmt: skip
    whole = dgm.sample(log_density, jnp.zeros(3), **kwargs)
    assert whole.posterior.attrs["interrupted"] == 0
    real, calls = ChainRunner._run_chunk, []

    def run_chunk(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, *args)

    monkeypatch.setattr(ChainRunner, "_run_chunk", run_chunk)
    part = dgm.sample(log_density, jnp.zeros(3), **kwargs)
    assert part.posterior.attrs["interrupted"] == 1
    assert part.posterior["x"].shape == (2, 4, 3)
    np.testing.assert_array_equal(part.posterior["x"], whole.posterior["x"][:, :4])
    assert "interrupted after 4 of 8 draws" in capsys.readouterr().err
