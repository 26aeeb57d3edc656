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
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dgm import _sigint
from dgm.config import all_finite, as_python_number, check_choice, is_int
from dgm.inference import adaptive_step, chain_checks, chmc_driver, constrained_hmc, dynamic_chmc
from dgm.inference.base import ChainResult, ChainRunner
from dgm.inference.chmc_driver import (
    STAT_NAMES,
    SamplerSettings,
    build_runner,
    chain_keys,
    check_sample_args,
    check_y_batch,
    compiled_helpers,
    observation_keys,
    resolve_trajectory,
    run_adaptive,
    run_attrs,
    run_fixed,
    split_obs,
    to_inference_data,
)
from dgm.inference.chmc_starts import StartingPoints, chain_rows
from dgm.inference.hmc import check_steps
from dgm.inference.manifold import ManifoldSystem

__all__ = [
    "STAT_NAMES",
    "ConditionedGenerator",
    "SamplerSettings",
    "condition",
    "to_inference_data",
]


class ConditionedGenerator(StartingPoints):
    """Inputs of ``generator`` conditioned on ``generator(u) == y_obs``; see :func:`condition`."""

    def __init__(
        self,
        generator,
        y_obs,
        input_dim,
        derived,
        jacobian,
        gram_factor_fn,
        init_fn,
        half_log_det_fn=None,
        log_det_grad_fn=None,
        dims=None,
    ):
        self.generator = generator
        self.dims = dict(dims or {})
        self.y_obs = y_obs
        self.input_dim = input_dim
        self.output_dim = int(y_obs.shape[0])
        self.derived = {
            name: jax.jit(jax.vmap(jax.vmap(fn))) for name, fn in (derived or {}).items()
        }
        self.init_fn = init_fn
        self._batched_init = None  # jax.jit(jax.vmap(init_fn)), made when first needed
        self.system = ManifoldSystem(
            generator,
            input_dim,
            self.output_dim,
            jacobian,
            gram_factor_fn,
            half_log_det_fn,
            log_det_grad_fn=log_det_grad_fn,
        )
        # generator and structure: a runner compiled for them serves any observation
        fns = (generator, jacobian, gram_factor_fn, half_log_det_fn, log_det_grad_fn)
        self._cache_key = (input_dim, self.output_dim, *map(_identity, fns))
        helpers = compiled_helpers(self.system, self._cache_key)
        self._init_states, self._residuals, self._ranks, self._newton = helpers[:4]
        self._typical_starts = helpers[4]

    def constraint_residual(self, u, y_obs=None) -> jax.Array:
        """max |generator(u) − y_obs| (by default the conditioned ``y_obs``)."""
        y = self.y_obs if y_obs is None else y_obs
        return jnp.max(jnp.abs(self.system.constraint(u, y)))

    @property
    def _runners(self) -> dict:
        """``{(settings, kind): ChainRunner}`` of this generator in the runner cache."""
        return {k[1:]: r for k, r in chmc_driver._RUNNERS.items() if k[0] == self._cache_key}

    def _runner(self, settings: SamplerSettings, kind: str = "fixed") -> ChainRunner:
        """One runner (and its compiled chunks) per structural setting and kind: ``"fixed"``
        (the given step size), ``"adaptive"`` (dual averaging during warm-up) or
        ``"search"`` (the initial step-size search, one iteration)."""
        return build_runner(self.system, settings, kind, self._cache_key)

    def sample(
        self,
        key: Any,
        num_chains: Any = 4,
        num_samples: Any = 1000,
        num_warmup: Any = 0,
        step_size: Any = 0.25,
        num_steps: Any = None,
        num_geodesic_steps: Any = 3,
        tol: Any = 1e-8,
        max_iters: Any = 100,
        check_reverse: Any = True,
        init: Any = None,
        chunk_size: Any = 50,
        chain_map: Any = "map",
        progress_bar: Any = True,
        checkpoint: Any = None,
        adapt: Any = True,
        target_accept: Any = 0.8,
        trajectory: Any = None,
        max_depth: Any = 10,
        y_obs: Any = None,
        check_chains: Any = True,
    ):
        """Run constrained HMC chains on the manifold ``generator(u) = y_obs``.

        Args:
            key: PRNG key; with a ``y_obs`` batch, also a stack of one key per observation
                (used as they are instead of ``split(key, num_obs)``).
            num_chains, num_samples: chains and kept draws per chain.
            num_warmup: draws discarded at the start of each chain; with ``adapt`` they
                adapt each chain's step size by dual averaging.
            step_size: integrator step ``dt`` (> 0); with adaptation, the starting point of
                the initial step-size search.
            num_steps: steps per fixed-length trajectory, a count or an inclusive ``(low,
                high)`` range (default ``(4, 8)``); giving it selects ``trajectory="fixed"``.
            num_geodesic_steps: position sub-steps per step (``N_g``).
            tol, max_iters: projection tolerance on outputs (∞-norm) and iteration cap.
            check_reverse: run the reversibility check on every sub-step.
            init: ``(num_chains, input_dim)`` starting points on the manifold; by default
                :meth:`initial_points`. A start within 1e-4 of it but not within ``tol``
                (e.g. computed in float32) is moved onto it by Gauss–Newton.
            chunk_size: iterations per compiled call (progress and checkpoint granularity).
            chain_map: how the chains of one device run. ``"map"`` (default): one after
                another, each at its own pace. ``"vmap"``: batched; every chain waits for
                the slowest one's loops (trajectory length, Newton iterations), but the
                linear algebra batches: with a structured Gram factor whose solves are
                cheap array operations (e.g. ``LotkaVolterra.gram_factor``) 8 chains on 2
                cores take 2.3–3.0× one chain's time on LV instead of 3.8×. Not with the dense
                LAPACK Gram Cholesky (a ``DenseCholesky`` of more than 4 rows): jaxlib
                0.10.2 hangs on it under ``vmap`` on several host devices, so that raises
                ``ValueError``. ``"auto"``: ``"vmap"`` with a structured factor (any Gram
                factor but ``DenseCholesky``), else ``"map"``.
            checkpoint: ``.npz`` path; written atomically after every chunk, and a run with
                the same path and ``key`` continues from it (same draws as an uninterrupted
                run; another ``key``'s checkpoint is refused).
            adapt: with ``num_warmup > 0``, adapt the step size of each chain during warm-up:
                an initial doubling/halving search (a failed step counts as too large), then
                dual averaging (a failed transition counts as acceptance 0), its average
                refined over the last quarter (:mod:`~dgm.inference.adaptive_step`).
                ``False`` keeps ``step_size`` fixed.
            target_accept: the mean acceptance probability the adaptation aims for, in (0, 1).
            trajectory: ``"dynamic"``: no-U-turn trajectories of up to ``2^max_depth − 1``
                steps, multinomial sampling along them (:mod:`dgm.inference.dynamic_chmc`);
                ``sample_stats`` gains ``tree_depth``. ``"fixed"``: ``num_steps`` steps per
                transition and a Metropolis step. ``None`` (default): ``"fixed"`` when
                ``num_steps`` is given, else ``"dynamic"`` (measured faster on
                Lotka–Volterra with ``num_warmup`` adapting the step size, see the README;
                without warm-up it runs at ``step_size`` as given).
            max_depth: the most tree doublings of a dynamic trajectory (an int ≥ 1).
            y_obs: another observation to condition on (default: the one given to
                :func:`condition`): a vector of the same size reuses the compiled sampler
                (the observation is a traced argument, and runners are cached per generator
                and settings); a ``(num_obs, N)`` batch runs all ``num_obs × num_chains``
                chains as one compiled job, sharded over the devices, observation ``i``
                with key ``jax.random.split(key, num_obs)[i]`` (its draws equal those of a
                separate call with that key and ``y_obs=y_obs[i]``); ``init`` is then
                ``(num_obs, num_chains, input_dim)``. The result gains an ``obs``
                dimension (``u`` is ``(chain, draw, obs, u_dim)``; ``observed_data.y`` is
                ``(obs, y_dim)``; the ``step_size`` attribute is the mean over all chains).
            check_chains: compare the chains after sampling
                (:func:`~dgm.inference.chain_checks.annotate`): R-hat and each chain's
                mean log density go into the attributes, and chains that disagree raise a
                :class:`~dgm.diagnostics.ChainDisagreementWarning`.

        Returns:
            ``arviz.InferenceData`` with ``posterior`` (``u`` and any derived quantities),
            ``sample_stats`` (acceptance, step sizes, step counts, projection failures,
            irreversible steps, divergences, constraint residuals, ``energy`` for
            ``az.bfmi`` and ``az.plot_energy``, ``lp``: each draw's log density on the
            manifold, −½ uᵀu − ½ log det J Jᵀ up to a constant) and run attributes
            (``wall_s``, ``compile_s``, ``n_steps_run``: the integrator steps of all
            iterations, warm-up's included, ``interrupted``, ``step_size``: the mean over chains
            of the adapted step sizes, or the given one; ``adapted``). Ctrl-C keeps the
            draws made so far (a message on stderr; ``interrupted`` = 1); before the first
            chunk it propagates.
        """
        trajectory, num_steps = resolve_trajectory(trajectory, num_steps)
        lo, hi = check_steps(num_steps)
        # Raw user input: annotated loosely and validated here, each error naming its
        # argument (a precise annotation's type check would pre-empt the messages).
        args = dict(locals())
        if not isinstance(check_chains, bool):
            raise ValueError(f"`check_chains` must be a bool; got {check_chains!r}")
        chain_map = check_sample_args(args, self.system)
        num_chains, num_samples, num_warmup, num_geodesic_steps, max_iters, chunk_size = map(
            as_python_number,
            (num_chains, num_samples, num_warmup, num_geodesic_steps, max_iters, chunk_size),
        )
        step_size, max_depth = as_python_number(step_size), as_python_number(max_depth)
        ys, batched = check_y_batch(y_obs, self.y_obs)
        same = np.asarray(ys, np.float64) == np.asarray(self.y_obs, np.float64)[None]
        if not (self.system.serves_any_observation or np.all(same)):
            raise ValueError(
                "`y_obs` differs from the conditioned observation, but `half_log_det_fn` takes "
                "only u (it is exact on the conditioned manifold only); give it as "
                "half_log_det_fn(u, y_obs) to sample other observations"
            )
        settings = SamplerSettings(
            num_geodesic_steps, float(tol), max_iters, check_reverse, chunk_size, chain_map,
            trajectory,
        )  # fmt: skip
        total = num_warmup + num_samples
        adapting = adapt and num_warmup > 0
        obs_keys = observation_keys(key, ys.shape[0], batched)
        key_init, keys_search, keys_chains = chain_keys(obs_keys, num_chains, adapting)
        with jax.enable_x64(True):
            u0 = self._starts(key_init, num_chains, init, tol, ys, batched)
            params = constrained_hmc.CHMCParams(
                jnp.asarray(step_size, jnp.float64), jnp.asarray(lo), jnp.asarray(hi)
            )
            if trajectory == "dynamic":
                params = dynamic_chmc.DCHMCParams(params.step_size, max_depth)
            run = dict(
                progress=progress_bar,
                desc="constrained HMC",
                accept_fn=lambda info: info.is_accepted,
                checkpoint=checkpoint,
            )
            runner = lambda kind: self._runner(settings, kind)  # noqa: E731
            y_chains = chain_rows(ys, num_chains)
            states = self._init_states(u0, y_chains)
            keys_chains = _flat(keys_chains)
            if adapting:
                target = adaptive_step.check_target_accept(target_accept)
                both = (_flat(keys_search), keys_chains)
                lengths = (num_warmup, total, target)
                result, step_sizes = run_adaptive(
                    runner, both, states, params, y_chains, lengths, run
                )
            else:
                result, step_sizes = run_fixed(
                    runner, keys_chains, states, params, y_chains, total, run
                )
        if result.interrupted:
            _sigint.note(
                f"interrupted after {result.num_done} of {total} iterations; keeping the "
                "draws so far"
            )
        attrs = run_attrs(args, lo, hi, step_sizes, adapting)
        obs = (ys if batched else ys[0], num_chains if batched else None)
        idata = self._inference_data(result, num_warmup, total, settings, attrs, step_sizes, obs)
        if check_chains:
            chain_checks.annotate(idata, batched)
        info = self._typical_starts.last_info
        if init is None and self.init_fn is None and info is not None:  # typical-set starts
            idata.posterior.attrs["start_candidates"] = int(info.log_density.shape[-1])
            agreeing = np.min(np.asarray(info.num_agreeing))
            idata.posterior.attrs["start_candidates_agreeing"] = int(agreeing)
        return idata

    def _inference_data(
        self, result: ChainResult, num_warmup, total, settings, attrs: dict, step_sizes, obs
    ):
        """The kept draws (warm-up dropped) of ``result`` as ArviZ ``InferenceData``;
        ``obs`` is ``(y, num_chains)`` for a batch of observations, else ``(y, None)``."""
        keep = slice(min(num_warmup, result.num_done), min(result.num_done, total))
        (draws, lp), infos = jax.tree.map(lambda x: x[:, keep], (result.draws, result.infos))
        # wall_s timed warm-up too; sample_stats' n_steps counts the kept draws' steps only
        n_steps_run = int(np.sum(np.asarray(result.infos.num_steps)[:, : keep.stop]))
        step_size = np.broadcast_to(np.asarray(step_sizes)[:, None], draws.shape[:2])
        with jax.enable_x64(True):
            derived = {name: np.asarray(fn(draws)) for name, fn in self.derived.items()}
        y, num_chains = obs
        if num_chains is not None:  # (obs × chains, draws, ...) -> (chains, draws, obs, ...)
            draws, derived, infos, step_size, lp = split_obs(
                (draws, derived, infos, step_size, lp), num_chains
            )
        attrs = {
            "sampler": "constrained_hmc",
            **attrs,
            **dataclasses.asdict(settings),
            "check_reverse": int(settings.check_reverse),
            "wall_s": result.wall_s,
            "compile_s": result.compile_s,
            "n_steps_run": n_steps_run,
            "interrupted": int(result.num_done < total),
        }
        extra = {"step_size": step_size, "lp": lp}
        return to_inference_data({"u": draws, **derived}, infos, y, attrs, extra, self.dims)


