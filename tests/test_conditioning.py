"""dgm.condition and ConditionedGenerator.sample: the front door.

Bad input (each error names the argument, what was expected and what arrived), the
returned InferenceData, and checkpoints: an interrupted run keeps its draws, and a run
resumed from its checkpoint gives the draws of an uninterrupted one.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from dgm.inference.base import ChainRunner
from dgm.inference.manifold import DenseCholesky


def sphere(u):
    return jnp.sqrt(jnp.sum(u**2, keepdims=True))


@pytest.fixture(scope="module")
def posterior():
    return dgm.condition(sphere, [1.0], 3)


# (arguments of condition, exception, message): every public argument of `condition`
CONDITION_ERRORS = [
    (dict(generator=3), ValueError, "`generator` must be callable; got int"),
    (dict(generator=lambda u: u[:1] @ u[:1]), ValueError, r"`generator` must return a vector"),
    (dict(generator=lambda u: u @ jnp.ones(5)), ValueError, "`generator` failed on an input"),
    (dict(y_obs=[1.0, 2.0]), ValueError, r"`generator` must return a vector of shape \(2,\)"),
    (dict(y_obs=[np.nan]), ValueError, "`y_obs` must be finite"),
    (  # once read as "the Jacobian has rank 0" at the first prior draw
        dict(generator=lambda u: jnp.round(jnp.sum(u**2, keepdims=True)).astype(jnp.int32)),
        ValueError,
        "`generator` must return floating-point values .* got dtype int32",
    ),
    (dict(y_obs=[[1.0]]), ValueError, "`y_obs` must be a vector; got shape"),
    (dict(input_dim=0), ValueError, "`input_dim` must be a positive int; got 0"),
    (dict(input_dim=2.5), ValueError, "`input_dim` must be a positive int; got 2.5"),
    (
        dict(generator=lambda u: jnp.concatenate([u, u]), y_obs=np.ones(6)),
        ValueError,
        "more inputs than outputs .* got input_dim=3 for 6 outputs",
    ),
    (  # as many: the manifold is a set of points, nothing to sample
        dict(generator=lambda u: u * u[0], y_obs=np.ones(3)),
        ValueError,
        "more inputs than outputs .* got input_dim=3 for 3 outputs",
    ),
    (dict(derived=[sphere]), ValueError, "`derived` must be a dict"),
    (dict(derived={"r": 1.0}), ValueError, r"`derived\['r'\]` must be callable"),
    (dict(dims={"r": ["i"]}), ValueError, "`dims` names 'r', which is not a derived quantity"),
    (
        dict(derived={"sq": lambda u: u * u}, dims={"sq": ["a", "b"]}),
        ValueError,
        r"`dims\['sq'\]` must name each of the 1 axes of derived\['sq'\] \(shape \(3,\)\); "
        r"got \['a', 'b'\]",
    ),
    (dict(derived={"sq": lambda u: u * u}, dims={"sq": [1]}), ValueError, "list of axis names"),
    (dict(dims=["sq"]), ValueError, "`dims` must be a dict"),
    (dict(jacobian="central"), ValueError, "`jacobian` must be one of"),
    (dict(gram_factor_fn="chol"), ValueError, "`gram_factor_fn` must be callable; got str"),
    (
        dict(gram_factor_fn=lambda u, j: jnp.linalg.cholesky(j @ j.T)),
        TypeError,
        "`gram_factor_fn` must return an AbstractGramFactor",
    ),
    (dict(init_fn=1), ValueError, "`init_fn` must be callable; got int"),
    (dict(half_log_det_fn=1), ValueError, "`half_log_det_fn` must be callable; got int"),
]

# (arguments of sample, exception, message): every public argument of `sample`
SAMPLE_ERRORS = [
    (dict(key=0), ValueError, "`key` must be one PRNG key"),
    (dict(num_chains=0), ValueError, "`num_chains` must be a positive int; got 0"),
    (dict(num_samples=-3), ValueError, "`num_samples` must be a positive int"),
    (dict(num_warmup=-1), ValueError, "`num_warmup` must be a non-negative int; got -1"),
    (dict(step_size=0.0), ValueError, "`step_size` must be a positive number; got 0.0"),
    (dict(step_size=float("nan")), ValueError, "`step_size` must be a positive number"),
    (dict(num_steps=0), ValueError, "`num_steps` must satisfy 1 <= low <= high"),
    (dict(num_steps=(5, 2)), ValueError, "`num_steps` must satisfy"),
    (dict(num_steps="many"), ValueError, "`num_steps` must be an int or a"),
    (dict(num_geodesic_steps=0), ValueError, "`num_geodesic_steps` must be a positive int"),
    (dict(tol=-1e-8), ValueError, "`tol` must be a positive number"),
    (dict(max_iters=0), ValueError, "`max_iters` must be a positive int"),
    (dict(check_reverse="yes"), ValueError, "`check_reverse` must be a bool"),
    (dict(init=[[np.nan, 0.0, 1.0]], num_chains=1), ValueError, "`init` contain NaN"),
    (
        dict(init=[[0.0, 1.0]], num_chains=1),
        ValueError,
        r"`init` must have shape \(num_chains, 3\)",
    ),
    (dict(init=[[0.0, 0.0, 1.0]], num_chains=2), ValueError, "`init` must have 2 rows"),
    (
        dict(init=[[0.0, 0.0, 2.0]], num_chains=1),
        RuntimeError,
        r"`init` are not on the manifold: max \|generator\(u\) - y_obs\| = 1",
    ),
    (dict(chunk_size=0), ValueError, "`chunk_size` must be a positive int"),
    (dict(chain_map="pmap"), ValueError, "`chain_map` must be one of"),
    (dict(progress_bar=None), ValueError, "`progress_bar` must be a bool"),
    (dict(checkpoint=3), ValueError, "`checkpoint` must be a str or Path; got int"),
]


@pytest.mark.parametrize(
    ("where", "kwargs", "error", "match"),
    [("condition", *case) for case in CONDITION_ERRORS]
    + [("sample", *case) for case in SAMPLE_ERRORS],
)
def test_bad_input_names_the_argument(posterior, where, kwargs, error, match):
    if where == "condition":
        args = dict(generator=sphere, y_obs=[1.0], input_dim=3) | kwargs
        with pytest.raises(error, match=match):
            dgm.condition(**args)
    else:
        args = dict(key=jax.random.key(0), progress_bar=False) | kwargs
        with pytest.raises(error, match=match):
            posterior.sample(**args)


def test_dense_lapack_gram_refuses_vmap():
    """A DenseCholesky of more than SMALL_GRAM rows (LAPACK) cannot run vmapped chains."""
    wide = dgm.condition(lambda u: u[:5] + 0.1 * u[5:], np.zeros(5), 10)
    assert wide.system.uses_lapack_cholesky
    with pytest.raises(ValueError, match="`chain_map` 'vmap' needs a structured Gram factor"):
        wide.sample(jax.random.key(0), num_chains=1, chain_map="vmap", progress_bar=False)
    custom = dgm.condition(
        sphere, [1.0], 3, gram_factor_fn=lambda u, j: DenseCholesky.from_jacobian(j)
    )
    assert custom.system.factor_type() is DenseCholesky


def test_gauss_newton_start_lands_on_manifold(posterior):
    u = posterior.initial_points(jax.random.key(4), 3)
    assert u.dtype == jnp.float64
    np.testing.assert_allclose(np.linalg.norm(np.asarray(u), axis=1), 1.0, atol=1e-9)


KWARGS = dict(
    num_chains=2, step_size=0.5, num_steps=2, progress_bar=False, chunk_size=5, adapt=False
)


@pytest.fixture(scope="module")
def full_run():
    posterior = dgm.condition(sphere, [1.0], 3, derived={"r2": lambda u: u @ u})
    return posterior, posterior.sample(jax.random.key(9), num_samples=20, num_warmup=3, **KWARGS)


def test_inference_data_groups_and_attrs(full_run):
    _, idata = full_run
    assert idata.posterior["u"].shape == (2, 20, 3)
    np.testing.assert_allclose(idata.posterior["r2"].values, 1.0, atol=1e-8)
    assert set(idata.sample_stats.data_vars) == {
        "acceptance_rate",
        "is_accepted",
        "diverging",
        "projection_failed",
        "irreversible",
        "n_steps",
        "energy_error",
        "energy",
        "constraint_residual",
        "step_size",
        "lp",
    }
    np.testing.assert_array_equal(idata.sample_stats["step_size"].values, 0.5)
    attrs = idata.posterior.attrs
    assert attrs["adapted"] == 0
    assert attrs["sampler"] == "constrained_hmc" and attrs["interrupted"] == 0
    assert attrs["step_size"] == 0.5 and attrs["num_steps_low"] == attrs["num_steps_high"] == 2
    assert attrs["tol"] == 1e-8 and attrs["check_reverse"] == 1 and attrs["chain_map"] == "map"
    assert attrs["wall_s"] > 0 and attrs["compile_s"] >= 0
    np.testing.assert_array_equal(idata.observed_data["y"].values, [1.0])
    assert idata.observed_data["y"].dims == ("y_dim",)  # as a batch's ("obs", "y_dim")


def test_n_steps_run_counts_the_warm_up_steps_that_wall_s_timed(full_run):
    """``wall_s`` times warm-up and sampling; ``sample_stats.n_steps`` holds the kept
    draws' steps only, so a time per step needs ``n_steps_run`` (3 warm-up + 20 draws, 2
    chains, 2 steps each)."""
    _, idata = full_run
    assert int(idata.sample_stats["n_steps"].values.sum()) == 2 * 20 * 2
    assert idata.posterior.attrs["n_steps_run"] == 2 * (3 + 20) * 2


def test_checkpoint_resume_gives_identical_draws(full_run, tmp_path):
    """A shorter run, then a longer one on the same checkpoint: the longer one continues
    and its draws equal the uninterrupted run's, bit for bit."""
    posterior, full = full_run
    ckpt = tmp_path / "chains.npz"
    posterior.sample(jax.random.key(9), num_samples=7, num_warmup=3, checkpoint=ckpt, **KWARGS)
    resumed = posterior.sample(
        jax.random.key(9), num_samples=20, num_warmup=3, checkpoint=ckpt, **KWARGS
    )
    np.testing.assert_array_equal(full.posterior["u"].values, resumed.posterior["u"].values)
    np.testing.assert_array_equal(
        full.sample_stats["energy_error"].values, resumed.sample_stats["energy_error"].values
    )


