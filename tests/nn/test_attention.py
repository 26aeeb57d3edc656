"""DRAW's filterbank against a direct evaluation of the paper's formulas, and the reference
code's grid offset."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.nn import attention

pytestmark = pytest.mark.usefixtures("x64")

ROWS, COLS = 9, 11  # a non-square image: rows and columns must not be swapped


@functools.cache
def _jitted(n, grid="paper"):
    """One compiled filterbank per (N, grid): eager dispatch compiled each primitive."""
    return jax.jit(lambda p: attention.filterbank(p, n, ROWS, COLS, grid))


def _filterbank(p, n, grid="paper"):
    return _jitted(n, grid)(p)


def _params(g_x=5.3, g_y=4.1, delta=1.7, sigma2=0.8, gamma=1.3):
    return attention.AttentionParams(*(jnp.asarray(v, jnp.float64) for v in
                                       (g_x, g_y, delta, sigma2, gamma)))  # fmt: skip


def _paper_filters(centre, delta, sigma2, n, size):
    """The paper's formulas, 1-based: μ^i = g + (i − N/2 − 0.5)δ, i = 1..N; pixels a = 1..A."""
    f = np.zeros((n, size))
    for i in range(1, n + 1):
        mu = centre + (i - n / 2 - 0.5) * delta
        for a in range(1, size + 1):
            f[i - 1, a - 1] = math.exp(-((a - mu) ** 2) / (2 * sigma2))
        f[i - 1] /= f[i - 1].sum()
    return f


def _reference_filters(centre, delta, sigma2, n, size):
    """The reference TF code's filterbank (Python 3): i = 0..N−1 in the same expression,
    pixel coordinates 0..A−1, rows normalised by max(Σ, 1e-8)."""
    grid = np.arange(n, dtype=float)
    mu = centre + (grid - n / 2 - 0.5) * delta
    a = np.arange(size, dtype=float)
    f = np.exp(-((a[None, :] - mu[:, None]) ** 2) / (2 * sigma2))
    return f / np.maximum(f.sum(axis=1, keepdims=True), 1e-8)


@pytest.mark.parametrize("n", [1, 2, 5])
def test_filterbank_equals_the_paper_formulas(n):
    p = _params()
    f_y, f_x = _filterbank(p, n)
    assert f_y.shape == (n, ROWS) and f_x.shape == (n, COLS)
    np.testing.assert_allclose(f_x, _paper_filters(5.3, 1.7, 0.8, n, COLS), rtol=1e-12)
    np.testing.assert_allclose(f_y, _paper_filters(4.1, 1.7, 0.8, n, ROWS), rtol=1e-12)
    np.testing.assert_allclose(np.sum(f_x, axis=1), 1.0, rtol=1e-12)


def test_attention_params_follow_the_paper():
    raw = jnp.asarray([0.2, -0.4, math.log(0.5), math.log(1.5), math.log(2.0)])
    p = attention.attention_params(raw, 5, ROWS, COLS)
    np.testing.assert_allclose(p.g_x, (COLS + 1) / 2 * 1.2, rtol=1e-12)
    np.testing.assert_allclose(p.g_y, (ROWS + 1) / 2 * 0.6, rtol=1e-12)
    np.testing.assert_allclose(p.delta, (max(ROWS, COLS) - 1) / 4 * 1.5, rtol=1e-12)
    np.testing.assert_allclose([p.sigma2, p.gamma], [0.5, 2.0], rtol=1e-12)
    one = attention.attention_params(raw, 1, ROWS, COLS)  # N = 1: no division by zero
    assert np.isfinite(one.delta)