def condition(
    generator: Any,
    y_obs: Any,
    input_dim: Any,
    *,
    derived: Any = None,
    dims: Any = None,
    jacobian: Any = "auto",
    gram_factor_fn: Any = None,
    init_fn: Any = None,
    half_log_det_fn: Any = None,
) -> ConditionedGenerator:
    """Condition ``y = generator(u)``, ``u ~ N(0, I)``, on an observed ``y``.

    Args:
        generator: a JAX-differentiable function from an input vector of size
            ``input_dim`` to an output vector with as many entries as ``y_obs``. It must
            be pure: compiled samplers are shared by every ``condition`` of the same
            function object (a bound method: of the same object), so changing an attribute
            of a model object after conditioning one of its methods keeps the old compiled
            generator, as ``jax.jit`` would (rebuild the object, or use an immutable one
            such as an Equinox module).
        y_obs: the observed output (a vector).
        input_dim: M, the number of inputs (more than the number of outputs).
        derived: named functions of ``u`` recorded with the posterior draws.
        dims: optional names of a derived quantity's axes in the ArviZ output, as
            ``{"image": ["row", "column"]}`` (default ``image_dim_0``, ...; ``u``'s is
            ``u_dim``), so that groups written alongside can share them.
        jacobian: ``"auto"``, ``"fwd"`` or ``"rev"``.
        gram_factor_fn: optional ``(u, J) -> AbstractGramFactor`` of J Jᵀ exploiting the
            Jacobian's structure, such as :class:`~dgm.inference.manifold.TriangularBlockGram`
            (default: :class:`~dgm.inference.manifold.DenseCholesky`).
        init_fn: optional ``init_fn(key) -> u`` returning a point on the manifold.
        half_log_det_fn: optional ``u -> ½ log det(J Jᵀ)``, exact on the manifold ``generator(u)
            = y_obs`` (see :class:`~dgm.inference.manifold.ManifoldSystem`); it replaces the
            Gram log-det term and its second-order gradient. As ``(u, y_obs) -> …`` it
            serves any observation (``sample(..., y_obs=...)``); as ``u -> …`` only this one.

    Raises:
        ValueError: for a generator whose output shape does not match ``y_obs``, more
            outputs than inputs, a ``y_obs`` that is not a finite vector, an unknown
            ``jacobian``, or a function argument that is not callable.
        TypeError: for a ``gram_factor_fn`` that does not return an ``AbstractGramFactor``.

    Example:
        >>> import jax, jax.numpy as jnp, dgm
        >>> posterior = dgm.condition(lambda u: jnp.sum(u**2, keepdims=True), [1.0], 3)
        >>> idata = posterior.sample(jax.random.key(0), num_chains=2, num_samples=20,
        ...                          step_size=0.5, num_steps=(2, 4), progress_bar=False)
    """
    if not is_int(input_dim) or input_dim < 1:
        raise ValueError(f"`input_dim` must be a positive int; got {input_dim!r}")
    input_dim = int(input_dim)
    functions = {"generator": generator, "gram_factor_fn": gram_factor_fn, "init_fn": init_fn}
    functions |= {"half_log_det_fn": half_log_det_fn}
    for name, fn in functions.items():
        if (fn is not None or name == "generator") and not callable(fn):
            raise ValueError(f"`{name}` must be callable; got {type(fn).__name__}")
    check_choice("jacobian", jacobian, ("auto", "fwd", "rev"))
    dims = check_derived(derived, dims, input_dim)
    y = _check_y_obs(generator, y_obs, input_dim)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        posterior = ConditionedGenerator(
            generator,
            y,
            input_dim,
            derived,
            jacobian,
            gram_factor_fn,
            init_fn,
            half_log_det_fn,
            dims=dims,
        )
    posterior.system.factor_type()  # TypeError unless an AbstractGramFactor
    return posterior


