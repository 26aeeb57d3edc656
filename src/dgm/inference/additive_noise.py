"""Generators with additive Gaussian output noise, ``y = f(z) + σ n``, as a constraint system.

With inputs ``u = [z | n]`` (k latent inputs, then one noise input per output, all
N(0, I)), the Jacobian is ``J = [J_f | σ I]`` and the Gram matrix ``J Jᵀ = J_f J_fᵀ + σ² I``.
When k < N every solve and the log-determinant go through the k×k *capacitance* matrix
``C = σ² I_k + J_fᵀ J_f`` (:class:`WoodburyGram`) instead of an N×N Cholesky:

* Woodbury: ``(σ² I + J_f J_fᵀ)⁻¹ r = σ⁻² (r − J_f C⁻¹ J_fᵀ r)``;
* determinant lemma: ``det(σ² I_N + J_f J_fᵀ) = σ^{2(N−k)} det C``, so
  ``½ log det(J Jᵀ) = (N − k) log σ + Σ log diag(chol C)``.

Building C costs O(N k²) and its Cholesky O(k³), against O(N² M + N³) for the dense Gram
factor. :class:`AdditiveNoise` bundles the generator, its structured Jacobian (k forward
passes through f, not M), the factor, the closed-form noise inputs that put any z on the
manifold, and the exact log density of z given y (the same model with the noise
marginalised: what latent-space HMC samples).

The gradient of ½ log det is the house one (:meth:`ManifoldSystem.potential_grad`): a VJP
of the Jacobian map with ``P = (J Jᵀ)⁻¹ J`` held fixed, through this module's solve, so
nothing is differentiated through a Cholesky; :meth:`AdditiveNoise.log_det_grad` forms
only P's k latent columns (the noise block σ I is constant) and takes the VJP of ``J_f``
alone.

References:
    Graham & Storkey (2017), §4 (MNIST in-painting and pose: ``J = [M | σ I]``, handled there
    by rank-1 Cholesky updates); Woodbury (1950); the matrix determinant lemma.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, PRNGKeyArray

from dgm.config import is_int, is_real
from dgm.inference.manifold import AbstractGramFactor, DenseCholesky


class WoodburyGram(AbstractGramFactor):
    """Gram factor of ``J = [J_f | σ I_N]`` through the capacitance ``C = σ² I_k + J_fᵀ J_f``.

    Exact for any k; cheaper than :class:`DenseCholesky` when k < N. Build it with
    :meth:`from_jacobian`.

    Example:
        >>> jac = jnp.concatenate([jnp.ones((5, 2)), 0.1 * jnp.eye(5)], axis=1)
        >>> WoodburyGram.from_jacobian(jac, 2, 0.1).solve(jnp.ones(5)).shape
        (5,)
    """

    jac_f: Float[Array, "obs latent"]
    sigma: Float[Array, ""]
    capacitance: DenseCholesky  # of σ² I + J_fᵀ J_f
    gain: Float[Array, "latent obs"]  # C⁻¹ J_fᵀ
    half_log_det_value: Float[Array, ""]

    @staticmethod
    def from_jacobian(
        jac: Float[Array, "obs dim"], latent_dim: int, sigma: float | Float[Array, ""]
    ) -> "WoodburyGram":
        """The factor of ``jac @ jac.T`` for ``jac = [J_f | σ I]`` (J_f: the first
        ``latent_dim`` columns; the noise block is not read)."""
        return WoodburyGram.from_latent_jacobian(jac[:, :latent_dim], sigma)

    @staticmethod
    def from_latent_jacobian(
        jac_f: Float[Array, "obs latent"], sigma: float | Float[Array, ""]
    ) -> "WoodburyGram":
        """The factor of ``J_f J_fᵀ + σ² I`` from ``J_f`` alone."""
        num_obs, latent_dim = jac_f.shape
        s = jnp.asarray(sigma, jac_f.dtype)
        eye = jnp.eye(latent_dim, dtype=jac_f.dtype)
        cap = DenseCholesky.from_gram(s**2 * eye + jac_f.T @ jac_f)
        # C⁻¹ J_fᵀ once per point (O(N k²)): every later solve is two k×N products, no
        # triangular solves (a projection solves once per Newton iteration)
        gain = cap.solve(jac_f.T)
        half_log_det = (num_obs - latent_dim) * jnp.log(s) + cap.half_log_det()
        return WoodburyGram(jac_f, s, cap, gain, half_log_det)

    def solve(self, rhs: Float[Array, "obs ..."]) -> Float[Array, "obs ..."]:
        """(σ² I + J_f J_fᵀ)⁻¹ rhs = σ⁻² (rhs − J_f C⁻¹ J_fᵀ rhs)."""
        return (rhs - self.jac_f @ (self.gain @ rhs)) / self.sigma**2

    def solve_latent_jacobian(self) -> Float[Array, "obs latent"]:
        """(J Jᵀ)⁻¹ J_f = J_f C⁻¹ (push-through identity): the latent columns of
        P = (J Jᵀ)⁻¹ J, the cotangent of J_f in ∇ ½ log det(J Jᵀ), at no cost."""
        return self.gain.T

    def half_log_det(self) -> Float[Array, ""]:
        return self.half_log_det_value


class AdditiveNoise:
    """``y = f(z) + σ n`` with ``u = [z | n] ~ N(0, I_{k+N})``: the pieces a sampler needs.

    Args:
        f: the noise-free generator, ``z (latent_dim,) -> (output_dim,)``.
        latent_dim: k, the number of inputs of ``f``.
        output_dim: N, the number of outputs (and of noise inputs).
        sigma: σ > 0, the noise scale.
        jacobian: how ``J_f`` is formed: ``"fwd"`` (k JVPs), ``"rev"`` (N VJPs),
            ``"auto"`` (forward unless k > 2N), or a function ``z -> J_f(z)`` (N × k) that
            knows the structure of ``f`` (e.g. the pose generator's closed-form
            :meth:`~dgm.models.pose.PoseGenerator.noise_free_jacobian`); it must be
            differentiable, since ∇ ½ log det(J Jᵀ) is one reverse pass through it.
        gram: ``"woodbury"`` (:class:`WoodburyGram`), ``"dense"``
            (:class:`DenseCholesky` of J Jᵀ) or ``"auto"``: Woodbury when k < N.

    Raises:
        ValueError: for a non-positive size or σ, or an unknown ``jacobian``/``gram``.

    Example:
        >>> noise = AdditiveNoise(lambda z: jnp.tanh(z) @ jnp.ones((2, 6)), 2, 6, 0.1)
        >>> noise.gram, noise.input_dim
        ('woodbury', 8)
    """

    def __init__(
        self,
        f: Callable,
        latent_dim: int,
        output_dim: int,
        sigma: float,
        jacobian: str | Callable = "auto",
        gram: str = "auto",
    ):
        for name, value in (("latent_dim", latent_dim), ("output_dim", output_dim)):
            if not is_int(value) or value < 1:
                raise ValueError(f"`{name}` must be a positive int; got {value!r}")
        if not (is_real(sigma) and np.isfinite(sigma) and sigma > 0):
            raise ValueError(f"`sigma` must be a positive number; got {sigma!r}")
        if not callable(jacobian) and jacobian not in ("auto", "fwd", "rev"):
            raise ValueError(
                f"`jacobian` must be 'auto', 'fwd', 'rev' or a function z -> J_f; got {jacobian!r}"
            )
        if gram not in ("auto", "woodbury", "dense"):
            raise ValueError(f"`gram` must be 'auto', 'woodbury' or 'dense'; got {gram!r}")
        if jacobian == "auto":
            jacobian = "rev" if latent_dim > 2 * output_dim else "fwd"
        self.f = f
        self.latent_dim, self.output_dim = int(latent_dim), int(output_dim)
        self.input_dim = self.latent_dim + self.output_dim
        self.sigma = float(sigma)
        self.gram = ("woodbury" if latent_dim < output_dim else "dense") if gram == "auto" else gram
        if callable(jacobian):
            self.jacobian_mode, self._jac_f = "custom", jacobian
        else:
            self.jacobian_mode = jacobian
            self._jac_f = jax.jacfwd(f) if jacobian == "fwd" else _jacrev_fwd_second_order(f)

    def generator(self, u: Float[Array, " dim"]) -> Float[Array, " obs"]:
        """``f(u[:k]) + σ u[k:]``."""
        return self.f(u[: self.latent_dim]) + self.sigma * u[self.latent_dim :]

    def jacobian(self, u: Float[Array, " dim"]) -> Float[Array, "obs dim"]:
        """``[J_f(z) | σ I]`` (J_f from k forward or N reverse passes through f)."""
        jac_f = self._jac_f(u[: self.latent_dim])
        noise = self.sigma * jnp.eye(self.output_dim, dtype=jac_f.dtype)
        return jnp.concatenate([jac_f, noise], axis=1)

    def gram_factor(self, u: Float[Array, " dim"], jac: Float[Array, "obs dim"]):
        """The Gram factor chosen by ``gram`` (a ``gram_factor_fn`` for ManifoldSystem)."""
        if self.gram == "woodbury":
            return WoodburyGram.from_jacobian(jac, self.latent_dim, self.sigma)
        return DenseCholesky.from_jacobian(jac)

    def log_det_grad(
        self, u: Float[Array, " dim"], jac: Float[Array, "obs dim"], factor
    ) -> Float[Array, " dim"]:
        """∇_u ½ log det(J Jᵀ) = [vjp(J_f)(P_f) | 0] with P_f = (J Jᵀ)⁻¹ J_f held fixed.

        The same quantity as :meth:`ManifoldSystem.potential_grad`'s ``"vjp"`` term (a
        ``log_det_grad_fn`` for it) without its wasted work: the N noise columns of J are
        the constant σ I, so their columns of P = (J Jᵀ)⁻¹ J (N more right-hand sides in the
        solve) only ever meet a zero derivative. For the pose model (k = 140, N = 76) the
        solve has 140 right-hand sides instead of 216.
        """
        k = self.latent_dim
        p_f = factor.solve(jac[:, :k])
        grad_z = jax.vjp(self._jac_f, u[:k])[1](p_f)[0]
        return jnp.concatenate([grad_z, jnp.zeros(self.output_dim, grad_z.dtype)])

    def input_on_manifold(
        self, z: Float[Array, " latent"], y: Float[Array, " obs"]
    ) -> Float[Array, " dim"]:
        """``[z | (y − f(z)) / σ]``: the inputs that reproduce ``y`` exactly (up to rounding)."""
        return jnp.concatenate([z, (y - self.f(z)) / self.sigma])

    def latent_log_density(
        self, z: Float[Array, " latent"], y: Float[Array, " obs"]
    ) -> Float[Array, ""]:
        """log p(z | y) up to a constant: ``−½‖z‖² − ½‖y − f(z)‖² / σ²`` (the noise
        inputs integrated out; exact, so HMC on it samples the same z-marginal)."""
        r = y - self.f(z)
        return -0.5 * jnp.dot(z, z) - 0.5 * jnp.dot(r, r) / self.sigma**2

    def log_joint(self, z: Float[Array, " latent"], y: Float[Array, " obs"]) -> Float[Array, ""]:
        """``log p(z, y) = log N(z; 0, I) + log N(y; f(z), σ² I)``, constants included
        (``dgm.amortize``'s ``log_joint_fn``; its log evidence is then ``log p(y)``)."""
        r = y - self.f(z)
        const = 0.5 * self.input_dim * np.log(2 * np.pi) + self.output_dim * np.log(self.sigma)
        return -0.5 * jnp.dot(z, z) - 0.5 * jnp.dot(r, r) / self.sigma**2 - const

    def simulate(self, key: PRNGKeyArray) -> Float[Array, " obs"]:
        """One ``y = f(z) + σ n`` with ``z``, ``n`` standard normal (``dgm.amortize``'s
        ``simulate_fn``)."""
        key_z, key_n = jax.random.split(key)
        z = jax.random.normal(key_z, (self.latent_dim,))
        return self.f(z) + self.sigma * jax.random.normal(key_n, (self.output_dim,))


def _jacrev_fwd_second_order(f: Callable) -> Callable:
    """``jax.jacrev(f)`` (N reverse passes) whose own VJP runs forward mode inside.

    The VJP of the Jacobian map with cotangent Q (N×k) is ∇_z Σᵢ ⟨Qᵢ, ∂fᵢ/∂z⟩
    = ∇_z Σᵢ [J_f(z) Qᵢ]ᵢ: the gradient of N JVPs (reverse over forward) instead of
    differentiating the N VJPs (reverse over reverse, what autodiff of ``jax.jacrev``
    does). ∇ ½ log det(J Jᵀ) takes this VJP once per step.
    """
    jac = jax.jacrev(f)

    @jax.custom_vjp
    def jac_f(z):
        return jac(z)

    def fwd(z):
        return jac(z), z

    def bwd(z, cot):
        def contracted(z):
            jq = jax.vmap(lambda q: jax.jvp(f, (z,), (q,))[1])(cot)  # row i: J_f Qᵢ
            return jnp.sum(jnp.diagonal(jq))

        return (jax.grad(contracted)(z),)

    jac_f.defvjp(fwd, bwd)
    return jac_f
