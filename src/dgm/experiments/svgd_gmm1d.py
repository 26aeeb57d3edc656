"""SVGD on the 1-D Gaussian mixture of the paper's Fig. 1 (and the README animation).

Target ``1/3 N(-2, 1) + 2/3 N(2, 1)``; 100 particles start from N(-10, 1). Writes an
animated GIF of the particles' kernel density estimate against the target.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from dgm import runs
from dgm.config import check_positive
from dgm.experiments.svgd_gaussian2d import KSD_V_LABEL
from dgm.inference import svgd
from dgm.inference.svgd.driver import SVGDRunner

NAME = "svgd-gmm1d"
DESCRIPTION = "SVGD on the 1-D Gaussian mixture (paper Fig. 1): KDE animation and KSD"

WEIGHTS = (1 / 3, 2 / 3)
MEANS = (-2.0, 2.0)


@dataclasses.dataclass(frozen=True)
class Config:
    """Defaults: the paper's 100 particles from N(-10, 1); 500 iterations as in Fig. 1."""

    num_particles: int = 100
    num_iterations: int = 500
    step_size: float = 0.25
    init_mean: float = -10.0
    frame_every: int = 10

    def __post_init__(self):
        check_positive("num_particles", self.num_particles, integer=True)
        check_positive("num_iterations", self.num_iterations, integer=True)
        check_positive("step_size", self.step_size)
        check_positive("frame_every", self.frame_every, integer=True)


PRESETS = {
    "smoke": Config(num_particles=30, num_iterations=40, frame_every=20),
    "quick": Config(),
    "paper": Config(),
}
EXTRA_ARGS = {"particles": "num_particles", "iterations": "num_iterations"}


def log_density(x):
    comps = jnp.stack(
        [jnp.log(w) - 0.5 * (x[0] - m) ** 2 for w, m in zip(WEIGHTS, MEANS, strict=True)]
    )
    return jax.scipy.special.logsumexp(comps) - 0.5 * jnp.log(2 * jnp.pi)


def density(grid: np.ndarray) -> np.ndarray:
    return sum(
        w * np.exp(-0.5 * (grid - m) ** 2) / np.sqrt(2 * np.pi)
        for w, m in zip(WEIGHTS, MEANS, strict=True)
    )


def kde(particles: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """Gaussian KDE with Silverman's bandwidth."""
    x = particles.ravel()
    bw = max(1.06 * x.std() * len(x) ** -0.2, 1e-3)
    z = (grid[:, None] - x[None, :]) / bw
    return np.exp(-0.5 * z**2).sum(1) / (len(x) * bw * np.sqrt(2 * np.pi))


@jax.jit  # one program: op by op, the scores and the KSD compiled 119 programs
def _ksd2_uv(x):
    """The KSD² U- (may be < 0) and V-statistics of the particles against the mixture."""
    return svgd.phi_and_ksd_uv(x, jax.vmap(jax.grad(log_density))(x))[1:3]


def run(config: Config, key, ctx: runs.RunContext) -> dict:
    """Run SVGD, saving a frame every ``frame_every`` iterations; write GIF and report."""
    x0 = config.init_mean + jax.random.normal(key, (config.num_particles, 1))
    score = svgd.make_score_fn(log_density_fn=log_density)
    runner = SVGDRunner(svgd.build_step(score), chunk_size=config.frame_every)
    state = svgd.init(x0)
    frames, iters, traces = [np.asarray(x0)], [0], []
    done = 0
    while done < config.num_iterations:
        n = min(config.frame_every, config.num_iterations - done)
        result = runs.stop_if_interrupted(runner.run(state, n, config.step_size))
        state, done = result.state, done + result.num_iterations
        traces.append(result.trace)
        frames.append(result.particles)
        iters.append(done)
        if result.status != "completed":
            break
    ksd2_u, ksd2_v = (float(k) for k in _ksd2_uv(state.particles))
    x = np.asarray(state.particles).ravel()
    mean = sum(w * m for w, m in zip(WEIGHTS, MEANS, strict=True))
    metrics = {
        "ksd_v_initial": float(traces[0]["ksd_v"][0]),
        "ksd_v_final": math.sqrt(ksd2_v),
        "ksd_initial": float(traces[0]["ksd"][0]),
        "ksd_final": math.sqrt(max(ksd2_u, 0.0)),
        "ksd2_u_final": ksd2_u,
        "mean_error": float(abs(x.mean() - mean)),
        "frac_right_mode": float(np.mean(x > 0)),
        "frac_right_mode_target": float(
            sum(
                w * 0.5 * (1 + math.erf(m / np.sqrt(2)))
                for w, m in zip(WEIGHTS, MEANS, strict=True)
            )
        ),
        "num_iterations": done,
    }
    ctx.save_with("gmm1d.gif", lambda p: _animate(frames, iters, p))
    runs.save_npz(ctx.path("frames.npz"), frames=np.stack(frames), iterations=np.asarray(iters))
    runs.write_text(ctx.path("report.md"), report(config, metrics))
    return metrics


def _animate(frames, iters, path) -> None:
    """Render the frames with matplotlib and write an animated GIF with Pillow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    grid = np.linspace(-14, 6, 400)
    fig, ax = plt.subplots(figsize=(5, 3), dpi=80)
    ax.plot(grid, density(grid), "r--", label="target")
    (line,) = ax.plot(grid, kde(frames[0], grid), "b-", label="particles (KDE)")
    title = ax.set_title("")
    ax.set_ylim(0, 0.45)
    ax.legend(loc="upper left", fontsize=8)
    images = []
    for frame, it in zip(frames, iters, strict=True):
        line.set_ydata(kde(frame, grid))
        title.set_text(f"SVGD, iteration {it}")
        fig.canvas.draw()
        rgba = np.asarray(fig.canvas.buffer_rgba())
        images.append(Image.fromarray(rgba[..., :3].copy()).convert("P", palette=Image.ADAPTIVE))
    plt.close(fig)
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=120, loop=0
    )


def report(config: Config, m: dict) -> str:
    return (
        f"# {NAME}\n\nTarget 1/3 N(-2, 1) + 2/3 N(2, 1); {config.num_particles} particles from "
        f"N({config.init_mean}, 1); {m['num_iterations']} iterations, step {config.step_size}."
        "\n\n![particles](gmm1d.gif)\n\n| metric | value |\n|---|---|\n"
        f"| {KSD_V_LABEL} initial -> final | {m['ksd_v_initial']:.4f} -> {m['ksd_v_final']:.4f} |\n"
        f"| KSD initial -> final (√ of the U-statistic, 0 when it is < 0) | "
        f"{m['ksd_initial']:.4f} -> {m['ksd_final']:.4f} |\n"
        f"| final KSD² U-statistic (unbiased, may be < 0) | {m['ksd2_u_final']:.3g} |\n"
        f"| abs error of the mean | {m['mean_error']:.4f} |\n"
        f"| fraction of particles > 0 (target) | {m['frac_right_mode']:.3f} "
        f"({m['frac_right_mode_target']:.3f}) |\n"
    )


def summary(metrics: dict) -> str:
    return (
        f"KSD (V-statistic) {metrics['ksd_v_initial']:.4f} -> {metrics['ksd_v_final']:.4f}; "
        f"fraction > 0: {metrics['frac_right_mode']:.3f} "
        f"(target {metrics['frac_right_mode_target']:.3f})"
    )
