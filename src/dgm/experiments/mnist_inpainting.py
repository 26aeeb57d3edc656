"""MNIST in-painting: a trained decoder conditioned on the top rows of an image (spec §4.3).

The generator is ``y = m(z)[:N] + σ n`` with ``m`` a trained image decoder (any model
:func:`dgm.models.decoders.load` turns into an :class:`~dgm.models.decoders.ImageDecoder`),
N = ``rows`` × width observed pixels and σ = 0.05. Two samplers of the same posterior:

* constrained HMC on all k + N inputs ``u = [z | n]`` (:func:`dgm.condition_additive_noise`:
  Gram solves through the k×k capacitance matrix), at the paper's settings (dt 0.25,
  S ~ U{4..6}, N_g 3, tol 1e-8), chains started on the manifold in closed form;
* HMC on the k latents with the noise integrated out (exact here, spec §5), dt 0.015,
  L ~ U{30..50}, from the same starting latents (one prior draw per chain; the notebook's
  single chain started at z = 0).

Without ``--decoder`` the run trains a VAE first (``vae-mnist``'s training function, into
``<run>/decoder``). The observation is the paper's ``observed.npz`` by default, a file
(``--observed``, an ``.npz`` with ``y_obs`` or an ``.npy``), or the top rows of MNIST test
image ``--digit`` plus σ·n. Writes ``metrics.json`` (per method: ESS and ESS/s of the
latents and of the in-painted pixel means, seconds per effective sample, acceptance),
``report.md``, ``inpainting.png`` (observed rows inverted, samples below), ``traces.png``
and ``posterior.nc`` (CHMC's groups, plus an ``hmc`` group with ``z`` and ``pixels``).
"""

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs
from dgm.conditioning_additive import condition_additive_noise
from dgm.config import check_positive
from dgm.data import data_dir
from dgm.experiments import _mnist_inpainting_report as report_lib
from dgm.experiments import vae_mnist
from dgm.inference import hmc
from dgm.inference.base import ChainRunner
from dgm.models import decoders

NAME = "mnist-inpainting"
DESCRIPTION = "In-paint MNIST digits: constrained HMC on a trained decoder vs latent HMC"
EXTRA_ARGS = {"decoder": "decoder", "observed": "observed", "digit": "digit", "rows": "rows"}
# what a run saved before a field existed did (dotted field -> value as --set takes it): CHMC
# adapted its step during warm-up before `chmc.adapt` (its resume needs `--set chmc.adapt=true`)
FORMER_DEFAULTS = {"chmc.adapt": "true"}
OBSERVED_FILE = Path("dgm") / "mnist-vae-decoder" / "observed.npz"
OBSERVED_SHA256 = "a4173ad9060956aa4e050dd3586bb7f3685d83436684888f90ca2588f18643ec"
NUM_TEST_IMAGES = 10_000


@dataclasses.dataclass(frozen=True)
class CHMCConfig:
    step_size: float = 0.25
    num_steps: tuple[int, int] = (4, 6)
    num_geodesic_steps: int = 3
    num_chains: int = 4
    num_samples: int = 200
    num_warmup: int = 10
    tol: float = 1e-8
    max_iters: int = 100
    chunk_size: int = 10
    # the spec's fixed dt; True adapts each chain's step during warm-up (dual averaging
    # from step_size), as the smoke preset's untrained decoder needs
    adapt: bool = False

    def __post_init__(self):
        check_positive("chmc.step_size", self.step_size)
        for name in ("num_geodesic_steps", "num_chains", "num_samples", "max_iters", "chunk_size"):
            check_positive(f"chmc.{name}", getattr(self, name), integer=True)


@dataclasses.dataclass(frozen=True)
class HMCConfig:
    step_size: float = 0.015
    num_steps: tuple[int, int] = (30, 50)
    num_chains: int = 4
    num_samples: int = 1200
    num_warmup: int = 20
    chunk_size: int = 100

    def __post_init__(self):
        check_positive("hmc.step_size", self.step_size)
        for name in ("num_chains", "num_samples", "chunk_size"):
            check_positive(f"hmc.{name}", getattr(self, name), integer=True)


