"""``dgm.amortize``: train ``q(z | y)`` once, then condition on any observation in one pass.

Exact samplers (``dgm.condition``, ``dgm.sample``) pay for every new observation with a new
run. ``dgm.amortize(log_joint_fn, simulate_fn, latent_dim, key=...)`` instead trains an
:class:`~dgm.models.amortized.AmortizedPosterior` (an encoder and an inverse autoregressive
flow) on observations simulated from the model itself (:mod:`dgm.inference.vi`), after
which ``result.sample(key, y_obs)`` returns approximate posterior draws for any ``y_obs``
in milliseconds, as ArviZ data, with their importance weights ``p(z, y) / q(z | y)``, the
weights' effective sample size and their Pareto k̂ (Vehtari et al. 2024). With k̂ below
0.7 and a large effective sample size, weighted expectations are accurate; otherwise
``q``'s draws are places to start exact chains, not an answer. (k̂ is itself an estimate:
for nearly equal weights it scatters, e.g. 0.5-1.2 over three sets of 4,000 draws whose
effective sample size was 3,950.) ``result.refine(key, y_obs)`` fits a copy of ``q`` to one
observation (semi-amortized VI) when the amortized answer is not good enough.

Example:
    >>> import jax, jax.numpy as jnp, dgm
    >>> log_joint = lambda z, y: -0.5 * (z @ z + jnp.sum((y - z[0]) ** 2) / 0.25)
    >>> def simulate(key):  # z ~ N(0, 1), then three y ~ N(z, 0.5²)
    ...     key_z, key_y = jax.random.split(key)
    ...     return jax.random.normal(key_z) + 0.5 * jax.random.normal(key_y, (3,))
    >>> result = dgm.amortize(log_joint, simulate, 1, key=jax.random.key(0), num_steps=500)
    >>> idata = result.sample(jax.random.key(1), jnp.array([0.5, 1.0, 0.7]), num_samples=500)
    >>> idata.posterior["z"].shape
    (1, 500, 1)
"""

import dataclasses
import os
import time
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from dgm._types import check_key
from dgm.config import all_finite, check_positive
from dgm.inference import vi
from dgm.inference._compiled import ChunkOutcome, CompiledCache, run_chunks, skip_unless
from dgm.models import decoders
from dgm.models.amortized import AmortizedPosterior

KIND = "amortized-posterior"
# A step whose loss or new parameters are not finite is skipped; this many in a row stop
# training (optax's ``apply_if_finite`` rule).
MAX_NON_FINITE_IN_A_ROW = 10


