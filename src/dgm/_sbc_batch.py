"""One compiled constrained-HMC run per observation shape, the observation traced (for SBC).

The transition of ``dgm.condition(...).sample(num_warmup=..., num_steps=(4, 8))``
(typical-set starts, a step-size search, dual averaging over the warm-up, fixed
``(4, 8)``-step trajectories, 3 geodesic sub-steps, the reversibility check; not the
dynamic trajectories that ``sample`` now uses by default), built inside one ``jit`` whose
argument is ``y``: every replication of :func:`dgm.sbc` reuses the compiled program.
``posterior.sample(..., y_obs=Y)`` now batches observations the same way; moving
:func:`dgm.sbc` onto it would retire this module.
Chains of one replication run under ``vmap`` (only for Gram factors without a LAPACK
Cholesky, see :class:`~dgm.inference.manifold.ManifoldSystem`), else ``lax.map``.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS; Hoffman & Gelman (2014) for the step-size adaptation.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from dgm.inference import adaptive_step, constrained_hmc
from dgm.inference.manifold import ManifoldSystem
from dgm.inference.starts import typical_starts


class BatchedConditioner:
    """``run(y, key) -> (draws (chains, samples, dim), acceptance, ok)``, compiled once.

    Args:
        generator, input_dim, output_dim: the generator ``u -> y`` and its sizes.
        system_kwargs: ``name -> (y -> value)`` for ``gram_factor_fn`` / ``half_log_det_fn``
            (or ``jacobian``) of :class:`ManifoldSystem`, built for each traced ``y``.
        num_chains, num_samples, num_warmup: chains and iterations per observation.
        step_size, target_accept, tol: as in ``posterior.sample``.
    """

    def __init__(
        self,
        generator: Callable,
        input_dim: int,
        output_dim: int,
        system_kwargs: dict,
        num_chains: int,
        num_samples: int,
        num_warmup: int,
        step_size: float = 0.25,
        target_accept: float = 0.8,
        tol: float = 1e-8,
    ):
        def system_for(y):
            kwargs = {name: fn(y) for name, fn in system_kwargs.items()}
            return ManifoldSystem(generator, input_dim, output_dim, **kwargs)

        probe = system_for(jnp.zeros(output_dim))
        use_vmap = not probe.uses_lapack_cholesky
        total = num_warmup + num_samples
        num_adapt, num_dual = adaptive_step.schedule(num_warmup)

        def one(y, key):
            system = system_for(y)
            key_start, key_search, key_run = jax.random.split(key, 3)
            u0, info = typical_starts(system, y, key_start, num_chains, tol=tol)
            residual = jax.vmap(lambda u: jnp.max(jnp.abs(system.constraint(u, y))))(u0)
            ok = (info.num_agreeing > 0) & jnp.all(residual <= tol)
            step = constrained_hmc.build_kernel(system, y, 3, tol, 100, True)
            params = adaptive_step.AdaptiveParams(
                constrained_hmc.CHMCParams(jnp.asarray(step_size, y.dtype), 4, 8),
                jnp.asarray(target_accept, y.dtype),
                jnp.asarray(num_adapt),
                jnp.asarray(num_dual),
            )
            search = adaptive_step.search_kernel(step)
            kernel = adaptive_step.adaptive_kernel(step)

            def chain(args):
                key_s, key_r, u = args
                state = adaptive_step.init(constrained_hmc.init(system, u), params.params.step_size)
                state, _ = search(key_s, state, params)

                def body(state, k):
                    state, info = kernel(k, state, params)
                    return state, (state.state.position, info.is_accepted)

                _, (draws, accepted) = jax.lax.scan(body, state, jax.random.split(key_r, total))
                return draws[num_warmup:], jnp.mean(accepted[num_warmup:])

            keys = (jax.random.split(key_search, num_chains), jax.random.split(key_run, num_chains))
            args = (*keys, u0)
            draws, accept = jax.vmap(chain)(args) if use_vmap else jax.lax.map(chain, args)
            return draws, jnp.mean(accept), ok

        self._run = jax.jit(one)
        self._run_devices = jax.pmap(one) if jax.local_device_count() > 1 else None

    def __call__(self, y, key) -> tuple[np.ndarray, float, bool]:
        with jax.enable_x64(True):
            draws, accept, ok = self._run(jnp.asarray(y, jnp.float64), key)
            return np.asarray(draws), float(accept), bool(ok)

    def many(self, ys, keys) -> list[tuple[np.ndarray, float, bool]]:
        """:meth:`__call__` for several observations, one per local device at a time
        (``pmap``; a single device runs them one after another)."""
        n = len(ys)
        num_devices = jax.local_device_count()
        if self._run_devices is None or n == 1:
            return [self(y, k) for y, k in zip(ys, keys, strict=True)]
        out = []
        with jax.enable_x64(True):
            for start in range(0, n, num_devices):
                idx = [min(i, n - 1) for i in range(start, start + num_devices)]  # pad
                y = jnp.asarray(np.stack([ys[i] for i in idx]), jnp.float64)
                draws, accept, ok = self._run_devices(y, jnp.stack([keys[i] for i in idx]))
                draws, accept, ok = np.asarray(draws), np.asarray(accept), np.asarray(ok)
                out += [(draws[j], float(accept[j]), bool(ok[j])) for j in range(len(idx))]
        return out[:n]
