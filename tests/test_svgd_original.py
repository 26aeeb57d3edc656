"""dgm.SVGD, the original code's API: parity with the published update, dtypes, errors."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dgm
from tests.inference.svgd.targets import numpy_original

A = np.array([[0.2260, 0.1652], [0.1652, 0.6779]])
MU = np.array([-0.6871, 0.8010])


def dlnprob(theta):  # NumPy only: runs through the per-iteration path
    return -np.matmul(theta - MU, A)


def test_parity_with_published_update():
    x0 = np.random.default_rng(3).normal(size=(30, 2))
    expected = numpy_original(x0, dlnprob, 100, 0.05)
    x0_copy = x0.copy()
    numpy_path, jax_path = dgm.SVGD(), dgm.SVGD()
    got = numpy_path.update(x0, dlnprob, n_iter=100, stepsize=0.05)
    np.testing.assert_array_equal(x0, x0_copy)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)
    got_jax = jax_path.update(
        x0, lambda t: -(jnp.asarray(t) - MU[None]) @ A, n_iter=100, stepsize=0.05
    )
    np.testing.assert_allclose(got_jax, expected, atol=1e-6, rtol=0)
    assert not numpy_path._runners and jax_path._runners  # each took its own path
    assert np.abs(expected - x0).max() > 0.1  # the comparison is not vacuous


class _Minibatches:
    """A NumPy ``dlnprob`` with the original BLR's pattern: each call first advances a
    counter that picks the data (here, which of three targets pulls the particles)."""

    def __init__(self):
        self.iter = 0

    def dlnprob(self, theta):
        self.iter += 1
        return -np.matmul(
            theta - np.array([[-1.0, 0.5], [0.3, 0.0], [1.2, -0.4]])[self.iter % 3], A
        )


def test_stateful_numpy_gradient_follows_the_original_trajectory():
    """A ``dlnprob`` that keeps state is called exactly ``n_iter`` times, as by the original,
    so the particles follow the original's trajectory (an extra probe call shifted every
    minibatch by one: 0.54 off on the original BLR)."""
    x0 = np.random.default_rng(4).normal(size=(20, 2))
    reference, ours = _Minibatches(), _Minibatches()
    expected = numpy_original(x0, reference.dlnprob, 50, 0.05)
    got = dgm.SVGD().update(x0, ours.dlnprob, n_iter=50, stepsize=0.05)
    assert ours.iter == reference.iter == 50
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


_X64_OFF_SCRIPT = """
import json, sys
import jax
import jax.numpy as jnp
jax.config.update("jax_enable_x64", False)
import numpy as np
import dgm
x0 = np.load(sys.argv[1])
A = np.array([[0.2260, 0.1652], [0.1652, 0.6779]])
mu = np.array([[-0.6871, 0.8010]])
mu32, A32 = mu.astype(np.float32), A.astype(np.float32)  # see the test's docstring
parity = dgm.SVGD()
out = {
    "numpy": parity.update(x0, lambda t: -np.matmul(t - mu, A), n_iter=100, stepsize=0.05),
    "jax": parity.update(x0, lambda t: -(jnp.asarray(t) - mu) @ A, n_iter=100, stepsize=0.05),
    "float32": parity.update(x0.astype(np.float32), lambda t: -(jnp.asarray(t) - mu32) @ A32,
                             100, 0.05),
}
np.savez(sys.argv[2], **out)
print(json.dumps({"x64_after": bool(jax.config.jax_enable_x64),
                  "dtypes": {k: str(v.dtype) for k, v in out.items()}}))
