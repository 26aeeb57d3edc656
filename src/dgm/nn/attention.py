"""DRAW's selective attention: a grid of N×N Gaussian filters over an image.

A linear layer of the decoder state gives five numbers ``(g̃_X, g̃_Y, log σ², log δ̃, log γ)``
(:func:`attention_params`); they place an N×N grid of isotropic Gaussian filters over a
B-row, A-column image (:func:`filterbank`): centre ``(g_X, g_Y)``, stride ``δ``, variance
``σ²``, intensity ``γ``. Reading extracts an N×N glimpse ``γ F_Y x F_Xᵀ`` (:func:`read`);
writing spreads an N×N patch back over the image, ``(1/γ) F_Yᵀ w F_X`` (:func:`write`).

Grid conventions (spec ``draw.md`` §3.2):

- ``"paper"`` (ours): pixel coordinates 1..A, grid offsets ``(i − (N−1)/2)·δ`` for
  i = 0..N−1 (the paper's ``i − N/2 − 0.5`` with i = 1..N). With g̃ = 0 the grid is centred on
  the image: a glimpse of a symmetric image is symmetric.
- ``"reference"``: the reference TensorFlow code (``ericjang/draw``): pixel coordinates
  0..A−1 with the paper's 1-based centre formula, and i = 0..N−1 in ``i − N/2 − 0.5``
  (Python 3 division): the grid sits one stride up-left of centre, and the centre one pixel
  right of and below the image centre. Kept only to compare with that code.

Rows are normalised by ``max(Σ_a F, 1e-8)`` in both conventions (the reference's guard, where
the paper divides by the sum itself). A row sums to less than 1e-8 when its Gaussian puts almost
no weight on any pixel centre: centred well outside the image, or so narrow that it falls
between pixels (σ² below about 0.0065 with the centre half-way between two). Such a row fades
towards zero instead of being renormalised onto the nearest pixel.

References:
    K. Gregor, I. Danihelka, A. Graves, D. J. Rezende, D. Wierstra, "DRAW: A Recurrent
    Neural Network For Image Generation", ICML 2015, §3.2.
"""

from typing import NamedTuple

import jax.numpy as jnp
from jaxtyping import Array, Float

GRIDS = ("paper", "reference")
_EPS = 1e-8


class AttentionParams(NamedTuple):
    """Grid centre ``(g_x, g_y)`` in pixel coordinates, stride ``delta``, filter variance
    ``sigma2`` and intensity ``gamma`` (all scalars, per example)."""

    g_x: Float[Array, ""]
    g_y: Float[Array, ""]
    delta: Float[Array, ""]
    sigma2: Float[Array, ""]
    gamma: Float[Array, ""]


def check_glimpse(name: str, n, height: int, width: int) -> None:
    """Refuse a glimpse size that does not fit the image.

    Raises:
        ValueError: ``n`` is not an int in [1, max(height, width)], naming ``name``.
    """
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= max(height, width):
        raise ValueError(
            f"`{name}` must be an int from 1 to {max(height, width)} (the glimpse is N×N "
            f"on a {height}×{width} image); got {n!r}"
        )


def check_grid(grid: str) -> None:
    """Raises ValueError unless ``grid`` is one of :data:`GRIDS`."""
    if grid not in GRIDS:
        raise ValueError(f"`grid` must be one of {list(GRIDS)}; got {grid!r}")


def attention_params(raw: Float[Array, " 5"], n: int, height: int, width: int) -> AttentionParams:
    """The paper's map from the five linear outputs to the grid parameters.

    ``g_X = (A+1)/2·(g̃_X+1)``, ``g_Y = (B+1)/2·(g̃_Y+1)``, ``δ = (max(A,B)−1)/(N−1)·δ̃``,
    ``σ² = exp(log σ²)``, ``δ̃ = exp(log δ̃)``, ``γ = exp(log γ)``. For N = 1 the stride is
    unused (one filter at the centre); the divisor is then taken as 1.
    """
    gx_t, gy_t, log_sigma2, log_delta_t, log_gamma = raw
    g_x = (width + 1) / 2 * (gx_t + 1)
    g_y = (height + 1) / 2 * (gy_t + 1)
    delta = (max(height, width) - 1) / max(n - 1, 1) * jnp.exp(log_delta_t)
    return AttentionParams(g_x, g_y, delta, jnp.exp(log_sigma2), jnp.exp(log_gamma))


def _axis_filters(centre, delta, sigma2, n: int, size: int, grid: str):
    """``F[i, a]`` for one axis: Gaussian weights of pixel ``a`` under filter ``i``."""
    i = jnp.arange(n, dtype=centre.dtype)
    if grid == "paper":
        mu = centre + (i - (n - 1) / 2) * delta
        coords = jnp.arange(1, size + 1, dtype=centre.dtype)
    else:
        mu = centre + (i - n / 2 - 0.5) * delta
        coords = jnp.arange(size, dtype=centre.dtype)
    weights = jnp.exp(-((coords[None, :] - mu[:, None]) ** 2) / (2 * sigma2))
    return weights / jnp.maximum(jnp.sum(weights, axis=1, keepdims=True), _EPS)


def filterbank(
    params: AttentionParams, n: int, height: int, width: int, grid: str = "paper"
) -> tuple[Float[Array, "n height"], Float[Array, "n width"]]:
    """The filterbank matrices ``(F_Y, F_X)``, each row normalised to sum to 1.

    Args:
        params: grid centre, stride, variance (intensity unused here).
        n: glimpse size N.
        height, width: image rows B and columns A.
        grid: ``"paper"`` or ``"reference"`` (see the module docstring).
    """
    f_y = _axis_filters(params.g_y, params.delta, params.sigma2, n, height, grid)
    f_x = _axis_filters(params.g_x, params.delta, params.sigma2, n, width, grid)
    return f_y, f_x


def read(
    image: Float[Array, "height width"],
    f_y: Float[Array, "n height"],
    f_x: Float[Array, "n width"],
    gamma: Float[Array, ""],
) -> Float[Array, "n n"]:
    """The N×N glimpse ``γ · F_Y x F_Xᵀ``."""
    return gamma * (f_y @ image @ f_x.T)


def write(
    patch: Float[Array, "n n"],
    f_y: Float[Array, "n height"],
    f_x: Float[Array, "n width"],
    gamma: Float[Array, ""],
) -> Float[Array, "height width"]:
    """The patch spread over the image, ``(1/γ) · F_Yᵀ w F_X``."""
    return (f_y.T @ patch @ f_x) / gamma


def grid_extent(params: AttentionParams, n: int, grid: str = "paper") -> tuple:
    """The first and last filter centres ``(x0, y0, x1, y1)`` in 0-based pixel coordinates
    (column, row): the window the glimpse covers, for drawing it over an image. Works on
    batched parameters, JAX or NumPy."""
    first, last = (-(n - 1) / 2, (n - 1) / 2) if grid == "paper" else (-n / 2 - 0.5, n / 2 - 1.5)
    shift = 1.0 if grid == "paper" else 0.0  # paper coordinates are 1-based
    x0, x1 = (params.g_x + k * params.delta - shift for k in (first, last))
    y0, y1 = (params.g_y + k * params.delta - shift for k in (first, last))
    return x0, y0, x1, y1
