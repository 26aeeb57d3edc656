"""The three samplers of the pose experiment (spec §5, pose): constrained HMC on the
216-input manifold, HMC on the 140 latent inputs under the Gaussian likelihood, and HMC
on the hierarchical "state" parametrisation with its missing normaliser.

Every method returns the joint positions of its draws, ``(chains, draws, 4, 19)``, its
timings and its sampler statistics, so the driver can score them the same way.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike

from dgm.models.pose import LATENT_DIM, NUM_ANGLES, PoseGenerator

POSITION_DIMS = ("coordinate", "joint")  # of the (4, 19) homogeneous joint positions


class MethodResult(NamedTuple):
    positions: np.ndarray  # (chains, draws, 4, 19)
    wall_s: float  # sampling time of all chains, compilation excluded
    compile_s: float
    accept_rate: float
    extra: dict  # sampler-specific counts
    idata: object | None  # CHMC's InferenceData (None for the HMC baselines)


def batched_positions(fn, draws: np.ndarray, chunk: int = 256) -> np.ndarray:
    """``fn`` (one draw -> (4, 19)) over ``(chains, draws, dim)``, in fixed-size chunks."""
    with jax.enable_x64(True):
        jitted = jax.jit(jax.vmap(fn))
        flat = np.asarray(draws, np.float64).reshape(-1, draws.shape[-1])
        pad = (-len(flat)) % chunk
        full = np.concatenate([flat, np.zeros((pad, flat.shape[1]))])
        out = [
            np.asarray(jitted(jnp.asarray(full[i : i + chunk]))) for i in range(0, len(full), chunk)
        ]
    return np.concatenate(out)[: len(flat)].reshape(*draws.shape[:2], 4, 19)


def latent_energy(gen: PoseGenerator, u: jax.Array, y_obs: ArrayLike) -> jax.Array:
    """HMC on the 140 latent inputs: ½‖f(u) − y‖²/σ² + ½‖u‖² (exact, as the noise is additive)."""
    resid = gen.noise_free(u) - jnp.asarray(y_obs, u.dtype)
    return 0.5 * jnp.sum(resid**2) / gen.sigma**2 + 0.5 * jnp.sum(u**2)


# ----------------------------------------------------------------------------- hierarchical
def hierarchical_state(gen: PoseGenerator, u: jax.Array) -> jax.Array:
    """[log ℓ (13), latent (30), r (94), cam x, cam y, log cam z] for latent inputs u (140)."""
    log_len = jnp.log(gen.bone_lengths(u[:13]))
    mean, log_var = gen.decoder_output(u[13:43])
    r = mean + jnp.exp(0.5 * log_var) * u[43:137]
    cam = u[137:140]
    return jnp.concatenate([log_len, u[13:43], r, 0.1 * cam[:2], (1.5 + 0.5 * cam[2])[None]])


def _state_parts(s: jax.Array):
    return s[:13], s[13:43], s[43:137], s[137:139], s[139]


def hierarchical_positions(gen: PoseGenerator, s: jax.Array) -> jax.Array:
    log_len, _, r, _, _ = _state_parts(s)
    angles = jnp.arctan2(r[NUM_ANGLES:], r[:NUM_ANGLES])
    return gen.pose(jnp.exp(log_len), angles)


def hierarchical_energy(gen: PoseGenerator, s: jax.Array, y_obs: ArrayLike) -> jax.Array:
    """The original ``energy_func_hier_binocular``: it omits ½ Σ log var(latent), so its
    target is not the model's posterior (spec §5)."""
    log_len, latent, r, cam_xy, log_z = _state_parts(s)
    t = jnp.concatenate([cam_xy, jnp.exp(log_z)[None]])
    y = gen.image(hierarchical_positions(gen, s), t)
    mean, log_var = gen.decoder_output(latent)
    dtype = s.dtype
    d = log_len - jnp.asarray(gen.log_length_mean, dtype)
    # (log ℓ − μ) Σ⁻¹ (log ℓ − μ)ᵀ with Σ = Uᵀ U: solve Uᵀ v = d, then ‖v‖²
    v = jax.scipy.linalg.solve_triangular(jnp.asarray(gen.log_length_chol, dtype).T, d, lower=True)
    return 0.5 * (
        jnp.sum((y - jnp.asarray(y_obs, dtype)) ** 2) / gen.sigma**2
        + jnp.sum((r - mean) ** 2 / jnp.exp(log_var))
        + jnp.sum(latent**2)
        + jnp.sum(v**2)
        + jnp.sum((cam_xy / 0.1) ** 2)
        + ((log_z - 1.5) / 0.5) ** 2
    )