# The decoder trained when no --decoder is given: vae-mnist's quick preset, scored on
# 200 test images (the in-painting run does not need a precise likelihood).
QUICK_VAE = dataclasses.replace(vae_mnist.PRESETS["quick"], num_test=200)


@dataclasses.dataclass(frozen=True)
class Config:
    """Paper settings (spec §6) with several chains; ``decoder`` None trains ``train``."""

    decoder: str | None = None  # run directory of a trained image model
    observed: str | None = None  # .npz (key y_obs) or .npy; default the paper's file
    digit: int | None = None  # MNIST test image whose top rows are observed
    rows: int = 7
    noise_sd: float = 0.05
    train: vae_mnist.Config = QUICK_VAE
    chmc: CHMCConfig = CHMCConfig()
    hmc: HMCConfig = HMCConfig()
    num_display: int = 8

    def __post_init__(self):
        check_positive("rows", self.rows, integer=True)
        check_positive("noise_sd", self.noise_sd)
        check_positive("num_display", self.num_display, integer=True)
        if self.digit is not None:
            ok = isinstance(self.digit, int) and not isinstance(self.digit, bool)
            if not (ok and 0 <= self.digit < NUM_TEST_IMAGES):
                raise ValueError(
                    f"`digit` must be an MNIST test image index in 0..{NUM_TEST_IMAGES - 1}; "
                    f"got {self.digit!r}"
                )
            if self.observed is not None:
                raise ValueError("give either `observed` or `digit`, not both")


PRESETS = {
    "paper": Config(chmc=CHMCConfig(num_samples=300), train=vae_mnist.PRESETS["paper"]),
    "quick": Config(
        chmc=CHMCConfig(num_samples=60),
        hmc=HMCConfig(num_samples=600),
    ),
    "smoke": Config(
        train=dataclasses.replace(vae_mnist.PRESETS["smoke"], num_test=20, test_samples=5),
        # one chain each: one host device, so each sampler compiles once (not once per device);
        # 10 warm-up iterations let the step size adapt (with 2, a smoke decoder's chain
        # accepted nothing at the default step)
        chmc=CHMCConfig(num_chains=1, num_samples=6, num_warmup=10, chunk_size=4, adapt=True),
        hmc=HMCConfig(num_chains=1, num_samples=30, num_warmup=5, chunk_size=20),
        num_display=4,
    ),
}


def load_decoder(config: Config, key, ctx: runs.RunContext) -> decoders.ImageDecoder:
    """``config.decoder`` through :func:`decoders.load`, or a VAE trained into ``<run>/decoder``."""
    if config.decoder is not None:
        return decoders.load(config.decoder)
    out = ctx.path("decoder")
    if not (ctx.resume and (out / decoders.MODEL_FILE).is_file()):
        sub = runs.RunContext(out=out, resume=ctx.resume, progress=ctx.progress)
        metrics = vae_mnist.run(config.train, key, sub)
        runs.write_json(out / "metrics.json", metrics)
    return decoders.load(out)


