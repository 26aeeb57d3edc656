"""One process of the two-process test (tests/test_distributed.py); not collected.

``python tests/_distributed_worker.py PORT PROCESS_ID OUT.npz``: joins a 2-process run on
127.0.0.1:PORT with one CPU device, runs :func:`sphere_chains` (constrained HMC on the
unit sphere, straight through ``ChainRunner``: no ArviZ import, one compilation) and
:func:`svgd_particles` (particles split over both processes), and on process 0 saves the
gathered draws and particles.
"""

import sys


def sphere_chains(chunk_size: int = 6):
    """Draws and acceptance flags of 4 constrained-HMC chains on the unit sphere in R³
    (12 iterations in chunks of ``chunk_size``: the gathering runs once per chunk)."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    from dgm.inference import constrained_hmc
    from dgm.inference.base import ChainRunner
    from dgm.inference.manifold import ManifoldSystem

    with jax.enable_x64(True):
        system = ManifoldSystem(lambda u: jnp.sqrt(u @ u)[None], 3, 1)
        kernel = constrained_hmc.constrained_hmc(
            system, jnp.ones(1), step_size=0.8, num_steps=(1, 3)
        )
        u0 = jax.random.normal(jax.random.key(4), (4, 3), jnp.float64)
        states = jax.vmap(kernel.init)(u0 / jnp.linalg.norm(u0, axis=1, keepdims=True))
        keys = jax.random.split(jax.random.key(5), 4)
        runner = ChainRunner(kernel.step, chunk_size=chunk_size, chain_map="map")
        result = runner.run(keys, states, kernel.params, 12)
    return np.asarray(result.draws), np.asarray(result.infos.is_accepted)


def svgd_particles():
    """The particles of 12 SVGD steps on N(1, I) in R², 6 particles split over every device
    of every process (:func:`dgm.inference.svgd.shard`)."""
    import jax
    import jax.numpy as jnp

    from dgm.inference import svgd

    x0 = jax.random.normal(jax.random.key(3), (6, 2))
    score = svgd.make_score_fn(log_density_fn=lambda x: -0.5 * jnp.sum((x - 1.0) ** 2))
    runner = svgd.SVGDRunner(svgd.build_step(score), chunk_size=6)
    return runner.run(svgd.shard(svgd.init(x0)), 12, step_size=0.1).particles


if __name__ == "__main__":
    import dgm

    dgm.set_host_device_count(1)

    import dgm.distributed

    port, process_id, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    dgm.distributed.initialize(f"127.0.0.1:{port}", 2, process_id, timeout_s=60)

    import jax
    import numpy as np

    assert jax.process_count() == 2 and len(jax.devices()) == 2
    draws, accepted = sphere_chains()
    particles = svgd_particles()
    if dgm.distributed.is_main_process():
        np.savez(out, draws=draws, accepted=accepted, particles=particles)