def _interrupt_on_call(monkeypatch, call: int):
    """Make ChainRunner's ``call``-th chunk (1-based) raise KeyboardInterrupt (Ctrl-C)."""
    original, calls = ChainRunner._run_chunk, []

    def run_chunk(self, *args):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(ChainRunner, "_run_chunk", run_chunk)


def test_interrupted_run_keeps_draws_and_resumes(full_run, tmp_path, monkeypatch, capsys):
    posterior, full = full_run
    ckpt = tmp_path / "chains.npz"
    with monkeypatch.context() as m:
        _interrupt_on_call(m, 3)  # Ctrl-C during the third chunk: 10 iterations exist
        part = posterior.sample(
            jax.random.key(9), num_samples=20, num_warmup=3, checkpoint=ckpt, **KWARGS
        )
    err = capsys.readouterr().err
    assert "interrupted after 10 of 23 iterations; keeping the draws so far" in err
    assert part.posterior.attrs["interrupted"] == 1
    np.testing.assert_array_equal(part.posterior["u"].values, full.posterior["u"].values[:, :7])
    resumed = posterior.sample(
        jax.random.key(9), num_samples=20, num_warmup=3, checkpoint=ckpt, **KWARGS
    )
    assert resumed.posterior.attrs["interrupted"] == 0
    np.testing.assert_array_equal(resumed.posterior["u"].values, full.posterior["u"].values)


