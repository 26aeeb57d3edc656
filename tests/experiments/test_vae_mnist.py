"""The vae-mnist smoke preset runs through the CLI, saves a loadable decoder, and resumes."""

import json

import jax.numpy as jnp
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