@dataclasses.dataclass
class Amortized:
    """What :func:`amortize` returns: the trained ``q`` and how its training went.

    Attributes:
        q: the trained :class:`~dgm.models.amortized.AmortizedPosterior`.
        log_joint_fn: the model's ``log p(z, y)``.
        options: ``q``'s sizes (its constructor's arguments).
        losses: the negative ELBO of every step's batch (empty for a loaded ``q``; NaN or
            inf for a skipped step).
        num_steps: steps done, skipped ones included.
        status: ``"completed"``, ``"non-finite"`` (:data:`MAX_NON_FINITE_IN_A_ROW` steps in
            a row would have made ``q`` or its loss non-finite: a step that would is
            skipped, and so many in a row stop training) or ``"interrupted"``.
        message: one line saying how training ended.
        wall_s, compile_s: training time (compilation excluded) and compilation time.
    """

    q: AmortizedPosterior
    log_joint_fn: Callable
    options: dict
    losses: np.ndarray
    num_steps: int
    status: str = "completed"
    message: str = ""
    wall_s: float = 0.0
    compile_s: float = 0.0
    _refiners: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def save(self, path: str | os.PathLike) -> None:
        """Write ``q`` (atomically) with a header from which :func:`load` rebuilds it."""
        head = {"format": decoders.FORMAT, "kind": KIND, "options": self.options}
        head |= {"num_steps": self.num_steps, "status": self.status}
        head["final_loss"] = float(np.nanmean(self.losses[-100:])) if self.losses.size else None
        decoders.write_model(path, head, self.q)

    def sample(
        self,
        key: Any,
        y_obs: Any,
        num_samples: Any = 1000,
        var_name: Any = "z",
        resample: Any = False,
    ):
        """Draws of ``q(z | y_obs)`` with their importance weights, as ArviZ data.

        Args:
            key: a PRNG key.
            y_obs: one observation (a finite vector of the simulator's output size).
            num_samples: draws.
            var_name: the variable's name.
            resample: ``True``: the posterior group holds ``num_samples`` of q's draws
                drawn again with replacement in proportion to their (Pareto-smoothed)
                importance weights (sampling-importance-resampling), so unweighted
                summaries (``az.summary``, plots) estimate the posterior rather than q;
                only about ``ess_importance`` of them are distinct. ``False``: q's draws
                as they are (weigh them with ``log_weight``). q's draws, and every
                attribute, are the same either way.

        Returns:
            ``arviz.InferenceData``: ``posterior[var_name]`` ``(1, num_samples,
            latent_dim)``; ``sample_stats["log_weight"]`` (``log p(z, y) − log q(z | y)``
            of each draw kept);
            attributes ``sampler`` (``"amortized-vi"``), ``pareto_k`` (of the weights),
            ``ess_importance`` (Kish's effective sample size of the normalised weights),
            ``elbo`` (mean log weight) and ``log_evidence`` (the importance-sampling
            estimate of ``log p(y_obs)``, in the units of ``log_joint_fn``).
        """
        import arviz as az

        check_key(key)
        check_positive("num_samples", num_samples, integer=True)
        if not isinstance(resample, bool | np.bool_):
            raise ValueError(f"`resample` must be True or False; got {resample!r}")
        y = _check_y(y_obs, self.q.y_shift.shape[0])
        z, log_w = _draw(self.q, self.log_joint_fn, key, y, num_samples)
        z, log_w = np.asarray(z), np.asarray(log_w, np.float64)
        smoothed, pareto_k = az.psislw(log_w.copy())  # normalised log weights
        w = np.exp(log_w - log_w.max())
        attrs = {
            "sampler": "amortized-vi",
            "pareto_k": float(pareto_k),
            "ess_importance": float(w.sum() ** 2 / (w * w).sum()),
            "elbo": float(log_w.mean()),
            "log_evidence": float(np.log(w.mean()) + log_w.max()),
        }
        if resample:
            p = np.exp(smoothed - smoothed.max())
            pick = jax.random.choice(jax.random.fold_in(key, 1), z.shape[0], z.shape[:1], p=p)
            pick = np.asarray(pick)
            z, log_w = z[pick], log_w[pick]
        idata = az.from_dict(
            posterior={var_name: z[None]},
            sample_stats={"log_weight": log_w[None]},
            dims={var_name: [f"{var_name}_dim"]},
        )
        idata.posterior.attrs.update(attrs)
        return idata

    def refine(
        self,
        key: Any,
        y_obs: Any,
        num_steps: Any = 1000,
        batch_size: Any = 64,
        learning_rate: Any = 1e-3,
        chunk_size: Any = 250,
        progress_bar: Any = False,
    ) -> "Amortized":
        """A copy of ``q`` fitted to one observation (semi-amortized VI).

        Starting from the amortized ``q``, Adam (cosine-decayed learning rate) maximises the
        ELBO of ``y_obs`` alone, ``batch_size`` draws of ``q(· | y_obs)`` per step. The
        result answers ``y_obs`` better (check ``sample``'s effective sample size) but is no
        longer fitted to other observations: keep the original for those. Compiled once per
        setting: refining for another observation with the same settings compiles nothing.

        Raises:
            ValueError: for bad arguments (each message names the argument).
        """
        check_key(key)
        for name, value in (("num_steps", num_steps), ("batch_size", batch_size),
                            ("chunk_size", chunk_size)):  # fmt: skip
            check_positive(name, value, integer=True)
        check_positive("learning_rate", learning_rate)
        y = _check_y(y_obs, self.q.y_shift.shape[0])
        setting = (num_steps, batch_size, float(learning_rate), chunk_size)
        if setting not in self._refiners:
            optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
            observe = lambda key, data: jnp.broadcast_to(data, (batch_size, *data.shape))  # noqa: E731
            static = eqx.partition(self.q, eqx.is_array)[1]
            cache = _compiled_chunk(self.log_joint_fn, optimizer, observe, static)
            self._refiners[setting] = (optimizer, cache)
        optimizer, cache = self._refiners[setting]
        train = _Training(cache, self.q, optimizer, key, chunk_size, y)
        losses, done, message = train.run(num_steps, progress_bar, "refining q")
        return dataclasses.replace(
            self, q=train.q, losses=losses, num_steps=done, status=train.status,
            message=f"refined on one observation: {message}", wall_s=train.wall,
            compile_s=train.compile_s, _refiners={},
        )  # fmt: skip


