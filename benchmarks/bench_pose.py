"""Constrained HMC on the binocular pose model: dgm vs Mici, ms per constrained step.

The pose generator (``dgm.data.pose.pose_generator``, thesis configuration: σ = 0.01, 216
inputs, 76 outputs) conditioned on scene 1, both samplers at the thesis's CHMC settings
(dt 0.05, S ~ U{10..20}, N_g 8; Mici's upper bound is exclusive, so it gets ``(10, 21)``),
quasi-Newton projection with tolerance 1e-8, from prior draws of the 140 latent inputs
completed on the manifold by the noise inputs ``(y − f(z)) / σ``. dgm runs the posterior
the pose experiment builds (``dgm.condition_additive_noise``, dense 76×76 Gram factor as
k = 140 > N = 76) with its chains spread over both cores; Mici
(``DenseConstrainedEuclideanMetricSystem``, ``ConstrainedLeapfrogIntegrator``,
``RandomMetropolisHMC``) runs one chain in its Python loop, given the constraint, its
Jacobian and the matrix–Hessian product as ``jax.jit`` functions converted to NumPy (as
``bench_chmc.py``'s ``jax`` backend for Lotka–Volterra): with dgm's closed-form Jacobian
(``PoseGenerator.noise_free_jacobian``, the one dgm's posterior uses; row
``mici_backend: jax-closed``), with 76 reverse passes (``jax``), or
only the constraint and density, Mici building the derivatives with its own ``jax`` backend
(``jax-auto``), or with its ``autograd`` backend from the generator written in
``autograd.numpy`` (``autograd``; what a user of the original code would run without a
JIT). dgm's compile time is excluded (a warm-up run compiles); Mici's functions are
compiled before timing. Interleaved, ``--repeats`` times, medians. ``ms_per_step``: wall
time over integrator steps, per chain and core; ``cpu_ms_per_step``: process CPU time over
steps.

Run:  python benchmarks/bench_pose.py [--repeats 2] [--chains 2] [--draws 3] [--mici-draws 1]
          [--mici-backend jax-closed,jax,jax-auto,autograd]
"""

import argparse
import json
import statistics
import time

from dgm._runtime import configure_cpu

configure_cpu(2)  # two host devices: dgm spreads its chains over both cores

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_chmc import (  # noqa: E402  (float64 on)
    jax_auto_mici_system,
    jax_mici_system,
    mici_system,
    run_mici,
)

from dgm.data.pose import pose_generator  # noqa: E402
from dgm.experiments import _pose_methods as methods  # noqa: E402
from dgm.inference.base import device_groups  # noqa: E402
from dgm.models.pose import LATENT_DIM, scene_inputs  # noqa: E402

SETTINGS = {"step_size": 0.05, "num_steps": (10, 20), "num_geodesic_steps": 8, "tol": 1e-8}


def setup(num_starts: int, seed: int):
    gen = pose_generator("thesis")
    u_true = jnp.asarray(scene_inputs()[0])
    y = jax.jit(lambda u: gen(u))(u_true)
    z = jax.random.normal(jax.random.key(seed), (num_starts, LATENT_DIM), jnp.float64)
    noise = (y[None] - jax.jit(jax.vmap(lambda v: gen.noise_free(v)))(z)) / gen.sigma
    return gen, np.asarray(y), np.asarray(jnp.concatenate([z, noise], axis=1))


def pose_mici_system(gen, y_obs, u_example):
    # 76 reverse passes for J (M = 216 > 2N)
    return jax_mici_system(lambda u: gen(u), y_obs, u_example, jacobian=jax.jacrev)


def closed_form_jacobian(gen):
    """``generate -> (u -> [J_f(z) | σ I])`` with dgm's closed-form J_f (what dgm uses)."""

    def jac(u):
        jac_f = gen.noise_free_jacobian(u[:LATENT_DIM])
        return jnp.concatenate([jac_f, gen.sigma * jnp.eye(jac_f.shape[0], dtype=jac_f.dtype)], 1)

    return lambda generate: jac


