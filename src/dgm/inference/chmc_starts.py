"""Starting points of constrained HMC chains on a conditioned generator's manifold.

:class:`StartingPoints` is the part of :class:`dgm.conditioning.ConditionedGenerator`
that finds and checks chains' starts: a model's closed form, else a Gauss–Newton solve
from a prior draw; every start checked to lie on the manifold, with a Jacobian of full
row rank there.

References:
    Graham & Storkey (2017), "Asymptotically exact inference in differentiable generative
    models", AISTATS, §3.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from dgm.config import all_finite, num_positional

# A given start this close to the manifold (max |generator(u) − y_obs|), but not within the
# projection tolerance, is moved onto it: a start computed in float32 misses by about 1e-7.
NEAR_MANIFOLD = 1e-4


class StartingPoints:
    """Mixin: needs ``system``, ``input_dim``, ``output_dim``, ``y_obs``, ``init_fn`` (and
    ``_batched_init``, None until first used), the compiled ``_residuals``, ``_ranks`` and
    ``_newton`` (:func:`~dgm.inference.chmc_driver.compiled_helpers`) and
    ``_typical_starts`` (a :class:`~dgm.inference.starts.TypicalStarts`)."""

    def initial_points(self, key, num_chains: int, tol: float = 1e-8, y_obs=None) -> jax.Array:
        """Starting points on the manifold ``generator(u) = y_obs``, one per chain.

        With a model ``init_fn`` (a closed form: ``init_fn(key)`` for the conditioned
        ``y_obs``, or ``init_fn(key, y_obs)`` for any), it is used; otherwise
        :func:`~dgm.inference.starts.typical_starts`: four prior draws per chain, each
        projected onto the manifold by Gauss–Newton and moved uphill on its log density,
        the chains starting among the candidates within a few nats of the best one (never
        in a mode far below it). Raises ``ValueError`` with the rank found if the
        generator's Jacobian at a prior draw has rank below the number of outputs, and
        ``RuntimeError`` with the worst residual if some start is not on the manifold to
        within ``tol``.
        """
        with jax.enable_x64(True):
            y = self.y_obs if y_obs is None else jnp.asarray(y_obs, jnp.float64)
            return self._initial_points(jnp.stack([key]), num_chains, tol, y[None])

    def _initial_points(self, obs_keys, num_chains: int, tol: float, ys) -> jax.Array:
        """:meth:`initial_points` of every observation (rows of ``ys``, one key each), the
        chains of observation ``i`` in rows ``i·num_chains …``, all in one batched solve."""
        u, closed_form = self._candidate_points(obs_keys, num_chains, tol, ys)
        y_rows = chain_rows(ys, num_chains)
        if not closed_form and not np.all(np.asarray(self._residuals(u, y_rows)) <= tol):
            keys = _chain_keys(obs_keys, num_chains)
            normal = lambda k: jax.random.normal(k, (self.input_dim,), jnp.float64)  # noqa: E731
            self._check_rank(jax.vmap(normal)(keys), "a prior draw")
        return self._check_init(jnp.asarray(u, jnp.float64), tol, "initial points", y_rows)

    def _candidate_points(self, obs_keys, num_chains: int, tol: float, ys):
        """``(starts, closed_form)``, unchecked: the model's ``init_fn`` for these
        observations if it serves them, else the typical-set starts
        (:mod:`dgm.inference.starts`), every observation in one call; rows ``i·num_chains …``
        belong to observation ``i``."""
        init_fn = self._init_fn_for(ys)
        if init_fn is not None:
            return init_fn(_chain_keys(obs_keys, num_chains), chain_rows(ys, num_chains)), True
        u = self._typical_starts.many(ys, obs_keys, num_chains, tol)
        return u.reshape(-1, self.input_dim), False

    def _init_fn_for(self, ys):
        """The closed-form starts for observations ``ys``, batched and compiled (``(keys,
        y_rows) -> u``, one row per chain), or None (Gauss–Newton): a one-argument
        ``init_fn`` serves the conditioned ``y_obs`` only."""
        if self.init_fn is None:
            return None
        takes_y = num_positional(self.init_fn) >= 2
        if not (takes_y or np.all(np.asarray(ys) == np.asarray(self.y_obs))):
            return None
        if self._batched_init is None:
            one = self.init_fn if takes_y else (lambda k, y: self.init_fn(k))
            self._batched_init = jax.jit(jax.vmap(one))
        return self._batched_init

    def _check_rank(self, u, where: str) -> None:
        """``ValueError`` naming the rank if J(u) has rank below N at some row of ``u``."""
        ranks = np.asarray(self._ranks(u))
        if np.any(ranks < self.output_dim):
            i = int(np.argmin(ranks))
            raise ValueError(
                f"the generator's Jacobian at {where} (chain {i}) has rank {int(ranks[i])} < "
                f"{self.output_dim} outputs: the manifold generator(u) = y_obs is not "
                "regular there (are some outputs functions of the others?)"
            )

    def _check_init(self, u, tol, what, y_rows):
        """``u`` unless it is not on the manifold of each row's observation (or J(u) is
        rank-deficient there): then a ``ValueError`` or ``RuntimeError`` naming ``what``."""
        if u.ndim != 2 or u.shape[1] != self.input_dim:
            raise ValueError(
                f"`init` must have shape (num_chains, {self.input_dim}); got {tuple(u.shape)}"
            )
        if not all_finite(u):
            raise ValueError(f"{what} contain NaN or inf")
        res = np.asarray(self._residuals(u, y_rows))
        if not np.all(res <= tol):
            raise RuntimeError(
                f"{what} are not on the manifold: max |generator(u) - y_obs| = "
                f"{float(np.max(res)):.3g} > tol = {tol:g}"
            )
        self._check_rank(u, what)
        return u

    def _starts(self, obs_keys, num_chains: int, init, tol: float, ys, batched: bool):
        """Checked float64 starting points of every observation's chains, stacked:
        ``init`` (``(num_chains, M)``, or ``(num_obs, num_chains, M)`` for a batch), or
        :meth:`initial_points`."""
        if init is None:
            return self._initial_points(obs_keys, num_chains, tol, ys)
        u0 = jnp.asarray(init, jnp.float64)
        if batched:
            shape = (ys.shape[0], num_chains, self.input_dim)
            if u0.shape != shape:
                raise ValueError(f"`init` must have shape {shape} with a batch of observations; "
                                 f"got {tuple(u0.shape)}")  # fmt: skip
            u0 = u0.reshape(-1, self.input_dim)
        elif u0.ndim == 2 and u0.shape[1] == self.input_dim and u0.shape[0] != num_chains:
            raise ValueError(f"`init` must have {num_chains} rows (num_chains); got {u0.shape[0]}")
        y_rows = chain_rows(ys, num_chains)
        return self._check_init(self._polished(u0, tol, y_rows), tol, "`init`", y_rows)

    def _polished(self, u, tol, y_rows):
        """``u`` with the rows that lie within ``NEAR_MANIFOLD`` of the manifold but not within
        ``tol`` (e.g. computed in float32) moved onto it by Gauss–Newton; others as given."""
        if u.ndim != 2 or u.shape[1] != self.input_dim or not all_finite(u):
            return u  # _check_init names the problem
        res = np.asarray(self._residuals(u, y_rows))
        near = (res > tol) & (res <= NEAR_MANIFOLD)
        if not np.any(near):
            return u
        return jnp.where(near[:, None], self._newton(u, y_rows, 0.01 * tol, 20), u)


@functools.partial(jax.jit, static_argnums=1)
def _chain_keys(obs_keys, num_chains: int):
    """``num_chains`` keys per observation key, stacked (typed keys or raw uint32 pairs)."""
    keys = jax.vmap(lambda k: jax.random.split(k, num_chains))(obs_keys)
    return keys.reshape(-1, *keys.shape[2:])


def chain_rows(ys, num_chains: int) -> np.ndarray:
    """Each observation (row of ``ys``) repeated for its ``num_chains`` chains, on the host
    (eager JAX would compile a program for it)."""
    return np.repeat(np.asarray(ys), num_chains, axis=0)