def observation(config: Config, decoder: decoders.ImageDecoder, key) -> np.ndarray:
    """The observed top ``rows`` rows (float64, length rows × width), validated."""
    height, width = decoder.image_shape
    if config.rows >= height:
        raise ValueError(f"`rows` must be less than the image height {height}; got {config.rows}")
    num_obs = config.rows * width
    if config.digit is not None:
        from dgm.data.mnist import load_mnist_test_images

        image = load_mnist_test_images()[config.digit].astype(np.float64) / 255.0
        if image.shape != (height, width):
            raise ValueError(f"`digit` needs a {height}x{width} decoder; got {image.shape}")
        noise = np.asarray(jax.random.normal(key, (num_obs,)), np.float64)
        y, source = image.reshape(-1)[:num_obs] + config.noise_sd * noise, f"digit {config.digit}"
    else:
        path = Path(config.observed) if config.observed else _paper_observation()
        y, source = _read_observed(path), str(path)
    y = np.asarray(y, np.float64)
    if y.ndim != 1 or y.shape[0] != num_obs:
        raise ValueError(
            f"the observation ({source}) must be a vector of {num_obs} pixels (the top "
            f"{config.rows} rows of a {height}x{width} image); got shape {y.shape}"
        )
    if not np.all(np.isfinite(y)):
        raise ValueError(f"the observation ({source}) contains NaN or inf")
    return y


def _paper_observation() -> Path:
    """The paper's ``observed.npz``, checked against its sha256 (downloaded from the original
    repository when missing and allowed: ``dgm run --download``)."""
    from dgm.data import downloads_allowed, fetch
    from dgm.data.pose import MODELS_URL

    url = f"{MODELS_URL}/mnist-vae-decoder/observed.npz"
    return fetch(data_dir() / OBSERVED_FILE, OBSERVED_SHA256, url, downloads_allowed())


def _read_observed(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"observation file not found: {path} (`--observed`)")
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    with np.load(path, allow_pickle=False) as data:
        if "y_obs" not in data.files:
            raise ValueError(f"{path} holds no array `y_obs`; found {data.files}")
        return data["y_obs"]


def _float64(tree):
    """Every floating array of ``tree`` as float64 (the sampler works in float64)."""
    is_float = lambda x: isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jnp.floating)  # noqa: E731
    return jax.tree.map(lambda x: x.astype(jnp.float64) if is_float(x) else x, tree)


def run_chmc(cfg: CHMCConfig, posterior, z0, key, ctx: runs.RunContext) -> dict:
    """Constrained HMC on all inputs; ``{z, pixels, wall_s, compile_s, ...}``."""
    noise = posterior.additive_noise
    with jax.enable_x64(True):
        on_manifold = jax.vmap(lambda z: noise.input_on_manifold(z, posterior.y_obs))
        init = np.asarray(on_manifold(jnp.asarray(z0, jnp.float64)))
    idata = posterior.sample(
        key,
        num_chains=cfg.num_chains,
        num_samples=cfg.num_samples,
        num_warmup=cfg.num_warmup,
        step_size=cfg.step_size,
        num_steps=tuple(cfg.num_steps),
        num_geodesic_steps=cfg.num_geodesic_steps,
        tol=cfg.tol,
        max_iters=cfg.max_iters,
        init=init,
        chunk_size=cfg.chunk_size,
        adapt=cfg.adapt,
        chain_map="auto",
        progress_bar=ctx.progress,
        checkpoint=ctx.checkpoint_path("chmc_chains"),
    )
    if idata.posterior.attrs["interrupted"]:  # the chain checkpoint keeps the draws so far
        raise KeyboardInterrupt
    ctx.save_with("posterior.nc", lambda p: idata.to_netcdf(str(p), engine="h5netcdf"))
    stats, attrs = idata.sample_stats, idata.posterior.attrs
    k = noise.latent_dim
    return {
        "z": idata.posterior["u"].values[..., :k],
        "pixels": idata.posterior["pixels"].values,
        "wall_s": attrs["wall_s"],
        "compile_s": attrs["compile_s"],
        "accept_rate": float(stats["is_accepted"].values.mean()),
        "step_sizes": [float(v) for v in stats["step_size"].values[:, 0]],  # per chain
        "num_iterations": cfg.num_warmup + cfg.num_samples,
        "n_steps": int(stats["n_steps"].values.sum()),
        "n_projection_failures": int(stats["projection_failed"].values.sum()),
        "n_irreversible": int(stats["irreversible"].values.sum()),
        "n_divergent": int(stats["diverging"].values.sum()),
        "max_constraint_residual": float(stats["constraint_residual"].values.max()),
    }