def load(path: str | os.PathLike, log_joint_fn: Callable) -> Amortized:
    """An :class:`Amortized` written by :meth:`Amortized.save`, for the model whose
    ``log p(z, y)`` is ``log_joint_fn`` (not stored: it is code). Its ``losses`` are empty;
    ``num_steps`` and ``status`` come from the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not a dgm model file, a model of another kind, or a truncated or
            corrupt file.
    """
    build = lambda head: AmortizedPosterior(**head["options"], key=jax.random.key(0))  # noqa: E731
    q, head = decoders.read_model(path, KIND, build)
    return Amortized(
        q, log_joint_fn, head["options"], np.zeros(0), int(head.get("num_steps", 0)),
        head.get("status", ""), f"loaded from {path}",
    )  # fmt: skip


@eqx.filter_jit
def _draw(q, log_joint_fn, key, y, num_samples):
    keys = jax.random.split(key, num_samples)
    z, log_q = jax.vmap(lambda k: q.sample_and_log_prob(y, key=k))(keys)
    return z, jax.vmap(log_joint_fn, in_axes=(0, None))(z, y) - log_q


def amortize(
    log_joint_fn: Any,
    simulate_fn: Any,
    latent_dim: Any,
    *,
    key: Any,
    num_steps: Any = 3000,
    batch_size: Any = 64,
    learning_rate: Any = 1e-3,
    num_flows: Any = 2,
    hidden_size: Any = 64,
    context_size: Any = 16,
    chunk_size: Any = 250,
    progress_bar: Any = False,
) -> Amortized:
    """Train an amortized posterior ``q(z | y)`` of a model by simulation.

    Args:
        log_joint_fn: ``log p(z, y)`` up to a constant, for one latent vector ``z``
            (``latent_dim``) and one observation ``y``; JAX-differentiable in ``z``.
        simulate_fn: ``key -> y``: one observation simulated from the model (``z`` from its
            prior, then ``y`` given ``z``), a vector. A simulation that fails (NaN or inf
            anywhere in ``y``) is left out of the standardisation and of the training
            steps: q learns the model conditioned on its simulations succeeding.
        latent_dim: the size of ``z``.
        key: a PRNG key (initialisation, the standardisation sample, training).
        num_steps: Adam steps.
        batch_size: simulated observations per step (one draw of ``q`` each).
        learning_rate: Adam's learning rate.
        num_flows, hidden_size, context_size: the shape of ``q``
            (:class:`~dgm.models.amortized.AmortizedPosterior`).
        chunk_size: steps per compiled call.
        progress_bar: show a progress bar.

    Raises:
        ValueError: for bad arguments (each message names the argument), a simulator whose
            output is not a vector or that fails (NaN or inf) for all but one or none of
            1024 simulations, or a ``log_joint_fn`` that is not a scalar.
    """
    for name, fn in (("log_joint_fn", log_joint_fn), ("simulate_fn", simulate_fn)):
        if not callable(fn):
            raise ValueError(f"`{name}` must be callable; got {type(fn).__name__}")
    check_key(key)
    sizes = {"latent_dim": latent_dim, "num_steps": num_steps, "batch_size": batch_size}
    for name, value in (sizes | {"chunk_size": chunk_size}).items():
        check_positive(name, value, integer=True)
    if isinstance(num_flows, bool) or not isinstance(num_flows, int) or num_flows < 0:
        raise ValueError(f"`num_flows` must be an int >= 0; got {num_flows!r}")
    check_positive("learning_rate", learning_rate)
    key_init, key_stats, key_train = jax.random.split(key, 3)
    ys = _simulate_batch(simulate_fn, key_stats)
    scale = ys.std(axis=0)
    options = {"latent_dim": latent_dim, "obs_dim": int(ys.shape[1]), "hidden_size": hidden_size}
    options |= {"context_size": context_size, "num_flows": num_flows}
    q = AmortizedPosterior(
        **options,
        y_shift=jax.device_put(ys.mean(axis=0)),
        y_scale=jax.device_put(np.where(scale > 0, scale, 1).astype(ys.dtype)),
        key=key_init,
    )
    _check_log_joint(log_joint_fn, latent_dim, ys[0])
    optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps))
    observe = lambda key, data: vi.simulate_batch(simulate_fn, key, batch_size)  # noqa: E731
    cache = _compiled_chunk(log_joint_fn, optimizer, observe, eqx.partition(q, eqx.is_array)[1])
    train = _Training(cache, q, optimizer, key_train, chunk_size, jnp.zeros(()))
    losses, done, message = train.run(num_steps, progress_bar, "amortized VI")
    return Amortized(
        train.q, log_joint_fn, options, losses, done, train.status, message, train.wall,
        train.compile_s,
    )  # fmt: skip


