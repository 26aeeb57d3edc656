"""Exact order statistics by counting passes: against NumPy, on ties, folds and blocks."""

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dgm.inference import svgd
from dgm.inference.svgd.kernel import _fold, _fold_extra_zeros
from dgm.inference.svgd.median import select_pair, select_pair_blocked, select_pair_folded

# the module, not the function `svgd.median` that shadows it on the package
median_module = importlib.import_module("dgm.inference.svgd.median")

pytestmark = pytest.mark.usefixtures("x64")  # float64 data, compared bit for bit


@pytest.mark.parametrize("m", [1, 2, 7, 64, 99, 100])
def test_exact_median_matches_numpy(m):
    x = np.round(np.random.default_rng(m).exponential(size=m), 1)  # ties included
    x[: m // 3] = 0.0
    assert float(jax.jit(svgd.median)(jnp.asarray(x))) == np.median(x)


@pytest.mark.parametrize("n", [2, 3, 200, 1000])
def test_exact_median_of_pairwise_distances(n):
    """The median trick's median over all n^2 entries (zeros, symmetric duplicates)."""
    x = np.random.default_rng(n).normal(size=(n, 2)) * np.array([0.3, 2.0])
    d = svgd.squared_distances(jnp.asarray(x))
    assert float(jax.jit(svgd.median)(d.reshape(-1))) == np.median(np.asarray(d))
    d32 = d.astype(jnp.float32)
    assert float(jax.jit(svgd.median)(d32.reshape(-1))) == np.median(np.asarray(d32))
    if n == 1000:  # speed guard, deterministic: plain bisection on the bits took 17
        _, _, passes = jax.jit(select_pair, static_argnums=1)(d.reshape(-1), n * n // 2)
        assert int(passes) <= 10
        # and on the fold, which the default "median" bandwidth counts over
        fold_select = jax.jit(select_pair_folded, static_argnums=(1, 2))
        _, _, passes = fold_select(_fold(d), _fold_extra_zeros(n), n * n // 2)
        assert int(passes) <= 10


@pytest.mark.parametrize("n", [2, 3, 4, 7, 10, 51, 1001])
@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
def test_folded_selection_equals_full(n, dtype, monkeypatch):
    """Order statistics of all n^2 distances from the folded upper triangle (odd and
    even n, ties, coinciding particles; float64 at 1001 particles takes the float32
    guess): the same values as sorting the whole matrix."""
    if n == 1001:
        monkeypatch.setattr(median_module, "_FOLDED_GUESS_MIN_SIZE", 2**18)

    def fold_select(d, k):
        return select_pair_folded(_fold(d), _fold_extra_zeros(d.shape[0]), k)[:2]

    fold_select = jax.jit(fold_select)
    m = n * n
    ks = [1, n, n + 1, (m + 1) // 2, m // 2 + 1, m]
    for case in ("distinct", "ties", "coinciding"):
        x = np.random.default_rng(n).normal(size=(n, 2))
        if case == "ties":
            x = np.round(x, 1)
        elif case == "coinciding":
            x[: n // 2] = x[0]
        d = svgd.squared_distances(jnp.asarray(x, dtype))
        srt = np.sort(np.asarray(d).reshape(-1))
        for k in ks if n > 10 else range(1, m + 1):
            a, b = fold_select(d, jnp.asarray(k, jnp.int32))
            assert (float(a), float(b)) == (srt[k - 1], srt[min(k, m - 1)]), (case, k)


def test_order_statistics_every_rank_with_ties():
    x = np.round(np.random.default_rng(3).exponential(size=40), 1)
    x[:7] = 0.0
    srt = np.sort(x)
    pair = jax.jit(select_pair)  # k traced: one compilation for every rank
    for k in range(1, 41):
        a, b, _ = pair(jnp.asarray(x), jnp.asarray(k))
        assert float(a) == srt[k - 1]
        assert float(b) == srt[min(k, 39)]
    same = jnp.full((9,), 2.5)
    assert float(svgd.median(same)) == 2.5
    # distinct values: the early stops (k is the bracket's last rank, or the bracket
    # holds exactly ranks k and k+1) give the same pair
    y = np.random.default_rng(4).exponential(size=33)
    srt = np.sort(y)
    for k in range(1, 34):
        a, b, _ = pair(jnp.asarray(y), jnp.asarray(k))
        assert (float(a), float(b)) == (srt[k - 1], srt[min(k, 32)])


@pytest.mark.parametrize("case", ["float32-ties", "beyond-float32", "zeros"])
def test_float64_selection_from_a_float32_guess_stays_exact(case, monkeypatch):
    """Large float64 inputs start from the k-th of their float32 rounding: values that
    float32 cannot tell apart, overflow it, or are zero must not change the result."""
    monkeypatch.setattr(median_module, "_GUESS_MIN_SIZE", 1000)
    rng = np.random.default_rng(5)
    m = 6001
    if case == "float32-ties":
        x = 1.0 + rng.permutation(m) * 1e-13  # all round to 1.0 in float32
    elif case == "beyond-float32":
        x = rng.exponential(size=m) * 1e39
    else:
        x = rng.exponential(size=m)
        x[: m // 2 + 10] = 0.0
    srt = np.sort(x)
    pair = jax.jit(select_pair)
    for k in (1, m // 2, m // 2 + 1, m // 2 + 11, m - 1, m):
        a, b, _ = pair(jnp.asarray(x), jnp.asarray(k))
        assert (float(a), float(b)) == (srt[k - 1], srt[min(k, m - 1)])
    assert float(jax.jit(svgd.median)(jnp.asarray(x))) == np.median(x)


def test_blocked_selection_skips_invalid_entries():
    """Values made block by block, padding marked invalid: the order statistics of the
    valid values alone (ties and zeros included)."""
    x = np.round(np.random.default_rng(6).exponential(size=(5, 8)), 1)
    x[0, :3] = 0.0
    valid = np.ones((5, 8), bool)
    valid[4, 5:] = False  # 37 valid values
    blocks = (jnp.asarray(np.where(valid, x, 99.0)), jnp.asarray(valid))
    srt = np.sort(x[valid])
    m = srt.size

    @jax.jit
    def pair(k):
        return select_pair_blocked(lambda b: b, blocks, jnp.asarray(x[:, 0]), m, k)[:2]

    for k in range(1, m + 1):
        a, b = pair(jnp.asarray(k))
        assert (float(a), float(b)) == (srt[k - 1], srt[min(k, m - 1)]), k
