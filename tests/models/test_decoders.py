"""The decoder protocol: a saved model as a generator of float64 inputs, as the samplers
call it."""

import jax
import jax.numpy as jnp
import numpy as np

from dgm.models import decoders, draw, draw_io, iaf_vae, iaf_vae_io


def _check_float64_inputs(run_dir, input_dim):
    decoder = decoders.load(run_dir)
    both = jax.jit(lambda u: (decoder(u), decoder.head(u, 5)))  # one compile per dtype
    u = np.linspace(-1.0, 1.0, input_dim)
    want = np.asarray(both(jnp.asarray(u, jnp.float32))[0])
    with jax.enable_x64(True):  # dgm.condition's sampler: float64 inputs, float32 weights
        got, head = both(jnp.asarray(u))
    assert got.dtype == jnp.float64 and head.dtype == jnp.float64
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(head, got[:5])


def test_a_saved_draw_takes_float64_inputs(tmp_path):
    model = draw.DRAW((6, 5), 2, 2, 4, 4, 2, 2, key=jax.random.key(0))
    draw_io.save(tmp_path / decoders.MODEL_FILE, model)
    _check_float64_inputs(tmp_path, 4)


def test_a_saved_iaf_vae_takes_float64_inputs(tmp_path):
    model = iaf_vae.ResNetVAE(1, 4, 2, (1, 1), "down_diag", pad=2, key=jax.random.key(0))
    iaf_vae_io.save(tmp_path / decoders.MODEL_FILE, model)
    _check_float64_inputs(tmp_path, decoders.load(tmp_path).input_dim)
