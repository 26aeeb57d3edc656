"""One process of the two-process test (tests/test_distributed.py); not collected.

``python tests/_distributed_worker.py PORT PROCESS_ID OUT.npz``: joins a 2-process run on
127.0.0.1:PORT with one CPU device, samples the sphere's constrained posterior, and on
process 0 saves the draws and step sizes.
"""

import sys

import dgm

dgm.set_host_device_count(1)

import dgm.distributed  # noqa: E402

port, process_id, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
dgm.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=60)

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.test_distributed import SAMPLE_KWARGS, sphere  # noqa: E402

assert jax.process_count() == 2 and len(jax.devices()) == 2
idata = dgm.condition(sphere, [1.0], 3).sample(jax.random.key(5), **SAMPLE_KWARGS)
if dgm.distributed.is_main_process():
    np.savez(
        out,
        u=idata.posterior["u"].values,
        step_size=idata.sample_stats["step_size"].values,
    )