def run_latent_hmc(cfg: HMCConfig, noise, y, z0, pixel_fn, key, ctx: runs.RunContext) -> dict:
    """HMC on the latents with the noise integrated out; same result keys as :func:`run_chmc`."""
    with jax.enable_x64(True):
        y = jnp.asarray(y, jnp.float64)
        logp = lambda z: noise.latent_log_density(z, y)  # noqa: E731
        init = jax.jit(jax.vmap(lambda z: hmc.init(z, logp)))  # one program, not one per op
        states = init(jnp.asarray(z0, jnp.float64))
        params = hmc.HMCParams(
            jnp.asarray(cfg.step_size, jnp.float64), jnp.ones(()), *cfg.num_steps
        )
        total = cfg.num_warmup + cfg.num_samples
        runner = ChainRunner(hmc.build_kernel(logp), chunk_size=min(cfg.chunk_size, total))
        result = runner.run(
            jax.random.split(key, cfg.num_chains),
            states,
            params,
            total,
            progress=ctx.progress,
            desc="latent HMC",
            accept_fn=lambda info: info.is_accepted,
            checkpoint=ctx.checkpoint_path("hmc_chains"),
        )
        runs.stop_if_interrupted(result)
        z = result.draws[:, cfg.num_warmup :]
        pixels = np.asarray(pixel_fn(jnp.asarray(z)))
    infos = jax.tree.map(lambda x: x[:, cfg.num_warmup :], result.infos)
    return {
        "z": z,
        "pixels": pixels,
        "wall_s": result.wall_s,
        "compile_s": result.compile_s,
        "accept_rate": float(infos.is_accepted.mean()),
        "num_iterations": total,
        "n_steps": int(infos.num_steps.sum()),
        "n_divergent": int(infos.is_divergent.sum()),
    }


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    """Train or load the decoder, condition it, run both samplers, write the outputs."""
    start = time.perf_counter()
    k_train, k_obs, k_init, k_chmc, k_hmc, k_fig = jax.random.split(key, 6)
    decoder = load_decoder(config, k_train, ctx)
    y = observation(config, decoder, k_obs)
    num_obs = y.shape[0]
    with jax.enable_x64(True):
        dec64 = _float64(decoder)
        posterior = condition_additive_noise(
            lambda z: dec64.head(z, num_obs),
            y,
            decoder.input_dim,
            config.noise_sd,
            derived={"pixels": lambda u: dec64(u[: decoder.input_dim])[num_obs:]},
            dims={"pixels": report_lib.DIMS["pixels"]},
        )
        pixel_fn = jax.jit(jax.vmap(jax.vmap(lambda z: dec64(z)[num_obs:])))
        num_chains = max(config.chmc.num_chains, config.hmc.num_chains)
        z0 = np.asarray(jax.random.normal(k_init, (num_chains, decoder.input_dim), jnp.float64))
    methods = {
        "chmc": lambda: run_chmc(config.chmc, posterior, z0[: config.chmc.num_chains], k_chmc, ctx),
        "hmc": lambda: run_latent_hmc(
            config.hmc, posterior.additive_noise, y, z0[: config.hmc.num_chains], pixel_fn,
            k_hmc, ctx,
        ),
    }  # fmt: skip
    results = {name: report_lib.run_or_resume(name, fn, ctx) for name, fn in methods.items()}
    metrics = report_lib.metrics(results, decoder, num_obs, config)
    report_lib.save_posterior(ctx, results)
    report_lib.plot_inpainting(ctx, results, y, decoder, config, k_fig)
    report_lib.plot_traces(ctx, results)
    runs.write_text(ctx.path("report.md"), report_lib.report(metrics, config))
    metrics["wall_s"] = time.perf_counter() - start
    return metrics


def summary(metrics: dict) -> str:
    return report_lib.summary(metrics)
