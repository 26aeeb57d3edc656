"""The README's first example, as a user runs it: no warning, and the right answer."""

import contextlib
import io
import re
import warnings
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _block(after: str) -> str:
    text = README.read_text()
    return re.search(r"```python\n(.*?)```", text[text.index(after) :], re.S).group(1)


def _exact_factor_mean() -> float:
    """E[exp(u1) | u0 exp(u1) + 0.1 u2 = 1.5] by quadrature over (u0, u1): the noise input
    integrates out to a Gaussian likelihood of width 0.1."""
    g = np.linspace(-7.0, 7.0, 2801)
    u0, u1 = np.meshgrid(g, g, indexing="ij")
    log_w = -0.5 * (u0**2 + u1**2) - 0.5 * ((1.5 - u0 * np.exp(u1)) / 0.1) ** 2
    w = np.exp(log_w - log_w.max())
    return float((w * np.exp(u1)).sum() / w.sum())


def test_condition_your_own_generator_example():
    """Runs the block under "Condition your own generator" (pytest turns any warning, such as
    a ChainDisagreementWarning, into an error); its printed mean is within 5 Monte Carlo
    standard errors (bulk ESS) of the quadrature value, and nearly every step is accepted."""
    from dgm import diagnostics

    scope: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(_block("## Condition your own generator"), scope)
    printed_mean, accept = map(float, out.getvalue().split())
    draws = scope["idata"].posterior["factor"].values
    assert printed_mean == float(draws.mean()) and accept > 0.9
    se = draws.std() / np.sqrt(diagnostics.ess(draws))
    assert abs(printed_mean - _exact_factor_mean()) < 5 * se, (printed_mean, se)


def _run_block(after: str, scope: dict | None = None) -> dict:
    """Executes the README's first ```python block after ``after`` as a user's script would:
    JAX's default promotion rules (the suite's are strict), stdout swallowed."""
    import jax

    scope = {} if scope is None else scope
    with (
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
        contextlib.redirect_stdout(io.StringIO()),
    ):
        exec(_block(after), scope)
    return scope


def test_nuts_example():
    """The NUTS block: the three posterior sds (0.01, 1, 10, over three orders of magnitude)
    within 5 standard errors of the exact ones, SE(s)/sd = 1/sqrt(2 ESS(x^2)) for a Gaussian,
    and one adapted step size per chain."""
    from dgm import diagnostics

    scope = _run_block("## NUTS: a log density in, ArviZ data out")
    x = scope["idata"].posterior["x"].values
    assert x.shape == (4, 1000, 3)
    ratio = x.std((0, 1)) / np.array([0.01, 1.0, 10.0])
    ess_sq = np.array([diagnostics.ess(x[..., i] ** 2) for i in range(3)])
    assert np.all(np.abs(ratio - 1) * np.sqrt(2 * ess_sq) < 5), (ratio, ess_sq)
    steps = np.asarray(scope["idata"].posterior.attrs["step_size"])
    assert steps.shape == (4,) and np.all(steps > 0)


def test_additive_noise_and_warmup_examples(tmp_path, monkeypatch):
    """The additive-noise block, then the warm-up block that continues it: the adapted step
    size is reported and the kept draws' acceptance is near the 0.8 target."""
    monkeypatch.chdir(tmp_path)
    scope = _run_block("### Generators with additive output noise")
    assert scope["idata"].posterior["u"].shape == (4, 500, 8)
    _run_block("### Warm-up: the step size adapts itself", scope)
    attrs = scope["idata"].posterior.attrs
    assert attrs["adapted"] == 1 and attrs["step_size"] > 0
    assert abs(float(scope["idata"].sample_stats["acceptance_rate"].mean()) - 0.8) < 0.1


def test_sampler_convention_and_training_examples(tmp_path, monkeypatch):
    """ "Samplers: one convention" (4 HMC chains after windowed warm-up, a checkpoint file) and
    "Train a model" (the Trainer on a toy regression, checkpoint and loggers) run as shown."""
    monkeypatch.chdir(tmp_path)
    scope = _run_block("## Samplers: one convention")
    assert scope["result"].draws.shape == (4, 1000, 3) and (tmp_path / "hmc_chains.npz").exists()
    scope = _run_block("## Train a model")
    assert scope["result"].epochs == 20 and np.isfinite(scope["result"].best_valid)
    assert {p.name for p in (tmp_path / "run").iterdir()} >= {"train.eqx", "metrics.jsonl"}