def pose_autograd_generator(gen):
    """``u (216,) -> y (76,)``, the pose generator written in ``autograd.numpy`` (a Python
    loop over the skeleton's nodes), as a Mici user of the original (Theano) code would
    write it for Mici's ``autograd`` backend. Checked against dgm's in :func:`main`."""
    import autograd.numpy as anp

    from dgm.bvh.skeleton import _plan
    from dgm.models.pose import _CAMERA_ROTATION, BASELINE, FOCAL_LENGTH, NUM_ANGLES

    sk = gen.skeleton
    plan = _plan(sk.parents, sk.channels)
    layers = [(np.asarray(w), np.asarray(b)) for w, b in gen.decoder]
    mean, chol = np.asarray(gen.log_length_mean), np.asarray(gen.log_length_chol)
    free = np.zeros((sk.num_channels, NUM_ANGLES))
    free[np.asarray(gen.free_channels), np.arange(NUM_ANGLES)] = 1.0
    fixed = np.zeros(sk.num_channels)
    fixed[np.asarray(gen.fixed_channels)] = np.asarray(gen.fixed_values)
    index = np.asarray(gen.length_index)
    offsets = np.asarray(sk.offsets)
    norms = np.linalg.norm(offsets, axis=1)
    unit = offsets / np.where(norms > 0, norms, 1.0)[:, None]
    cam = np.array([FOCAL_LENGTH, FOCAL_LENGTH, 1.0])[:, None] * _CAMERA_ROTATION

    def rot(axis, a):
        c, s = anp.cos(a), anp.sin(a)
        rows = {
            0: [[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]],
            1: [[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]],
            2: [[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]],
        }[axis]
        return anp.array(rows)

    def generate(u):
        lengths = anp.exp(mean + anp.dot(u[:13], chol))
        (w0, b0), *hidden, (w_out, b_out) = layers
        h = anp.tanh(anp.dot(u[13:43], w0) + b0)
        for w, b in hidden:
            h = anp.tanh(anp.dot(h, w) + b) + h
        out = anp.dot(h, w_out) + b_out
        r = out[: 2 * NUM_ANGLES] + anp.exp(0.5 * out[2 * NUM_ANGLES :]) * u[43:137]
        frame = anp.dot(free, anp.arctan2(r[NUM_ANGLES:], r[:NUM_ANGLES])) + fixed
        rots, poss = [], []
        for i in range(sk.num_nodes):
            r_i = np.eye(3)
            for k, axis in zip(plan.rot_index[i], plan.rot_axis[i], strict=True):
                if k >= 0:
                    r_i = anp.dot(r_i, rot(axis, frame[k]))
            o = unit[i] * lengths[index[i]] if index[i] >= 0 else offsets[i]
            p = sk.parents[i]
            rots.append(r_i if p < 0 else anp.dot(rots[p], r_i))
            poss.append(o if p < 0 else poss[p] + anp.dot(rots[p], o))
        pos = anp.stack([poss[i] for i in gen.output_nodes], axis=1)  # (3, 19)
        t = anp.array([0.1 * u[137], 0.1 * u[138], anp.exp(1.5 + 0.5 * u[139])])
        images = []
        for shift in (BASELINE, -BASELINE):
            q = (
                anp.dot(cam, pos)
                + (np.array([FOCAL_LENGTH, FOCAL_LENGTH, 1.0]) * (t + np.array([shift, 0.0, 0.0])))[
                    :, None
                ]
            )
            images += [q[0] / q[2], q[1] / q[2]]
        return anp.concatenate(images) + gen.sigma * u[LATENT_DIM:]

    return generate


def pose_mici_system_autograd(gen, y_obs, u_example):
    """Mici's ``autograd`` backend on :func:`pose_autograd_generator`: Mici builds the
    Jacobian and the matrix–Hessian product itself (no JIT)."""
    generate = pose_autograd_generator(gen)
    err = np.max(np.abs(generate(np.asarray(u_example)) - np.asarray(gen(jnp.asarray(u_example)))))
    if not err < 1e-10:
        raise AssertionError(f"autograd pose generator differs from dgm's by {err:.2e}")
    return mici_system(
        constr=lambda q: generate(q) - y_obs,
        neg_log_dens=lambda q: 0.5 * q @ q,
        backend="autograd",
    )


