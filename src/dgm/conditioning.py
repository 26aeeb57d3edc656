"""Condition a differentiable generator on its output and sample its inputs exactly.

``posterior = dgm.condition(generator, y_obs, input_dim=M)`` describes the distribution
of ``u ~ N(0, I_M)`` given ``generator(u) = y_obs``; ``posterior.sample(key, ...)`` runs
constrained HMC chains on that manifold (``lax.map`` over the chains of each device,
inside one compiled, chunked run) and returns ArviZ ``InferenceData``.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS.
"""

import dataclasses
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgm.config import check_choice, check_positive
from dgm.inference import constrained_hmc
from dgm.inference.base import ChainRunner
from dgm.inference.hmc import _check_steps
from dgm.inference.manifold import SMALL_GRAM, ManifoldSystem, gram_solve


@dataclasses.dataclass(frozen=True)
class SamplerSettings:
    """Structural settings of the constrained sampler (changing one recompiles)."""

    num_geodesic_steps: int = 3
    tol: float = 1e-8
    max_iters: int = 100
    check_reverse: bool = True
    chunk_size: int = 50
    chain_map: str = "map"


class ConditionedGenerator:
    """Inputs of ``generator`` conditioned on ``generator(u) == y_obs``; see :func:`condition`."""

    def __init__(
        self,
        generator,
        y_obs,
        input_dim,
        derived,
        jacobian,
        gram_cholesky_fn,
        init_fn,
        half_log_det_fn=None,
    ):
        self.generator = generator
        self.y_obs = y_obs
        self.input_dim = input_dim
        self.output_dim = int(y_obs.shape[0])
        self.derived = {
            name: jax.jit(jax.vmap(jax.vmap(fn))) for name, fn in (derived or {}).items()
        }
        self.init_fn = init_fn
        self.system = ManifoldSystem(
            generator, input_dim, self.output_dim, jacobian, gram_cholesky_fn, half_log_det_fn
        )
        self._runners: dict[SamplerSettings, ChainRunner] = {}
        self._init_states = jax.jit(jax.vmap(lambda u: constrained_hmc.init(self.system, u)))
        self._residuals = jax.jit(jax.vmap(self.constraint_residual))
        self._newton = jax.jit(
            jax.vmap(self._gauss_newton, in_axes=(0, None, None)), static_argnums=2
        )

    def constraint_residual(self, u) -> jax.Array:
        """max |generator(u) − y_obs|."""
        return jnp.max(jnp.abs(self.system.constraint(u, self.y_obs)))

    def _gauss_newton(self, u, tol, max_iters):
        """Minimum-norm Gauss–Newton with step halving on ‖c‖."""

        def cond(carry):
            i, _, res = carry
            return (i < max_iters) & (res > tol)

        def body(carry):
            i, u, res = carry
            jac, chol = self.system.cache(u)
            c = self.system.constraint(u, self.y_obs)
            delta = jac.T @ gram_solve(jac, chol, c)

            def shrink(state):
                alpha, _ = state
                return alpha * 0.5, self.constraint_residual(u - 0.5 * alpha * delta)

            def too_big(state):
                alpha, r = state
                return (alpha > 1e-6) & ~(r < res)

            alpha, r = jax.lax.while_loop(
                too_big, shrink, (jnp.asarray(1.0, u.dtype), self.constraint_residual(u - delta))
            )
            u_new = jnp.where(r < res, u - alpha * delta, u)
            return i + 1, u_new, jnp.minimum(r, res)

        _, u, res = jax.lax.while_loop(cond, body, (0, u, self.constraint_residual(u)))
        return u

    def initial_points(self, key, num_chains: int, tol: float = 1e-8) -> jax.Array:
        """Starting points on the manifold, one per chain.

        With a model ``init_fn(key) -> u`` (a closed form), it is used; otherwise a
        Gauss–Newton solve runs from a prior draw. Raises ``RuntimeError`` with the worst
        residual if some start is not on the manifold to within ``tol``.
        """
        keys = jax.random.split(key, num_chains)
        with jax.enable_x64(True):
            if self.init_fn is not None:
                u = jax.vmap(self.init_fn)(keys)
            else:
                u0 = jax.vmap(lambda k: jax.random.normal(k, (self.input_dim,), jnp.float64))(keys)
                u = self._newton(u0, tol * 1e-3, 100)
            return self._check_init(jnp.asarray(u, jnp.float64), tol, "initial points")

    def _check_init(self, u, tol, what):
        if u.ndim != 2 or u.shape[1] != self.input_dim:
            raise ValueError(
                f"`init` must have shape (num_chains, {self.input_dim}); got {tuple(u.shape)}"
            )
        if not bool(jnp.all(jnp.isfinite(u))):
            raise ValueError(f"{what} contain NaN or inf")
        res = np.asarray(self._residuals(u))
        if not np.all(res <= tol):
            raise RuntimeError(
                f"{what} are not on the manifold: max |generator(u) - y_obs| = "
                f"{float(np.max(res)):.3g} > tol = {tol:g}"
            )
        return u

    def _runner(self, settings: SamplerSettings) -> ChainRunner:
        if settings not in self._runners:
            kernel = constrained_hmc.build_kernel(
                self.system,
                settings.num_geodesic_steps,
                settings.tol,
                settings.max_iters,
                settings.check_reverse,
            )

            def step(key, state, params):
                return kernel(
                    key,
                    state,
                    params["y"],
                    params["step_size"],
                    params["num_min"],
                    params["num_max"],
                )

            self._runners[settings] = ChainRunner(
                step, chunk_size=settings.chunk_size, chain_map=settings.chain_map
            )
        return self._runners[settings]

    def sample(
        self,
        key,
        num_chains: int = 4,
        num_samples: int = 1000,
        num_warmup: int = 0,
        step_size: float = 0.25,
        num_steps: int | tuple[int, int] = (4, 8),
        num_geodesic_steps: int = 3,
        tol: float = 1e-8,
        max_iters: int = 100,
        check_reverse: bool = True,
        init: Any = None,
        chunk_size: int = 50,
        chain_map: str = "map",
        progress_bar: bool = True,
        checkpoint: str | Path | None = None,
    ):
        """Run constrained HMC chains on the manifold ``generator(u) = y_obs``.

        Args:
            key: PRNG key.
            num_chains, num_samples: chains and kept draws per chain.
            num_warmup: draws discarded at the start of each chain.
            step_size: integrator step ``dt`` (> 0).
            num_steps: steps per trajectory, fixed or an inclusive ``(low, high)`` range.
            num_geodesic_steps: position sub-steps per step (``N_g``).
            tol, max_iters: projection tolerance on outputs (∞-norm) and iteration cap.
            check_reverse: run the reversibility check on every sub-step.
            init: ``(num_chains, input_dim)`` starting points on the manifold; by default
                :meth:`initial_points`.
            chunk_size: iterations per compiled call (progress and checkpoint granularity).
            chain_map: how the chains of one device run. ``"map"`` (default): one after
                another, each at its own pace. ``"vmap"``: batched; every chain waits for
                the slowest one's loops (trajectory length, Newton iterations), but the
                linear algebra batches: with a structured Gram factor whose solves are
                cheap array operations (e.g. ``LotkaVolterra.gram_factor``) 8 chains on 2
                cores take 2.3–3.0× one chain's time on LV instead of 3.8×. Not with the dense
                LAPACK Gram Cholesky (more than 4 outputs and no structured factor):
                jaxlib 0.10.2 hangs on it under ``vmap`` on several host devices, so that
                raises ``ValueError``. ``"auto"``: ``"vmap"`` with a structured factor,
                else ``"map"``.
            checkpoint: ``.npz`` path; written atomically after every chunk, and a run with
                the same path continues from it (same draws as an uninterrupted run).

        Returns:
            ``arviz.InferenceData`` with ``posterior`` (``u`` and any derived quantities),
            ``sample_stats`` (acceptance, step counts, projection failures, irreversible
            steps, divergences, constraint residuals) and run attributes (``wall_s``,
            ``compile_s``).
        """
        lo, hi = _check_steps(num_steps)
        for name, value in (
            ("num_chains", num_chains),
            ("num_samples", num_samples),
            ("num_geodesic_steps", num_geodesic_steps),
            ("max_iters", max_iters),
            ("chunk_size", chunk_size),
        ):
            check_positive(name, value, integer=True)
        if not isinstance(num_warmup, int) or num_warmup < 0:
            raise ValueError(f"`num_warmup` must be a non-negative int; got {num_warmup!r}")
        for name, value in (("step_size", step_size), ("tol", tol)):
            if not (isinstance(value, int | float) and np.isfinite(value) and value > 0):
                raise ValueError(f"`{name}` must be a positive number; got {value!r}")
        check_choice("chain_map", chain_map, ("map", "vmap", "auto"))
        if chain_map == "auto":
            chain_map = "vmap" if self.system.structured_gram else "map"
        if chain_map == "vmap" and self.system.uses_lapack_cholesky:
            raise ValueError(
                "`chain_map` 'vmap' needs a structured Gram factor (a `gram_cholesky_fn` "
                f"whose factor has its own `solve`) when there are more than {SMALL_GRAM} "
                f"outputs (got {self.system.output_dim}): a dense LAPACK Cholesky hangs under "
                "vmap on several host devices in jaxlib 0.10.2; use 'map'"
            )
        settings = SamplerSettings(
            num_geodesic_steps, float(tol), max_iters, check_reverse, chunk_size, chain_map
        )
        key_init, key_chains = jax.random.split(key)
        with jax.enable_x64(True):
            if init is None:
                u0 = self.initial_points(key_init, num_chains, tol)
            else:
                u0 = self._check_init(jnp.asarray(init, jnp.float64), tol, "`init`")
                if u0.shape[0] != num_chains:
                    raise ValueError(
                        f"`init` must have {num_chains} rows (num_chains); got {u0.shape[0]}"
                    )
            return self._run(
                settings,
                key_chains,
                u0,
                num_warmup + num_samples,
                num_warmup,
                (step_size, lo, hi),
                progress_bar,
                checkpoint,
            )

    def _run(self, settings, key, u0, total, num_warmup, tunables, progress, checkpoint):
        step_size, lo, hi = tunables
        runner = self._runner(settings)
        keys = jax.random.split(key, u0.shape[0])
        params = {
            "y": self.y_obs,
            "step_size": jnp.asarray(step_size, jnp.float64),
            "num_min": jnp.asarray(lo),
            "num_max": jnp.asarray(hi),
        }
        start, previous = 0, None
        if checkpoint is not None and Path(checkpoint).exists():
            previous = _load_checkpoint(checkpoint, u0.shape)
            start, u0 = int(previous["num_done"]), jnp.asarray(previous["position"])
        states = self._init_states(u0)
        on_chunk = None
        if checkpoint is not None:

            def on_chunk(done, states, draws, infos):
                _save_checkpoint(checkpoint, done, states.position, previous, draws, infos)

        result = runner.run(
            keys,
            states,
            params,
            total - start,
            start=start,
            progress=progress,
            desc="constrained HMC",
            on_chunk=on_chunk,
            accept_fn=lambda info: info.is_accepted,
        )
        draws, infos = _merge_previous(previous, result.draws, result.infos)
        done = start + result.num_done
        if result.interrupted:
            print(
                f"interrupted after {done} of {total} iterations; keeping the draws so far",
                file=sys.stderr,
            )
        keep = slice(min(num_warmup, done), done)
        return self._to_inference_data(
            draws[:, keep],
            jax.tree.map(lambda x: x[:, keep], infos),
            result,
            settings,
            step_size,
            (lo, hi),
            done < total,
        )

    def _to_inference_data(self, draws, infos, result, settings, step_size, steps, interrupted):
        import arviz as az

        posterior = {"u": draws}
        for name, fn in self.derived.items():
            with jax.enable_x64(True):
                posterior[name] = np.asarray(fn(draws))
        stats = {
            "acceptance_rate": infos.accept_prob,
            "is_accepted": infos.is_accepted,
            "diverging": infos.is_divergent,
            "projection_failed": infos.projection_failed,
            "irreversible": infos.is_irreversible,
            "n_steps": infos.num_steps,
            "energy_error": infos.energy_error,
            "constraint_residual": infos.constraint_residual,
        }
        attrs = {
            "sampler": "constrained_hmc",
            "step_size": float(step_size),
            "num_steps_low": steps[0],
            "num_steps_high": steps[1],
            **dataclasses.asdict(settings),
            "check_reverse": int(settings.check_reverse),
            "wall_s": result.wall_s,
            "compile_s": result.compile_s,
            "interrupted": int(interrupted),
        }
        idata = az.from_dict(
            posterior=posterior,
            sample_stats=stats,
            observed_data={"y": np.asarray(self.y_obs)},
            dims={"u": ["u_dim"]},
        )
        for group in (idata.posterior, idata.sample_stats):
            group.attrs.update(attrs)
        return idata


