"""The vae-mnist smoke preset runs through the CLI, saves a loadable decoder, and resumes."""

import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.cli import main
from dgm.experiments import vae_mnist
from dgm.models import vae


def test_smoke_through_cli_and_resume(tmp_path, shared_data, monkeypatch):
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    out = tmp_path / "run"
    args = ["run", "vae-mnist", "--smoke", "--out", str(out), "--no-progress"]
    assert main(args) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    for field in ("test_elbo", "test_nll_is", "is_samples", "epochs", "s_per_epoch"):
        assert field in metrics
    assert metrics["epochs"] == 2 and metrics["is_samples"] == 10
    # the IS estimate is at least the ELBO, up to sampling noise
    assert -metrics["test_nll_is"] >= metrics["test_elbo"] - 1.0
    for f in ("report.md", "samples.png", "model.eqx", "checkpoints/train.eqx"):
        assert (out / f).exists(), f
    # the test images are evenly spaced over the file (binarized_splits), not its first zeros
    assert "100 test images spread evenly" in (out / "report.md").read_text()
    decoder = vae.load_decoder(out)
    assert (decoder.latent_dim, decoder.output_dim) == (50, 784)
    assert decoder.mean(jnp.zeros(50)).shape == (784,)
    # resuming the finished run trains nothing more and reproduces its metrics
    assert main([*args, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for field in ("test_elbo", "test_nll_is", "epochs", "best_epoch", "s_per_epoch"):
        assert again[field] == metrics[field], field


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="`num_valid` must be at most 10000"):
        vae_mnist.Config(num_valid=20_000)
    with pytest.raises(ValueError, match="multiple of `chunk_size`"):
        vae_mnist.Config(test_samples=150, chunk_size=100)


def _point_posterior(model: vae.VAE) -> vae.VAE:
    """The model with q(z|x) narrowed to its mean: log-variance −60, so z = mean to float32
    rounding and every score is a deterministic function of x."""
    last = model.encoder.layers[-1]
    d = model.latent_dim
    weight, bias = last.weight.at[d:].set(0.0), last.bias.at[d:].set(-60.0)
    layer = lambda m: (m.encoder.layers[-1].weight, m.encoder.layers[-1].bias)  # noqa: E731
    return eqx.tree_at(layer, model, (weight, bias))


def test_test_scores_leave_out_the_padding_of_a_short_last_batch():
    """With a point posterior the one-sample −ELBO and the IS estimate do not depend on the
    key, so the mean over 5 test images must not depend on the evaluation batch size: batches
    of 5 (none padded), 2 and 3 (the last one padded with blank images) agree with the mean
    of the per-image scores. Planted bug this caught: the padded rows kept in the means."""
    model = _point_posterior(vae.VAE(12, 2, (8, 8), key=jax.random.key(0)))
    x = np.asarray(jax.random.bernoulli(jax.random.key(1), 0.4, (5, 12)), np.float32)
    key = jax.random.key(2)
    one = eqx.filter_jit(vae.neg_elbo)
    per_image = np.mean([float(one(model, jnp.asarray(xi), key)) for xi in x])
    for batch in (5, 2, 3):
        got = vae_mnist.mean_neg_elbo(model, x, key, batch)
        assert got == pytest.approx(per_image, rel=1e-6), batch
    # a point q: every importance weight is the one-sample (sampled-KL) ELBO's
    sampled = np.mean([float(one(model, jnp.asarray(xi), key, analytic_kl=False)) for xi in x])
    for batch in (5, 2, 3):
        got = vae_mnist.mean_is_nll(model, x, key, batch, 4, 2)
        assert got == pytest.approx(sampled, rel=1e-6), batch