# ----------------------------------------------------------------------------- samplers
def run_hmc(
    energy_fn, starts, key, step_size, num_steps, num_samples, chunk_size, checkpoint, progress
):
    """Isotropic HMC on ``exp(-energy_fn)`` from ``starts`` (chains, dim); returns the draws."""
    from dgm.inference import hmc
    from dgm.inference.base import ChainRunner

    with jax.enable_x64(True):
        logp = lambda x: -energy_fn(x)  # noqa: E731
        # one program: eager, each operation of the energy and its gradient compiles one
        init = jax.jit(jax.vmap(lambda x: hmc.init(x, logp)))
        states = init(jnp.asarray(starts, jnp.float64))
        params = hmc.HMCParams(np.float64(step_size), np.ones(starts.shape[1]), *num_steps)
        runner = ChainRunner(hmc.build_kernel(logp), chunk_size=chunk_size)
        result = runner.run(
            jax.random.split(key, len(starts)),
            states,
            params,
            num_samples,
            progress=progress,
            checkpoint=checkpoint,
        )
    if result.interrupted:
        raise KeyboardInterrupt
    infos = result.infos
    extra = {"n_divergent": int(np.asarray(infos.is_divergent).sum())}
    return result.draws, result.wall_s, result.compile_s, float(np.mean(infos.is_accepted)), extra


def chmc_posterior(gen: PoseGenerator, y_obs):
    """The 216-input posterior as :func:`dgm.condition_additive_noise` of the noise-free
    map, J = [J_f | σ I] with J_f in closed form
    (:meth:`~dgm.models.pose.PoseGenerator.noise_free_jacobian`: 0.10 ms against 1.6 ms
    for 76 reverse passes through f, idle; ∇ ½ log det is one reverse pass through it);
    k = 140 > N = 76 keeps the dense 76×76 Gram factor."""
    from dgm.conditioning_additive import condition_additive_noise

    return condition_additive_noise(
        lambda z: gen.noise_free(z),
        np.asarray(y_obs),
        LATENT_DIM,
        gen.sigma,
        derived={"positions": lambda u: gen.joint_positions(u[:LATENT_DIM])},
        dims={"positions": list(POSITION_DIMS)},
        jacobian=lambda z: gen.noise_free_jacobian(z),
    )


def run_chmc(gen: PoseGenerator, y_obs, starts, key, cfg, chunk_size, checkpoint, progress):
    """Constrained HMC on {u : gen(u) = y_obs}, from the latent ``starts`` completed by the
    noise inputs that put them on the manifold: n = (y_obs − f(z)) / σ."""
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        z = jnp.asarray(starts, jnp.float64)
        noise = (y[None, :] - jax.jit(jax.vmap(lambda v: gen.noise_free(v)))(z)) / gen.sigma
        init = jnp.concatenate([z, noise], axis=1)
    if not np.all(np.isfinite(np.asarray(init))):
        raise RuntimeError("a start has a joint behind a camera; use another seed")
    posterior = chmc_posterior(gen, y_obs)
    idata = posterior.sample(
        key,
        num_chains=len(starts),
        num_samples=cfg.num_samples,
        num_warmup=0,
        init=init,
        step_size=cfg.step_size,
        num_steps=tuple(cfg.num_steps),
        num_geodesic_steps=cfg.num_geodesic_steps,
        tol=1e-8,
        max_iters=100,
        chunk_size=chunk_size,
        progress_bar=progress,
        checkpoint=checkpoint,
    )
    attrs = idata.posterior.attrs
    if attrs["interrupted"]:
        raise KeyboardInterrupt
    stats = idata.sample_stats
    extra = {
        "max_constraint_residual": float(stats["constraint_residual"].values.max()),
        "n_projection_failures": int(stats["projection_failed"].values.sum()),
        "n_irreversible": int(stats["irreversible"].values.sum()),
        "n_divergent": int(stats["diverging"].values.sum()),
        "n_transitions": int(stats["is_accepted"].values.size),
    }
    positions = idata.posterior["positions"].values
    accept = float(stats["is_accepted"].values.mean())
    return MethodResult(positions, attrs["wall_s"], attrs["compile_s"], accept, extra, idata)
