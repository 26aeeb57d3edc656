"""The exact posterior of a trained DMM's latent path (NUTS on ``dmm.log_joint``) against
its amortized q, on one JSB test sequence. Not a timing script.

Run:  DGM_DATA_DIR=../shared/data python benchmarks/dmm_exact_posterior.py RUN_DIR [INDEX]
(RUN_DIR: a ``dmm-polyphonic --dataset jsb`` run; INDEX: the test sequence, default 0)
"""

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

import dgm
from dgm import diagnostics
from dgm.data.polyphonic import load_polyphonic
from dgm.models import dmm, dmm_io


def main(run_dir: str, index: int = 0) -> dict:
    model, _ = dmm_io.load_run(run_dir)
    test = load_polyphonic("jsb")["test"]
    n = int(test.lengths[index])
    x, mask = jnp.asarray(test.x[index, :n]), jnp.ones(n)
    keys = jax.random.split(jax.random.key(1), 4000)
    q = np.asarray(jax.jit(jax.vmap(lambda k: dmm.sequence_terms(model, x, mask, k)["z"]))(keys))
    start = time.perf_counter()
    idata = dgm.sample(
        lambda p: dmm.log_joint(model, x, p["z"]),
        {"z": jnp.asarray(q[0])},
        key=jax.random.key(0),
        num_chains=4,
        num_warmup=500,
        num_samples=500,
    )
    total_s = time.perf_counter() - start
    z = idata.posterior["z"].values
    flat = z.reshape(-1, *z.shape[2:])
    ess = diagnostics.ess(z.reshape(*z.shape[:2], -1), "bulk")
    mean, sd = flat.mean(0), flat.std(0)
    log_joint = jax.jit(jax.vmap(lambda path: dmm.log_joint(model, x, path)))
    return {
        "steps": n,
        "dims": int(mean.size),
        "total_s": total_s,
        "sampling_s": float(idata.posterior.attrs["wall_s"]),
        "accept": float(idata.sample_stats["acceptance_rate"].mean()),
        "divergences": int(idata.sample_stats["diverging"].sum()),
        "ess_min": float(ess.min()),
        "ess_median": float(np.median(ess)),
        "q_mean_offset_in_sd_median": float(np.median(np.abs(q.mean(0) - mean) / sd)),
        "q_mean_offset_in_sd_max": float(np.max(np.abs(q.mean(0) - mean) / sd)),
        "q_sd_ratio_median": float(np.median(q.std(0) / sd)),
        "q_sd_ratio_5_95": [float(v) for v in np.percentile(q.std(0) / sd, [5, 95])],
        "log_joint_exact": float(log_joint(jnp.asarray(flat[::10])).mean()),
        "log_joint_q": float(log_joint(jnp.asarray(q[:500])).mean()),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run_dir", help="a dmm-polyphonic --dataset jsb run directory")
    parser.add_argument("index", type=int, nargs="?", default=0, help="test sequence (0)")
    args = parser.parse_args()
    print(json.dumps(main(args.run_dir, args.index)))