def test_bvh_pose_and_iaf_examples(tmp_path, monkeypatch, shared_data):
    """The BVH, pose-generator and IAF-step blocks run with nothing defined beforehand, and
    give the shapes their comments state."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    scope = _run_block("## Motion files (BVH) and the pose generator")
    assert scope["xyz"].shape == (343, 38, 3) and (tmp_path / "copy.bvh").exists()
    scope = _run_block("The pose generator of Graham & Storkey")
    assert scope["u"].shape == (3, 216) and scope["truth"].shape == (3, 4, 19)
    scope = _run_block("## IAF layers and CIFAR-10")
    assert scope["z"].shape == (32, 8, 8) and np.isfinite(float(scope["log_q"]))
    np.testing.assert_allclose(scope["eps_back"], scope["eps"], atol=1e-4)


def test_condition_a_trained_decoder_example(tmp_path, monkeypatch, shared_data):
    """The in-painting section's Python block on a small saved VAE (its "RUN" replaced by the
    directory): a posterior image per draw, sampled on the manifold of the observed rows."""
    import jax

    from dgm import diagnostics
    from dgm.models import vae

    model = vae.VAE(784, 50, (16, 16), key=jax.random.key(0))
    vae.save(tmp_path / vae.MODEL_FILE, model)
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    code = _block("From Python, a trained decoder is").replace('"RUN"', repr(str(tmp_path)))
    scope: dict = {}
    with (
        jax.numpy_dtype_promotion("standard"),
        jax.numpy_rank_promotion("allow"),
        warnings.catch_warnings(),
    ):
        # 100 draws of a random-weight decoder's posterior may leave R-hat above 1.1: the
        # chain check's warning is then right, and not what this test is about.
        warnings.simplefilter("ignore", diagnostics.ChainDisagreementWarning)
        exec(code, scope)
    assert scope["idata"].posterior["image"].shape == (4, 100, 784)
    assert scope["mean_image"].shape == (28, 28)
    residual = np.asarray(scope["idata"].sample_stats["constraint_residual"]).max()
    assert residual < 1e-6 and float(scope["idata"].sample_stats["acceptance_rate"].mean()) > 0.5


def test_condition_a_trained_dmm_example(tmp_path, monkeypatch, shared_data):
    """The DMM section's block on a small saved DMM (its "RUN" replaced by the directory):
    exact posterior draws of the first JSB test sequence's latent path."""
    import jax

    from dgm.models import dmm, dmm_io

    sizes = dict(z_dim=2, transition_dim=8, emission_dim=8, rnn_dim=8, cell="gru")
    model = dmm.DMM(88, **sizes, key=jax.random.key(0))
    dmm_io.save(tmp_path / "model.eqx", model, {k: v for k, v in sizes.items() if k != "z_dim"})
    monkeypatch.setenv("DGM_DATA_DIR", str(shared_data))
    code = _block("### A trained DMM, conditioned exactly").replace('"RUN"', repr(str(tmp_path)))
    shorter = "num_warmup=150, num_samples=100"  # the block as written, with fewer iterations
    code = code.replace("num_warmup=500, num_samples=500", shorter)
    assert shorter in code
    scope: dict = {}
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        exec(code, scope)
    z = scope["idata"].posterior["z"]
    assert z.shape == (4, 100, len(scope["x"]), 2)
    assert float(scope["idata"].sample_stats["acceptance_rate"].mean()) > 0.6


def test_one_posterior_four_methods_example():
    """The four methods of "One posterior, four methods" agree: NUTS's and constrained HMC's
    means within 4 standard errors (bulk ESS of each), SVGD's within 0.03 of NUTS's, and the
    amortized q's importance-weighted mean within 4 standard errors (Kish ESS) of NUTS's,
    with most of its draws effective."""
    from dgm import diagnostics

    scope = _run_block("## One posterior, four methods")
    z = {
        "chmc": scope["chmc"].posterior["u"].values[..., :2],
        "nuts": scope["nuts"].posterior["x"].values,
    }
    m = {k: v.mean((0, 1)) for k, v in z.items()}
    se = {
        k: v.std((0, 1)) / np.sqrt([diagnostics.ess(v[..., i]) for i in range(2)])
        for k, v in z.items()
    }
    assert np.all(np.abs(m["chmc"] - m["nuts"]) < 4 * np.hypot(se["chmc"], se["nuts"]))
    svgd = scope["svgd"].posterior["x"].values[0]
    assert np.all(np.abs(svgd.mean(0) - m["nuts"]) < 0.03), (svgd.mean(0), m["nuts"])
    vi = scope["vi"]
    log_w = vi.sample_stats["log_weight"].values[0]
    w = np.exp(log_w - log_w.max())
    ess = vi.posterior.attrs["ess_importance"]
    assert ess > 500
    is_mean = (w / w.sum()) @ vi.posterior["z"].values[0]
    sd = z["nuts"].std((0, 1))
    assert np.all(np.abs(is_mean - m["nuts"]) < 4 * np.hypot(sd / np.sqrt(ess), se["nuts"]))