def _simulate_batch(simulate_fn: Callable, key, num: int = 1024) -> np.ndarray:
    """The successful ones (every value finite) of ``num`` simulations (on the host)."""
    ys = np.asarray(jax.jit(vi.simulate_batch, static_argnums=(0, 2))(simulate_fn, key, num))
    if ys.ndim != 2:
        raise ValueError(
            f"`simulate_fn` must return one observation as a vector; got shape {ys.shape[1:]}"
        )
    ok = np.all(np.isfinite(ys), axis=1)
    if ok.sum() < 2:
        raise ValueError(
            f"`simulate_fn` returned NaN or inf for {num - ok.sum()} of {num} simulations; "
            "failed simulations are left out, but at least two must succeed"
        )
    return ys[ok]


def _check_log_joint(log_joint_fn: Callable, latent_dim: int, y: np.ndarray) -> None:
    z = jax.ShapeDtypeStruct((latent_dim,), y.dtype)
    out = jax.eval_shape(log_joint_fn, z, jax.ShapeDtypeStruct(y.shape, y.dtype))
    if not (hasattr(out, "shape") and out.shape == ()):
        got = f"shape {tuple(out.shape)}" if hasattr(out, "shape") else type(out).__name__
        raise ValueError(f"`log_joint_fn(z, y)` must return a scalar; got {got}")


def _check_y(y_obs: Any, obs_dim: int) -> jax.Array:
    y = jnp.asarray(y_obs)
    if y.shape != (obs_dim,):
        raise ValueError(f"`y_obs` must be a vector of length {obs_dim}; got shape {y.shape}")
    if not all_finite(y):
        raise ValueError("`y_obs` must be finite; it contains NaN or inf")
    return y.astype(jnp.result_type(float))


def _compiled_chunk(log_joint_fn, optimizer, observe, static) -> CompiledCache:
    """The compiled training chunk; ``observe(key, data) -> ys`` gives each step's batch."""
    step = vi.build_train_step(log_joint_fn, optimizer)
    return CompiledCache(jax.jit(_chunk_fn(step, static, observe)))