"""


def test_float64_in_float64_out_with_x64_off(tmp_path):
    """In a process with JAX's 64-bit mode off (its default), float64 particles still
    run in float64: within 1e-6 of the NumPy original after 100 iterations (float32
    arithmetic gave 5.7e-6), and the global setting is unchanged afterwards; float32
    particles run and come back in float32.

    The float32 run closes over float32 constants: with JAX 0.10.2, a float64 NumPy
    constant that a jitted function closed over inside ``enable_x64(True)`` is cached
    as a float64 literal and breaks a later float32 trace outside the scope (MLIR
    verification error; reproduced without dgm).
    """
    x0 = np.random.default_rng(3).normal(size=(30, 2))
    np.save(tmp_path / "x0.npy", x0)
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(Path(dgm.__file__).parents[1]), env.get("PYTHONPATH", "")]
    )
    cmd = [sys.executable, "-c", _X64_OFF_SCRIPT, str(tmp_path / "x0.npy"), str(tmp_path / "o.npz")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["x64_after"] is False
    assert report["dtypes"] == {"numpy": "float64", "jax": "float64", "float32": "float32"}
    out = np.load(tmp_path / "o.npz")
    expected = numpy_original(x0, dlnprob, 100, 0.05)
    for name in ("numpy", "jax"):
        np.testing.assert_allclose(out[name], expected, atol=1e-6, rtol=0, err_msg=name)
    np.testing.assert_allclose(out["float32"], expected, atol=1e-3, rtol=0)


def test_float32_in_float32_out():
    x0 = np.random.default_rng(3).normal(size=(30, 2)).astype(np.float32)
    x64_before = jax.config.jax_enable_x64
    mu, a = MU[None, :].astype(np.float32), A.astype(np.float32)
    got = dgm.SVGD().update(x0, lambda t: -(t - mu) @ a, 50, 0.05)
    assert got.dtype == np.float32
    assert jax.config.jax_enable_x64 == x64_before


def test_nan_warns_and_keeps_finite_particles():
    def grad(x):  # the gradient turns NaN once any particle passes 3
        g = 5.0 - x
        return jnp.where(jnp.any(x > 3.0), jnp.nan, 1.0) * g

    x0 = np.arange(5.0)[:, None] * 0.1
    with pytest.warns(RuntimeWarning, match=r"non-finite particles at iteration \d+"):
        out = dgm.SVGD().update(x0, grad, n_iter=500, stepsize=0.1)
    assert np.all(np.isfinite(out)) and np.any(out > 3.0)


def test_compat_runner_chunk_follows_n_iter():
    """A short first call must not fix the chunk size of later, longer runs."""
    parity = dgm.SVGD()
    x0 = np.random.default_rng(0).normal(size=(5, 2))
    grad = lambda x: -jnp.asarray(x)  # noqa: E731
    parity.update(x0, grad, n_iter=3)
    parity.update(x0, grad, n_iter=2000)
    # the first iteration runs apart (its gradient told how lnprob computes): 2 and 1999 left
    assert sorted(r.chunk_size for r in parity._runners.values()) == [2, 1000]


def test_bad_input_errors():
    parity = dgm.SVGD()
    with pytest.raises(ValueError, match=r"`x0` must be a 2-d array .* got shape \(3,\)"):
        parity.update(np.zeros(3), lambda x: -x, n_iter=2)
    with pytest.raises(ValueError, match=r"particles' shape \(4, 2\); got \(4,\)"):
        parity.update(np.ones((4, 2)), lambda x: -x[:, 0], n_iter=2)
    with pytest.raises(ValueError, match=r"particles' shape \(4, 2\); got \(2,\)"):
        parity.update(np.ones((4, 2)), lambda x: -np.sum(x, 0), n_iter=2)
    with pytest.raises(ValueError, match="`stepsize` must be positive; got 0"):
        parity.update(np.ones((4, 2)), lambda x: -x, stepsize=0.0)
    with pytest.raises(ValueError, match="`bandwidth` must be positive"):
        parity.update(np.ones((4, 2)), lambda x: -x, bandwidth=0)
    with pytest.raises(ValueError, match="at least one particle"):
        parity.update(np.ones((0, 2)), lambda x: -x)
    with pytest.raises(ValueError, match="`n_iter` must be a positive int; got 0"):
        parity.update(np.ones((4, 2)), lambda x: -x, n_iter=0)
    with pytest.raises(ValueError, match=r"`alpha` must lie in \[0, 1\); got 1.5"):
        parity.update(np.ones((4, 2)), lambda x: -x, alpha=1.5)
    with pytest.raises(ValueError, match="`x0` must be finite"):
        parity.update(np.full((4, 2), np.nan), lambda x: -x)


def test_import_creates_no_jax_state():
    code = "import sys, dgm; assert 'jax' not in sys.modules; print(dgm.SVGD.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "SVGD"


def test_jax_lnprob_after_a_float32_trace_fails_with_advice():
    # JAX 0.10 reuses a float32 copy of a NumPy array the model closes over, made by a
    # trace with 64-bit mode off (dgm.svgd's output check), inside the scoped 64-bit mode
    # of float64 particles: a bare JaxRuntimeError before; now a message saying what to do.
    x = np.random.default_rng(0).normal(size=(30, 3))

    def log_p(w):
        return -0.5 * jnp.sum((x @ w) ** 2) - 0.5 * jnp.sum(w**2)

    jax.eval_shape(log_p, jax.ShapeDtypeStruct((3,), jnp.float32))
    if jax.config.jax_enable_x64:
        pytest.skip("64-bit mode is on for the whole process: nothing is scoped")
    x0 = np.random.default_rng(1).normal(size=(10, 3))
    try:  # a JAX that no longer mixes the two copies runs it: fine too
        out = dgm.SVGD().update(x0, jax.vmap(jax.grad(log_p)), n_iter=5, stepsize=0.05)
    except RuntimeError as err:  # JaxRuntimeError is one too: only the advice may come
        assert "jax_enable_x64" in str(err), err
    else:
        assert out.dtype == np.float64 and np.all(np.isfinite(out))
    out = dgm.SVGD().update(x0.astype(np.float32), jax.vmap(jax.grad(log_p)), 5, 0.05)
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
