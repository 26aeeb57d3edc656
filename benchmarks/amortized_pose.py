"""Not a timing script: amortized VI for the pose generator with ``dgm.amortize``.

The pose generator (thesis configuration, σ = 0.01: 140 latent inputs, 76 image coordinates
of two cameras) is ``y = f(z) + σ n``, so ``AdditiveNoise`` gives its joint density and a
simulator, and one q(z | y) is trained by simulation (about 7 in 100,000 prior draws put a
joint behind a camera: those simulations fail and are left out). For the notebook's three
scenes (``scene_inputs``: the true inputs, so the true 3-D joints are known) it reports the
experiment's metric, the RMSE over the 76 homogeneous joint coordinates of the posterior mean
against the truth, for q's draws as they are and importance-weighted, with the weights' Kish
ESS and Pareto k; then the same for q refined on each scene (``Amortized.refine``). Compare
with ``dgm run pose`` (constrained HMC) and the thesis's final constrained-HMC RMSE (0.0158
and 0.0198 on scenes 1 and 2, after about 450 s). JSON lines.

    DGM_DATA_DIR=../shared/data python benchmarks/amortized_pose.py --steps 5000
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import dgm
from dgm.data.pose import pose_generator
from dgm.inference.additive_noise import AdditiveNoise
from dgm.models.pose import scene_inputs

NUM_LATENT, NUM_OBS = 140, 76


def _scores(post, gen, y, truth, key, num_samples: int) -> dict:
    idata = post.sample(key, y, num_samples=num_samples)
    z = jnp.asarray(idata.posterior["z"].values.reshape(-1, NUM_LATENT))
    log_w = idata.sample_stats["log_weight"].values.reshape(-1)
    w = np.exp(log_w - log_w.max())
    joints = np.asarray(jax.vmap(gen.joint_positions)(z))
    rmse = lambda mean: float(np.sqrt(np.mean((mean - truth) ** 2)))  # noqa: E731
    return {
        "rmse_q_mean": rmse(joints.mean(axis=0)),
        "rmse_weighted": rmse(np.tensordot(w / w.sum(), joints, axes=1)),
        "ess_importance": idata.posterior.attrs["ess_importance"],
        "pareto_k": idata.posterior.attrs["pareto_k"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5000, help="training steps of q")
    parser.add_argument("--refine-steps", type=int, default=1000, help="per scene")
    parser.add_argument("--samples", type=int, default=4000, help="draws of q per scene")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    gen = pose_generator("thesis")
    noise = AdditiveNoise(gen.noise_free, NUM_LATENT, NUM_OBS, float(gen.sigma))
    key_train, key_scenes = jax.random.split(jax.random.key(args.seed))
    t0 = time.perf_counter()
    q = dgm.amortize(noise.log_joint, noise.simulate, NUM_LATENT, key=key_train,
                     num_steps=args.steps)  # fmt: skip
    print(json.dumps({"row": "train", "steps": args.steps, "status": q.status,
                      "message": q.message, "total_s": time.perf_counter() - t0,
                      "wall_s": q.wall_s, "compile_s": q.compile_s}), flush=True)  # fmt: skip
    u = jnp.asarray(scene_inputs(), jnp.float32)
    for scene in range(u.shape[0]):
        y = gen(u[scene])
        truth = np.asarray(gen.joint_positions(u[scene, :NUM_LATENT]))
        key_refine, key_amortized, key_refined = jax.random.split(
            jax.random.fold_in(key_scenes, scene), 3
        )
        row = {"row": "scene", "scene": scene + 1, "method": "amortized"}
        row |= _scores(q, gen, y, truth, key_amortized, args.samples)
        print(json.dumps(row), flush=True)
        t0 = time.perf_counter()
        refined = q.refine(key_refine, y, num_steps=args.refine_steps)
        row = {"row": "scene", "scene": scene + 1, "method": "refined"}
        row |= {"refine_s": time.perf_counter() - t0, "refine_compile_s": refined.compile_s}
        row |= _scores(refined, gen, y, truth, key_refined, args.samples)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