class _Training:
    """The state of one training run, advanced a compiled chunk at a time."""

    def __init__(self, cache, q, optimizer, key, chunk_size, data):
        self.params, self.static = eqx.partition(q, eqx.is_array)
        self.opt_state, self.key, self.data = vi.init(q, optimizer), key, data
        self.cache, self.chunk_size, self.losses = cache, chunk_size, []
        self.status, self.message = "completed", ""
        self.in_a_row, self.skipped = jnp.zeros((), jnp.int32), 0
        self.wall = self.compile_s = 0.0

    @property
    def q(self):
        return eqx.combine(self.params, self.static)

    def chunk(self, done: int, num_todo: int) -> ChunkOutcome:
        keys = jax.random.split(jax.random.fold_in(self.key, done), self.chunk_size)
        state = (self.params, self.opt_state, self.in_a_row)
        args = (state, keys, jnp.asarray(num_todo), self.data)
        exe, seconds = self.cache.get(args)
        self.compile_s += seconds
        t0 = time.perf_counter()
        state, losses, skipped, stop = jax.block_until_ready(exe(*args))
        self.params, self.opt_state, self.in_a_row = state
        self.wall += time.perf_counter() - t0
        losses, skipped, stop = np.asarray(losses), np.asarray(skipped), np.asarray(stop)
        if stop.any():
            last = int(np.argmax(stop))
            self.losses.append(losses[: last + 1])
            self.skipped += int(skipped[: last + 1].sum())
            self.status = "non-finite"
            self.message = (
                f"{MAX_NON_FINITE_IN_A_ROW} steps in a row had a non-finite loss or parameters "
                f"(the last, step {done + last + 1}); stopped and kept q after step "
                f"{done + last + 1 - MAX_NON_FINITE_IN_A_ROW}"
            )
            return ChunkOutcome(last + 1, stop=True)
        self.skipped += int(skipped[:num_todo].sum())
        self.losses.append(losses[:num_todo])
        return ChunkOutcome(num_todo, postfix={"loss": f"{losses[num_todo - 1]:.3f}"})

    def run(self, num_steps: int, progress: bool, desc: str) -> tuple[np.ndarray, int, str]:
        """Train; the losses, the steps done and a one-line message (status on ``self``)."""
        done, interrupted = run_chunks(num_steps, self.chunk_size, self.chunk, progress=progress,
                                       desc=desc)  # fmt: skip
        if interrupted:
            self.status, self.message = "interrupted", f"interrupted after {done} steps"
        losses = np.concatenate(self.losses) if self.losses else np.zeros(0)
        message = self.message or f"completed {done} steps"
        if self.skipped:
            message += f"; {self.skipped} non-finite steps skipped"
        return losses, done, message


def _chunk_fn(step: Callable, static: Any, observe: Callable) -> Callable:
    """``chunk((params, opt_state, in_a_row), keys, num_todo, data)``: a scan of steps on
    ``q``'s arrays (each step's batch ``observe(key, data)``). A step whose loss or new
    parameters are not finite is skipped (``in_a_row`` counts such steps in a row); the
    :data:`MAX_NON_FINITE_IN_A_ROW`-th in a row stops the chunk, and steps past ``num_todo``
    or after the stop leave the state as it was. Per step: the loss, whether it was skipped,
    whether training stopped there."""

    def chunk(state, keys, num_todo, data):
        def active_step(carry, key):
            params, opt_state, in_a_row, stopped = carry
            key_y, key_z = jax.random.split(key)
            ys = observe(key_y, data)
            new_q, new_opt, info = step(eqx.combine(params, static), opt_state, ys, key_z)
            new_params = eqx.filter(new_q, eqx.is_array)
            leaves_finite = [jnp.all(jnp.isfinite(p)) for p in jax.tree.leaves(new_params)]
            finite = jnp.isfinite(info.loss) & jnp.all(jnp.stack(leaves_finite))
            params, opt_state = jax.tree.map(
                lambda a, b: jnp.where(finite, a, b), (new_params, new_opt), (params, opt_state)
            )
            in_a_row = jnp.where(finite, 0, in_a_row + 1)
            stop = ~finite & (in_a_row >= MAX_NON_FINITE_IN_A_ROW)
            return (params, opt_state, in_a_row, stop), (info.loss, ~finite, stop)

        def body(carry, xs):
            key, i = xs
            active = ~carry[-1] & (i < num_todo)  # inactive steps cost a branch: no step
            return skip_unless(active, active_step, carry, key)

        params, opt_state, in_a_row = state
        init = (params, opt_state, in_a_row, jnp.zeros((), bool))
        steps = jnp.arange(keys.shape[0])
        (params, opt_state, in_a_row, _), outs = jax.lax.scan(body, init, (keys, steps))
        return (params, opt_state, in_a_row), *outs

    return chunk