def check_derived(derived: Any, dims: Any, input_dim: int) -> dict:
    """Check ``derived`` (name -> callable of ``u``) and ``dims`` (name -> one axis name per
    axis of that quantity); return ``dims`` as a dict of lists."""
    if derived is not None and not isinstance(derived, dict):
        raise ValueError(f"`derived` must be a dict of name -> function; got {derived!r}")
    derived = derived or {}
    for name, fn in derived.items():
        if not callable(fn):
            raise ValueError(f"`derived[{name!r}]` must be callable; got {type(fn).__name__}")
    if dims is None:
        return {}
    if not isinstance(dims, dict):
        raise ValueError(f"`dims` must be a dict of derived name -> axis names; got {dims!r}")
    out = {}
    for name, axes in dims.items():
        if name not in derived:
            raise ValueError(
                f"`dims` names {name!r}, which is not a derived quantity; `derived` has "
                f"{sorted(derived)}"
            )
        axes = [axes] if isinstance(axes, str) else axes
        if not isinstance(axes, list | tuple) or not all(isinstance(a, str) for a in axes):
            raise ValueError(f"`dims[{name!r}]` must be a list of axis names; got {axes!r}")
        with jax.enable_x64(True):
            u = jax.ShapeDtypeStruct((input_dim,), jnp.float64)
            shape = getattr(jax.eval_shape(derived[name], u), "shape", ())
        if len(axes) != len(shape):
            raise ValueError(
                f"`dims[{name!r}]` must name each of the {len(shape)} axes of "
                f"derived[{name!r}] (shape {tuple(shape)}); got {list(axes)}"
            )
        out[name] = list(axes)
    return out