def _save_checkpoint(path, done, position, previous, draws, infos):
    from dgm.runs import save_npz

    draws, infos = _merge_previous(previous, draws, infos)
    fields = {f"info_{k}": v for k, v in infos._asdict().items()}
    save_npz(path, num_done=done, position=np.asarray(position), draws=draws, **fields)


def _load_checkpoint(path, shape):
    from dgm.runs import load_npz

    data = load_npz(path)
    if data["position"].shape != tuple(shape):
        raise ValueError(
            f"checkpoint {path} holds chains of shape {data['position'].shape}; "
            f"this run has {tuple(shape)}"
        )
    return data


def _merge_previous(previous, draws, infos):
    if previous is None:
        return draws, infos
    old = constrained_hmc.CHMCInfo(
        **{k: previous[f"info_{k}"] for k in constrained_hmc.CHMCInfo._fields}
    )
    if draws is None:
        return previous["draws"], old
    return (
        np.concatenate([previous["draws"], draws], axis=1),
        jax.tree.map(lambda a, b: np.concatenate([a, b], axis=1), old, infos),
    )


def condition(
    generator: Callable,
    y_obs: Any,
    input_dim: int,
    *,
    derived: dict[str, Callable] | None = None,
    jacobian: str = "auto",
    gram_cholesky_fn: Callable | None = None,
    init_fn: Callable | None = None,
    half_log_det_fn: Callable | None = None,
) -> ConditionedGenerator:
    """Condition ``y = generator(u)``, ``u ~ N(0, I)``, on an observed ``y``.

    Args:
        generator: a JAX-differentiable function from an input vector of size
            ``input_dim`` to an output vector with as many entries as ``y_obs``.
        y_obs: the observed output (a vector).
        input_dim: M, the number of inputs (at least the number of outputs).
        derived: named functions of ``u`` recorded with the posterior draws.
        jacobian: ``"auto"``, ``"fwd"`` or ``"rev"``.
        gram_cholesky_fn: optional structured ``(u, J) -> chol(J Jᵀ)`` (lower), or a
            structured factor such as :class:`~dgm.inference.manifold.TriangularBlockGram`.
        init_fn: optional ``init_fn(key) -> u`` returning a point on the manifold.
        half_log_det_fn: optional ``u -> ½ log det(J Jᵀ)``, exact on the manifold ``generator(u)
            = y_obs`` (see :class:`~dgm.inference.manifold.ManifoldSystem`); it replaces the
            Gram log-det term and its second-order gradient.

    Raises:
        ValueError: for a generator whose output shape does not match ``y_obs``, more
            outputs than inputs, or a ``y_obs`` that is not a finite vector.

    Example:
        >>> import jax, jax.numpy as jnp, dgm
        >>> posterior = dgm.condition(lambda u: jnp.sum(u**2, keepdims=True), [1.0], 3)
        >>> idata = posterior.sample(jax.random.key(0), num_chains=2, num_samples=20,
        ...                          step_size=0.5, num_steps=(2, 4), progress_bar=False)
    """
    if not isinstance(input_dim, int) or isinstance(input_dim, bool) or input_dim < 1:
        raise ValueError(f"`input_dim` must be a positive int; got {input_dim!r}")
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        if y.ndim != 1:
            raise ValueError(f"`y_obs` must be a vector; got shape {tuple(y.shape)}")
        if not bool(jnp.all(jnp.isfinite(y))):
            raise ValueError("`y_obs` must be finite; it contains NaN or inf")
        try:
            out = jax.eval_shape(generator, jax.ShapeDtypeStruct((input_dim,), jnp.float64))
        except Exception as err:  # the user's function failed to trace
            raise ValueError(
                f"`generator` failed on an input of shape ({input_dim},): {err}"
            ) from err
    if not hasattr(out, "shape") or out.shape != y.shape:
        got = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`generator` must return a vector of shape {tuple(y.shape)} to match `y_obs`; "
            f"got {got}"
        )
    if y.shape[0] > input_dim:
        raise ValueError(
            f"the generator must have at least as many inputs as outputs; got input_dim="
            f"{input_dim} < {y.shape[0]} outputs"
        )
    for name, fn in (("init_fn", init_fn), ("half_log_det_fn", half_log_det_fn)):
        if fn is not None and not callable(fn):
            raise ValueError(f"`{name}` must be callable; got {type(fn).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return ConditionedGenerator(
            generator, y, input_dim, derived, jacobian, gram_cholesky_fn, init_fn, half_log_det_fn
        )
