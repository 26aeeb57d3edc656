"""Bad input at every public entry point, in one place: the error names the argument, says
what was expected, and shows what arrived (STYLE §8). Module tests check more cases."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import dgm
import dgm.distributed
from dgm import training
from dgm.cli import main
from dgm.inference import ChainRunner, abc, warmup
from dgm.inference.constrained_hmc import constrained_hmc
from dgm.inference.hmc import hmc
from dgm.inference.manifold import ManifoldSystem
from dgm.inference.svgd import SVGDRunner, build_step, make_score_fn


def _logp(x):
    return -0.5 * jnp.sum(x**2)


def _sphere(u):
    return jnp.sqrt(u @ u)[None]


def _abc_generator(u):
    return u[:2] + 0.1 * u[2:]


def _loss(model, batch, key):
    return jnp.zeros(()), {}


def _kernel():
    return hmc(_logp, step_size=0.5, inverse_mass_matrix=jnp.ones(2), num_steps=3)


def _runner_run(**kwargs):
    kernel = _kernel()
    states = jax.vmap(kernel.init)(jnp.zeros((2, 2)))
    keys = jax.random.split(jax.random.key(0), 2)
    args = {"num_iterations": 5} | kwargs
    ChainRunner(kernel.step).run(keys, states, kernel.params, **args)


def _sample(**kwargs):
    posterior = dgm.condition(_sphere, [1.0], 3)
    args = {"num_chains": 2, "num_samples": 5, "progress_bar": False} | kwargs
    posterior.sample(jax.random.key(0), **args)


def _warmup(num_warmup):
    kernel = _kernel()
    warmup(jax.random.key(0), kernel, kernel.init(jnp.zeros(2)), num_warmup)


# (entry point, call, argument named, what arrived)
CASES = [
    ("condition", lambda: dgm.condition(_sphere, [1.0], 0), "input_dim", "0"),
    ("condition", lambda: dgm.condition(_sphere, [[1.0]], 3), "y_obs", r"\(1, 1\)"),
    ("condition.sample", lambda: _sample(num_chains=0), "num_chains", "0"),
    ("condition.sample", lambda: _sample(step_size=-0.1), "step_size", "-0.1"),
    ("condition.sample", lambda: _sample(chain_map="pmap"), "chain_map", "pmap"),
    ("condition.sample", lambda: _sample(target_accept=1.2), "target_accept", "1.2"),
    ("set_host_device_count", lambda: dgm.set_host_device_count(0), "num_devices", "0"),
    (
        "distributed.initialize",
        lambda: dgm.distributed.initialize("127.0.0.1:1234", 2, 5),
        "process_id",
        "5",
    ),
    ("hmc", lambda: hmc(_logp, step_size=0.0), "step_size", "0.0"),
    ("hmc", lambda: hmc(_logp, 0.1, num_steps=(5, 3)), "num_steps", r"\(5, 3\)"),
    (
        "constrained_hmc",
        lambda: constrained_hmc(ManifoldSystem(_sphere, 3, 1), [1.0], step_size=-1.0),
        "step_size",
        "-1.0",
    ),
    ("warmup", lambda: _warmup(0), "num_warmup", "0"),
    ("ChainRunner", lambda: ChainRunner(_kernel().step, chunk_size=0), "chunk_size", "0"),
    ("ChainRunner", lambda: ChainRunner(_kernel().step, chain_map="x"), "chain_map", "x"),
    ("ChainRunner.run", lambda: _runner_run(num_iterations=0), "num_iterations", "0"),
    (
        "abc.pmmh",
        lambda: abc.pmmh(_abc_generator, jnp.ones(2), -1.0, 0.1, input_dim=4, num_params=2),
        "epsilon",
        "-1.0",
    ),
    (
        "abc.rejection_abc",
        lambda: abc.rejection_abc(
            jax.random.key(0),
            _abc_generator,
            jnp.ones(2),
            1.0,
            input_dim=4,
            num_params=2,
            num_simulations=0,
        ),
        "num_simulations",
        "0",
    ),
    ("SVGD.update", lambda: dgm.SVGD().update(np.zeros(3), _logp, 10), "x0", r"\(3,\)"),
    (
        "SVGDRunner",
        lambda: SVGDRunner(build_step(make_score_fn(log_density_fn=_logp)), chunk_size=0),
        "chunk_size",
        "0",
    ),
    ("TrainConfig", lambda: training.TrainConfig(batch_size=0), "train.batch_size", "0"),
    (
        "Trainer",
        lambda: training.Trainer(_loss, optax.sgd(0.1), ema_decay=1.5),
        "ema_decay",
        "1.5",
    ),
]


@pytest.mark.parametrize(
    ("call", "argument", "arrived"),
    [case[1:] for case in CASES],
    ids=[f"{case[0]}-{case[2]}" for case in CASES],
)
def test_error_names_argument_and_what_arrived(call, argument, arrived):
    with pytest.raises(ValueError, match=rf"`{argument}`.*{arrived}"):
        call()


def test_cli_bad_input_exits_1_with_one_line(tmp_path, capsys):
    assert main(["run", "no-such-experiment", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dgm: error:") and "no-such-experiment" in err[0]


def test_numpy_numbers_count_as_numbers():
    """Counts and settings computed with NumPy (``np.prod(shape)``, ``np.float32(0.3)``) are
    taken as the Python numbers they equal (they were refused: "`input_dim` must be a
    positive int; got np.int64(2)"), with the same draws; NumPy's bool still is no number."""

    def generator(u):
        return jnp.sum(u**2, keepdims=True)

    common = dict(num_warmup=0, num_steps=(2, 3), progress_bar=False)
    posterior = dgm.condition(generator, [1.0], np.int64(2))
    py = posterior.sample(
        jax.random.key(0), num_chains=2, num_samples=5, step_size=0.3, tol=1e-9, **common
    )
    npy = posterior.sample(
        jax.random.key(0), num_chains=np.int64(2), num_samples=np.int32(5),
        step_size=np.float64(0.3), tol=np.float64(1e-9), **common,
    )  # fmt: skip
    np.testing.assert_array_equal(npy.posterior["u"].values, py.posterior["u"].values)
    draws = dgm.sample(
        lambda x: -0.5 * jnp.sum(x**2), jnp.zeros(2), key=jax.random.key(1),
        num_chains=np.int64(1), num_samples=np.int64(4), num_warmup=np.int64(0),
        step_size=np.float32(0.5), max_depth=np.int64(3), progress_bar=False,
    )  # fmt: skip
    assert draws.posterior["x"].shape == (1, 4, 2)
    with pytest.raises(ValueError, match=r"`input_dim` must be a positive int; got np.True_"):
        dgm.condition(generator, [1.0], np.True_)