def test_interrupt_before_any_draw_propagates(full_run, monkeypatch):
    posterior, _ = full_run
    _interrupt_on_call(monkeypatch, 1)
    with pytest.raises(KeyboardInterrupt):
        posterior.sample(jax.random.key(9), num_samples=20, **KWARGS)


def test_a_start_just_off_the_manifold_is_moved_onto_it(posterior):
    """A start 1e-6 off the unit sphere (as a float32 computation leaves it) is projected and
    sampled from; its draws lie on the sphere to the tolerance. A start 8e-4 off (beyond
    1e-4) is still refused, naming its residual."""
    near = np.array([[0.0, 0.6, 0.8 + 1e-6]])
    idata = posterior.sample(
        jax.random.key(0), num_chains=1, num_samples=3, init=near, num_steps=2, progress_bar=False
    )
    u = idata.posterior["u"].values[0]
    assert np.all(np.abs(np.linalg.norm(u, axis=1) - 1.0) < 1e-8)
    with pytest.raises(RuntimeError, match=r"max \|generator\(u\) - y_obs\| = 0.000801"):
        posterior.sample(
            jax.random.key(0), num_chains=1, num_samples=3, init=near + [[0, 0, 1e-3]],
            num_steps=2, progress_bar=False,
        )  # fmt: skip
