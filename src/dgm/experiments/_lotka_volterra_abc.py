"""The ABC baselines of the Lotka–Volterra experiment, at the paper's settings (spec §5).

Every method samples the same generator that constrained HMC conditions. Method names
are ``<sampler>_<kernel>_<epsilon>`` (``rejection`` alone); the experiment reports each
under the metrics key ``abc_<name>``. Chains start where the paper's notebook started
all its samplers: ``u_z = 0.1·N(0, I) − 4`` with the noise inputs in closed form, so
``G(u) = y_obs`` and the start lies inside every ε-ball (the uniform kernel needs that).
PMMH is the exception: its noise is a fresh N(0, I) draw, because the pseudo-marginal
estimate at the start must be a draw of the estimator, not an exact fit (an exact fit is
an overestimate the chain would stick on).

Methods that share a sampler and kernel share one compiled chain runner: ε, the
random-walk scale and the step size are traced, so ``slice_uniform_100`` and
``slice_uniform_10`` compile once.
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from dgm.config import check_positive
from dgm.inference import abc
from dgm.inference.base import ChainRunner
from dgm.models.lotka_volterra import NUM_PARAMS, LotkaVolterra


class ABCMethod(NamedTuple):
    """One baseline setting from spec §5."""

    sampler: str  # "slice" | "pmmh" | "hmc" | "rejection"
    kernel: str  # "uniform" | "gaussian"
    epsilon: float
    scale: float = 0.0  # PMMH random-walk scale on u_z
    step_size: float = 0.0  # ABC-HMC leapfrog step


# Spec §5, Lotka–Volterra baselines (notebook settings; ESS figures in spec §7.1).
ABC_METHODS: dict[str, ABCMethod] = {
    "slice_uniform_100": ABCMethod("slice", "uniform", 100.0),
    "slice_uniform_10": ABCMethod("slice", "uniform", 10.0),
    "slice_gaussian_100": ABCMethod("slice", "gaussian", 100.0),
    "slice_gaussian_10": ABCMethod("slice", "gaussian", 10.0),
    "slice_gaussian_1": ABCMethod("slice", "gaussian", 1.0),
    "pmmh_uniform_1000": ABCMethod("pmmh", "uniform", 1000.0, scale=0.2),
    "pmmh_uniform_100": ABCMethod("pmmh", "uniform", 100.0, scale=0.001),
    "pmmh_gaussian_100": ABCMethod("pmmh", "gaussian", 100.0, scale=0.2),
    "pmmh_gaussian_10": ABCMethod("pmmh", "gaussian", 10.0, scale=0.001),
    "hmc_100": ABCMethod("hmc", "gaussian", 100.0, step_size=0.025),
    "hmc_10": ABCMethod("hmc", "gaussian", 10.0, step_size=0.0025),
    "hmc_1": ABCMethod("hmc", "gaussian", 1.0, step_size=0.00025),
    # Squared distance < 1000, i.e. Euclidean distance < √1000 ≈ 31.6.
    "rejection": ABCMethod("rejection", "uniform", float(np.sqrt(1000.0))),
}
# The thesis ESS figure's ABC methods, one PMMH setting that moves, and rejection.
DEFAULT_METHODS = (
    "slice_uniform_100",
    "slice_uniform_10",
    "slice_gaussian_10",
    "hmc_10",
    "pmmh_uniform_1000",
    "pmmh_gaussian_100",
    "rejection",
)


@dataclasses.dataclass(frozen=True)
class ABCConfig:
    """ABC baselines to run and their budgets (defaults: the paper's, spec §5).

    ``methods`` selects from :data:`ABC_METHODS`; an empty tuple runs none.
    ``rejection_epsilon`` overrides the ε of ``rejection`` (``None``: the paper's √1000).
    ``pmmh_store_thin`` thins PMMH draws in ``posterior.nc`` and the checkpoints only;
    metrics use every draw.
    """

    methods: tuple[str, ...] = DEFAULT_METHODS
    num_chains: int = 10
    slice_uniform_num_samples: int = 10_000
    slice_gaussian_num_samples: int = 15_000
    slice_num_warmup: int = 1_000
    max_slice_iters: int = 100
    pmmh_num_samples: int = 200_000
    pmmh_num_warmup: int = 20_000
    pmmh_store_thin: int = 10
    hmc_num_samples: int = 2_000
    hmc_num_warmup: int = 200
    hmc_num_steps: tuple[int, int] = (10, 20)
    rejection_num_simulations: int = 1_000_000
    rejection_epsilon: float | None = None
    chunk_size: int = 1_000

    def __post_init__(self):
        unknown = [m for m in self.methods if m not in ABC_METHODS]
        if unknown:
            raise ValueError(
                f"`abc.methods` has unknown method(s) {unknown}; "
                f"expected names from {sorted(ABC_METHODS)}"
            )
        for name in (
            "num_chains",
            "slice_uniform_num_samples",
            "slice_gaussian_num_samples",
            "max_slice_iters",
            "pmmh_num_samples",
            "pmmh_store_thin",
            "hmc_num_samples",
            "rejection_num_simulations",
            "chunk_size",
        ):
            check_positive(f"abc.{name}", getattr(self, name), integer=True)
        for name in ("slice_num_warmup", "pmmh_num_warmup", "hmc_num_warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"`abc.{name}` must be a non-negative int; got {value!r}")
        lo, hi = self.hmc_num_steps
        if not (isinstance(lo, int) and isinstance(hi, int) and 1 <= lo <= hi):
            raise ValueError(
                f"`abc.hmc_num_steps` must be (low, high) ints with 1 <= low <= high; "
                f"got {self.hmc_num_steps!r}"
            )
        if self.rejection_epsilon is not None:
            check_positive("abc.rejection_epsilon", self.rejection_epsilon)


class ABCRun(NamedTuple):
    """What one baseline produced: log-rate draws ``(chains, draws, 4)`` and counters."""

    log_rates: np.ndarray  # every kept draw: the metrics use these
    stored: np.ndarray  # what goes into posterior.nc (thinned for PMMH)
    wall_s: float
    compile_s: float
    accept_rate: float
    extra: dict  # method-specific counters, simulations used among them
    attrs: dict  # settings, for the posterior.nc group


def start_points(model: LotkaVolterra, y_obs, key, num_chains: int) -> jax.Array:
    """The notebook's starts: ``u_z = 0.1·N(0, I) − 4``, noise with ``G(u) = y_obs``."""
    u_z = 0.1 * jax.random.normal(key, (num_chains, NUM_PARAMS), jnp.float64) - 4.0
    return jax.vmap(lambda z: model.input_on_manifold(z, y_obs))(u_z)


class ABCRunners:
    """Chain runners cached by (sampler, kernel, chunk), so methods differing only in
    traced values (ε, scale, step size) compile once."""

    def __init__(self, model: LotkaVolterra, y_obs, cfg: ABCConfig):
        self.model, self.y_obs, self.cfg = model, np.asarray(y_obs, np.float64), cfg
        self._runners: dict[tuple, ChainRunner] = {}
        # Compiled once per batch shape and shared by all methods.
        self.simulate = jax.jit(jax.vmap(model.generate))
        self.start_points = jax.jit(start_points, static_argnums=(0, 3))

    def runner(self, method: ABCMethod, chunk: int) -> ChainRunner:
        key = (method.sampler, method.kernel, chunk)
        if key not in self._runners:
            self._runners[key] = ChainRunner(
                self._kernel(method), lambda s: s.position[:NUM_PARAMS], chunk_size=chunk
            )
        return self._runners[key]

    def _kernel(self, method: ABCMethod):
        """The sampler's ``step(key, state, params)`` with ``y_obs`` and the kernel bound."""
        g, y = self.model.generate, jnp.asarray(self.y_obs)
        if method.sampler == "slice":
            return abc.build_slice_abc_kernel(g, y, method.kernel, self.cfg.max_slice_iters)
        if method.sampler == "pmmh":
            return abc.build_pmmh_kernel(g, y, method.kernel)
        return abc.build_abc_hmc_kernel(g, y)

    def params(self, method: ABCMethod):
        """The method's tunables (float64 arrays: traced, so ε and scales share a runner)."""
        eps = jnp.asarray(method.epsilon, jnp.float64)
        if method.sampler == "slice":
            return abc.SliceABCParams(eps)
        if method.sampler == "pmmh":
            return abc.PMMHParams(eps, jnp.asarray(method.scale, jnp.float64))
        lo, hi = self.cfg.hmc_num_steps
        return abc.ABCHMCParams(eps, jnp.asarray(method.step_size, jnp.float64), lo, hi)


def run_method(
    name: str,
    runners: ABCRunners,
    key,
    *,
    epsilon: float | None = None,
    progress=False,
    checkpoint=None,
) -> ABCRun:
    """Run the ABC baseline ``name`` (a key of :data:`ABC_METHODS`); float64 throughout.

    ``checkpoint``: ``.npz`` path for the chains (see :meth:`ChainRunner.run`): an
    interrupted run resumes from it with the same draws. Ctrl-C during sampling raises
    ``KeyboardInterrupt`` once the chunk in flight is saved.
    """
    with jax.enable_x64(True):
        return _run_method(name, runners, key, epsilon, progress, checkpoint)


def _run_method(name: str, runners: ABCRunners, key, epsilon, progress, checkpoint) -> ABCRun:
    method = ABC_METHODS[name]
    if method.sampler == "rejection":
        return _run_rejection(method, runners, key, epsilon)
    cfg, model, y_obs = runners.cfg, runners.model, jnp.asarray(runners.y_obs)
    num_samples, num_warmup = _budget(method, cfg)
    total = num_samples + num_warmup
    key_init, key_run = jax.random.split(key)
    states = _init_states(method, runners, cfg.num_chains, key_init, y_obs)
    runner = runners.runner(method, min(cfg.chunk_size, total))
    result = runner.run(
        jax.random.split(key_run, cfg.num_chains),
        states,
        runners.params(method),
        total,
        progress=progress,
        desc=f"abc_{name}",
        checkpoint=checkpoint,
    )
    if result.interrupted:  # the checkpoint holds the chains so far
        raise KeyboardInterrupt
    draws = np.asarray(result.draws)[:, num_warmup:] + model.prior_loc
    accept, extra = _counters(method, result.infos, num_warmup)
    thin = cfg.pmmh_store_thin if method.sampler == "pmmh" else 1
    attrs = {
        "sampler": method.sampler,
        "kernel": method.kernel,
        "epsilon": method.epsilon,
        "num_warmup": num_warmup,
        "thin": thin,
        "wall_s": result.wall_s,
        "compile_s": result.compile_s,
        **({"scale": method.scale} if method.sampler == "pmmh" else {}),
        **({"step_size": method.step_size} if method.sampler == "hmc" else {}),
    }
    return ABCRun(draws, draws[:, ::thin], result.wall_s, result.compile_s, accept, extra, attrs)


def _init_states(method: ABCMethod, runners: "ABCRunners", num_chains: int, key, y_obs):
    """Batched initial states (see the module doc for the starts).

    The slice and PMMH states are built from one compiled batch simulation, shared by
    all methods (their inits are ``log f(G(u))``, as in ``abc.*_init``).
    """
    model = runners.model
    key_start, key_noise = jax.random.split(key)
    u0 = runners.start_points(model, y_obs, key_start, num_chains)
    if method.sampler == "hmc":
        init = jax.jit(
            jax.vmap(lambda u: abc.abc_hmc_init(u, model.generate, y_obs, method.epsilon))
        )
        return init(u0)
    if method.sampler == "pmmh":
        fresh = jax.random.normal(key_noise, (num_chains, model.input_dim - NUM_PARAMS), u0.dtype)
        u0 = jnp.concatenate([u0[:, :NUM_PARAMS], fresh], axis=1)
    y0 = runners.simulate(u0)
    log_k = jax.vmap(lambda y: abc.log_abc_kernel(y, y_obs, method.epsilon, method.kernel))(y0)
    return abc.SplitABCState(u0[:, :NUM_PARAMS], u0[:, NUM_PARAMS:], log_k)


def _budget(method: ABCMethod, cfg: ABCConfig) -> tuple[int, int]:
    if method.sampler == "slice":
        n = cfg.slice_uniform_num_samples
        if method.kernel == "gaussian":
            n = cfg.slice_gaussian_num_samples
        return n, cfg.slice_num_warmup
    if method.sampler == "pmmh":
        return cfg.pmmh_num_samples, cfg.pmmh_num_warmup
    return cfg.hmc_num_samples, cfg.hmc_num_warmup


def _counters(method: ABCMethod, infos, num_warmup: int) -> tuple[float, dict]:
    """Acceptance over the kept iterations, and counters over the whole run."""
    sims = int(np.sum(infos.num_simulations))
    extra: dict = {"n_simulations": sims, "n_iterations": int(infos.num_simulations.size)}
    if method.sampler == "slice":
        # A slice update always moves unless it fails; "accept" is the θ update's success.
        accept = float(np.mean(infos.params_moved[:, num_warmup:]))
        extra["n_noise_update_failures"] = int(np.sum(infos.noise_failed))
        extra["n_param_update_failures"] = int(np.sum(infos.params_failed))
    else:
        accept = float(np.mean(infos.is_accepted[:, num_warmup:]))
    if method.sampler == "hmc":
        extra["n_divergent"] = int(np.sum(infos.is_divergent))
    return accept, extra


def _run_rejection(method: ABCMethod, runners: ABCRunners, key, epsilon) -> ABCRun:
    cfg, model = runners.cfg, runners.model
    eps = method.epsilon if epsilon is None else float(epsilon)
    res = abc.rejection_abc(
        key,
        model.generate,
        runners.y_obs,
        eps,
        input_dim=model.input_dim,
        num_params=NUM_PARAMS,
        num_simulations=cfg.rejection_num_simulations,
    )
    draws = (np.asarray(res.params) + model.prior_loc)[None]  # one chain of iid draws
    extra = {"n_simulations": res.num_simulations, "n_accepted": res.num_accepted}
    attrs = {
        "sampler": "rejection",
        "kernel": "uniform",
        "epsilon": eps,
        "num_simulations": res.num_simulations,
        "wall_s": res.wall_s,
        "compile_s": res.compile_s,
    }
    return ABCRun(draws, draws, res.wall_s, res.compile_s, res.accept_rate, extra, attrs)