def test_centred_glimpse_of_a_symmetric_image_is_symmetric():
    rng = np.random.default_rng(0)
    half = rng.uniform(size=(ROWS, COLS))
    image = jnp.asarray(half + half[::-1, ::-1])  # symmetric under a 180° rotation
    raw = jnp.asarray([0.0, 0.0, math.log(0.7), math.log(0.6), 0.0])
    p = attention.attention_params(raw, 4, ROWS, COLS)
    glimpse = attention.read(image, *_filterbank(p, 4), p.gamma)
    np.testing.assert_allclose(glimpse, glimpse[::-1, ::-1], rtol=1e-12)
    ref = attention.read(image, *_filterbank(p, 4, "reference"), p.gamma)
    assert np.max(np.abs(ref - ref[::-1, ::-1])) > 1e-3  # the reference grid is off-centre


@pytest.mark.parametrize("n", [3, 5])
def test_reference_grid_reproduces_the_reference_code(n):
    p = _params()
    f_y, f_x = _filterbank(p, n, "reference")
    np.testing.assert_allclose(f_x, _reference_filters(5.3, 1.7, 0.8, n, COLS), rtol=1e-12)
    np.testing.assert_allclose(f_y, _reference_filters(4.1, 1.7, 0.8, n, ROWS), rtol=1e-12)
    # the offset: one stride up-left of the paper's grid, and the centre one pixel down-right
    shifted = _params(g_x=5.3 + 1 - 1.7, g_y=4.1 + 1 - 1.7)
    paper_y, paper_x = _filterbank(shifted, n)
    np.testing.assert_allclose(f_x, paper_x, rtol=1e-12)
    np.testing.assert_allclose(f_y, paper_y, rtol=1e-12)


def test_write_is_the_adjoint_of_read_up_to_gamma():
    """⟨write(w), x⟩ = ⟨w, read(x)⟩ / γ²: write spreads a patch with the transposed filters."""
    rng = np.random.default_rng(1)
    p = _params()
    f_y, f_x = _filterbank(p, 3)
    image, patch = jnp.asarray(rng.normal(size=(ROWS, COLS))), jnp.asarray(rng.normal(size=(3, 3)))
    lhs = jnp.sum(attention.write(patch, f_y, f_x, p.gamma) * image)
    rhs = jnp.sum(patch * attention.read(image, f_y, f_x, p.gamma)) / p.gamma**2
    np.testing.assert_allclose(lhs, rhs, rtol=1e-12)


@pytest.mark.parametrize("n", [0, 12, 2.0, True])
def test_glimpse_that_does_not_fit_is_refused(n):
    with pytest.raises(ValueError, match=r"`read_n` must be an int from 1 to 11"):
        attention.check_glimpse("read_n", n, ROWS, COLS)


def test_unknown_grid_is_refused():
    with pytest.raises(ValueError, match="`grid` must be one of"):
        attention.check_grid("tf")


@pytest.mark.parametrize(
    "grid, want", [("paper", (3.0, 2.0, 7.0, 6.0)), ("reference", (2.0, 1.0, 6.0, 5.0))]
)
def test_grid_extent_is_the_first_and_last_filter_centre_in_0_based_pixels(grid, want):
    """``grid_extent`` (the drawn glimpse window) against the filterbank itself: with narrow
    filters (σ² = 0.2) on pixel centres, the first and last rows' weighted mean 0-based pixel
    positions, and against the centres worked out by hand (paper: 1-based μ = g + (i − 1)δ,
    i = 0..2, less 1; reference: 0-based μ = g + (i − 2)δ). Planted bug this caught: the
    paper grid's 1-based shift dropped (every window drawn one pixel down and right)."""
    n, p = 3, _params(g_x=6.0, g_y=5.0, delta=2.0, sigma2=0.2)
    x0, y0, x1, y1 = (float(v) for v in attention.grid_extent(p, n, grid))
    assert (x0, y0, x1, y1) == pytest.approx(want, abs=1e-12)
    f_y, f_x = (np.asarray(f) for f in _filterbank(p, n, grid))
    centres = [f @ np.arange(f.shape[1]) for f in (f_x, f_y)]  # 0-based weighted means
    np.testing.assert_allclose([centres[0][0], centres[1][0], centres[0][-1], centres[1][-1]],
                               want, atol=1e-3)  # fmt: skip