def pose_mici_system_closed(gen, y_obs, u_example):
    return jax_mici_system(lambda u: gen(u), y_obs, u_example, jacobian=closed_form_jacobian(gen))


def pose_mici_system_jax_auto(gen, y_obs):
    return jax_auto_mici_system(lambda u: gen(u), y_obs)


def run_dgm(posterior, key, init, num_draws):
    cpu0 = time.process_time()
    idata = posterior.sample(
        key, num_chains=len(init), num_samples=num_draws, num_warmup=0, init=init,
        chunk_size=num_draws, progress_bar=False, **SETTINGS,
    )  # fmt: skip
    stats = idata.sample_stats
    return {
        "cpu_s": time.process_time() - cpu0,
        "wall_s": float(idata.posterior.attrs["wall_s"]),
        "compile_s": float(idata.posterior.attrs["compile_s"]),
        "num_steps": int(stats["n_steps"].values.sum()),
        "accept": float(stats["is_accepted"].values.mean()),
    }


def summarize(rows, devices):
    ms = [1e3 * r["wall_s"] * devices / r["num_steps"] for r in rows]
    cpu = [1e3 * r["cpu_s"] / r["num_steps"] for r in rows]
    return {
        "ms_per_step": statistics.median(ms),
        "cpu_ms_per_step": statistics.median(cpu),
        "accept": statistics.median(r["accept"] for r in rows),
        "steps": [r["num_steps"] for r in rows],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--draws", type=int, default=3)
    parser.add_argument("--mici-draws", type=int, default=1)
    parser.add_argument("--mici-backend", default="jax-closed,jax,jax-auto")
    args = parser.parse_args()
    gen, y, init = setup(args.chains + 1, seed=0)
    dgm_init, mici_init = init[: args.chains], init[args.chains :]
    posterior = methods.chmc_posterior(gen, y)
    mici_settings = [SETTINGS[k] for k in ("step_size", "num_steps", "num_geodesic_steps", "tol")]
    systems = {}
    for b in args.mici_backend.split(","):
        if b == "jax":
            systems[b] = pose_mici_system(gen, y, mici_init[0])
        elif b == "autograd":
            systems[b] = pose_mici_system_autograd(gen, y, mici_init[0])
        elif b == "jax-closed":
            systems[b] = pose_mici_system_closed(gen, y, mici_init[0])
        else:
            systems[b] = pose_mici_system_jax_auto(gen, y)
            run_mici(systems[b], mici_init, 1, *mici_settings, 0, lambda u: u)  # compiles
    warm = run_dgm(posterior, jax.random.key(99), dgm_init, args.draws)  # compiles
    dgm_rows, mici_rows = [], {b: [] for b in systems}
    for r in range(args.repeats):
        dgm_rows.append(run_dgm(posterior, jax.random.key(r), dgm_init, args.draws))
        for b, system in systems.items():
            mici_rows[b].append(
                run_mici(system, mici_init, args.mici_draws, *mici_settings, r, lambda u: u)
            )
    dgm = summarize(dgm_rows, len(device_groups(args.chains)))
    row = {"case": "pose", "sampler": "dgm", "chains": args.chains, "draws": args.draws, **dgm}
    print(json.dumps(row | {"compile_s": warm["compile_s"]}), flush=True)
    for b in systems:
        mici = summarize(mici_rows[b], 1)
        row = {"case": "pose", "sampler": "mici", "mici_backend": b, "chains": 1}
        row |= {"draws": args.mici_draws, **mici}
        row["mici_over_dgm_ms_per_step"] = mici["ms_per_step"] / dgm["ms_per_step"]
        row["mici_over_dgm_cpu_ms_per_step"] = mici["cpu_ms_per_step"] / dgm["cpu_ms_per_step"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