def check_floating_output(name: str, arg: str, out: Any) -> None:
    """Refuse a function (``name`` of ``arg``) whose output (its ``eval_shape``) is not
    floating: its Jacobian would be all zeros."""
    if not jnp.issubdtype(out.dtype, jnp.floating):
        raise ValueError(
            f"`{name}` must return floating-point values (a differentiable function of {arg}); "
            f"got dtype {out.dtype}"
        )


def _check_y_obs(generator: Callable, y_obs: Any, input_dim: int) -> jax.Array:
    """``y_obs`` as a float64 vector that matches the generator's output."""
    with jax.enable_x64(True):
        y = jnp.asarray(y_obs, jnp.float64)
        if y.ndim != 1:
            raise ValueError(f"`y_obs` must be a vector; got shape {tuple(y.shape)}")
        if not all_finite(y):
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
    check_floating_output("generator", "u", out)
    if y.shape[0] >= input_dim:
        raise ValueError(
            f"the generator must have more inputs than outputs (the manifold g(u) = y has "
            f"dimension input_dim - outputs); got input_dim={input_dim} for {y.shape[0]} outputs"
        )
    return y


def _identity(x) -> Any:
    """A hashable stand-in for ``x`` that compares by identity (the runner cache holds ``x``
    alive, so its id stays unique); a bound method by its object and function."""
    if x is None or isinstance(x, str):
        return x
    if hasattr(x, "__self__") and hasattr(x, "__func__"):
        return ("method", id(x.__self__), id(x.__func__))
    return ("id", id(x))


def _flat(keys):
    """``(num_obs, num_chains)`` keys (typed, or raw ``uint32`` pairs) as one chains axis."""
    return keys.reshape(-1, *keys.shape[2:])
