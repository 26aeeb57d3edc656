"""Exact order statistics of non-negative floats by counting passes, not sorting.

``jnp.median`` and ``jnp.sort`` are very slow on XLA CPU (about 240 ms for the 10^6
squared distances of 1000 particles), and so are compaction (``nonzero``, scatter,
``top_k``: 8-400 ms). What XLA CPU does fast is one fused *variadic* reduction over
the array: about 0.2-0.3 ms for 10^6 values with up to 7 outputs (more outputs, or
reductions with several accumulators per element, get much slower).

So the k-th value is found by a bracket ``(lo, hi]`` on the integer view of the float
bits (monotone for non-negative floats), with ``#{x <= lo} < k <= #{x <= hi}``. Each
pass is one variadic reduction that counts the values below four thresholds and also
returns, for one interval ``(p, q]``, its smallest value, its largest, and the
smallest above it:

- the first pass takes its thresholds from quantiles of a small subsample (its bits
  sorted: an integer sort is 4x cheaper than a float sort on XLA CPU);
- later passes interpolate the k-th value linearly between the bracket ends (from the
  counts there) and place thresholds at ``+-c`` binomial standard deviations around
  the estimate, plus the midpoint of the bracket's bits, so the bracket at least halves
  whatever the data;
- ``(p, q]`` is the interval between thresholds where the estimate falls. When the
  k-th is in it, its values end the search in that same pass if it holds one distinct
  value, if k is its last rank (its largest value), or if it holds exactly the ranks k
  and k+1 (its smallest and largest value); they also snap the bracket to data values.

A float64 input (of at least ``_GUESS_MIN_SIZE`` values, ``_FOLDED_GUESS_MIN_SIZE``
when folded) is first rounded to float32 and its k-th found there (int32 passes cost
about a third of int64 ones); the float64 passes then start from the float32
neighbours of that value, which bracket the float64 k-th, and usually finish in 1 pass.

A symmetric matrix with a zero diagonal (SVGD's squared distances) is its upper
triangle twice plus zeros: :func:`select_pair_folded` counts over the triangle alone,
half the entries.

On the folded squared distances of 1000 particles this takes 3-8 passes (mean 4.6-5.0
along 2-d SVGD runs; 5.5-5.9 when the statistics were those of the whole bracket, one
pass late) where plain bisection on the bits took 17. The data are seen only through
the pass function, so the same loop serves a blocked variant that recomputes the
values block by block (:func:`select_pair_blocked`). Exact: ties and an even count (mean
of the two middle values) are handled as ``numpy.median`` does.
"""

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

_MAX_PASSES = 80  # the bit midpoint halves the bracket: 64-bit floats need at most ~65


def _bits(x: Float[Array, "..."]) -> Int[Array, "..."]:
    itype = jnp.int64 if x.dtype == jnp.float64 else jnp.int32
    return jax.lax.bitcast_convert_type(x, itype)


def _from_bits(b: Int[Array, "..."], dtype) -> Float[Array, "..."]:
    return jax.lax.bitcast_convert_type(b, dtype)


def _count_pass(
    b: Int[Array, " m"],
    ts: Int[Array, " t"],
    lo: Int[Array, ""],
    hi: Int[Array, ""],
    ctype,
    valid: Bool[Array, " m"] | None = None,
) -> tuple[Int[Array, " t"], Int[Array, ""], Int[Array, ""], Int[Array, ""]]:
    """``#{b <= t}`` for each threshold, ``min{b > lo}``, ``max{b <= hi}``, ``min{b > hi}``.

    One variadic reduction (separate reductions cost a pass each). Entries where
    ``valid`` is false are left out.
    """
    info = jnp.iinfo(b.dtype)
    big, small = jnp.asarray(info.max, b.dtype), jnp.asarray(info.min, b.dtype)
    if valid is not None:  # an invalid entry is above everything and never the min
        b = jnp.where(valid, b, big)
    num_t = ts.shape[0]
    operands = [(b <= ts[j]).astype(ctype) for j in range(num_t)]
    above_hi = b > hi if valid is None else (b > hi) & valid
    operands += [
        jnp.where(b > lo, b, big),
        jnp.where(b <= hi, b, small),
        jnp.where(above_hi, b, big),
    ]
    inits = [jnp.zeros((), ctype)] * num_t + [big, small, big]

    def combine(p, q):
        counts = [p[j] + q[j] for j in range(num_t)]
        return (
            *counts,
            jnp.minimum(p[num_t], q[num_t]),
            jnp.maximum(p[num_t + 1], q[num_t + 1]),
            jnp.minimum(p[num_t + 2], q[num_t + 2]),
        )

    out = jax.lax.reduce(tuple(operands), tuple(inits), combine, (0,))
    return jnp.stack(out[:num_t]), out[num_t], out[num_t + 1], out[num_t + 2]


# thresholds, in binomial standard deviations of a quantile: of the subsample quantile
# in the first pass, of the interpolated position later; tuned on squared distances of
# 1000 particles
_SAMPLE_SDS = (0.0, -3.0, -1.0, 1.0, 3.0)
_INTERP_SDS = (-2.5, -0.8, 0.8)


def _sample_thresholds(
    sample: Int[Array, " s"], m: int, k: Int[Array, ""], dtype
) -> tuple[Int[Array, " t"], Int[Array, ""]]:
    """Subsample quantiles around ``k/m``, and the quantile at ``k/m`` (all bits).

    The bits are sorted, not the floats: the same order for non-negative values, and
    an integer sort costs a quarter of a float sort on XLA CPU (25 vs 95 us for 1024).
    """
    bits = jnp.sort(sample)
    s = sample.shape[0]
    q = k.astype(dtype) / m
    sd = jnp.sqrt(q * (1.0 - q) / s) + 1.0 / s
    u = jnp.asarray(_SAMPLE_SDS, dtype)
    idx = jnp.clip(jnp.round((q + u * sd) * s).astype(jnp.int32) - 1, 0, s - 1)
    return bits[idx[1:]], bits[idx[0]]


def _interpolated_thresholds(
    lo: Int[Array, ""],
    hi: Int[Array, ""],
    c_lo: Int[Array, ""],
    c_hi: Int[Array, ""],
    k: Int[Array, ""],
    dtype,
) -> tuple[Int[Array, " t"], Int[Array, ""]]:
    """Thresholds around the linearly interpolated k-th value, plus the bit midpoint;
    and that value (bits in ``(lo, hi]``)."""
    one = jnp.ones((), lo.dtype)
    v_lo = _from_bits(lo + one, dtype)
    v_hi = _from_bits(hi, dtype)
    num = jnp.maximum(c_hi - c_lo, 1).astype(dtype)
    f = (k - c_lo).astype(dtype) / num - 0.5 / num
    sd = jnp.sqrt(jnp.maximum(f * (1.0 - f), 0.0) / num) + 1.0 / num
    frac = jnp.clip(f + jnp.asarray((0.0, *_INTERP_SDS), dtype) * sd, 0.0, 1.0)
    v = v_lo + frac * (v_hi - v_lo)
    t = jnp.clip(_bits(v), lo + one, hi)
    mid = lo + (hi - lo) // 2
    return jnp.concatenate([t[1:], mid[None]]), t[0]  # all in [lo, hi]


def select_pair(
    x: Float[Array, " m"], k: int | Int[Array, ""]
) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """The ``k``-th and ``(k+1)``-th smallest (1-based) of non-negative ``x``, exactly.

    The second is the first again when ``k == m``. Also returns the number of passes.
    """
    m = x.shape[0]
    b = _bits(x)
    ctype = _count_type(m)

    def pass_fn(ts, lo, hi):
        return _count_pass(b, ts, lo, hi, ctype)

    first = None
    if x.dtype == jnp.float64 and m >= _GUESS_MIN_SIZE:
        first = _float32_thresholds(select_pair(x.astype(jnp.float32), k)[0])
    return select_pair_passes(pass_fn, _sample(b), m, k, x.dtype, first)


def select_pair_folded(
    u: Float[Array, " h"], num_zeros: int, k: int | Int[Array, ""]
) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """:func:`select_pair` over the multiset that holds every value of ``u`` twice plus
    ``num_zeros`` zeros (``m = 2 h + num_zeros`` values), reading only ``u``.

    A symmetric matrix with a zero diagonal is its upper triangle counted twice plus
    the diagonal's zeros, so its order statistics cost counting passes over half the
    entries: each pass counts in ``u``, doubles, and adds the zeros.
    """
    m = 2 * u.shape[0] + num_zeros
    ctype = _count_type(m)
    b = _bits(u)  # u's only consumer, so it is computed right into this buffer
    zero = jnp.zeros((), b.dtype)

    def pass_fn(ts, lo, hi):
        counts, a, z, w = _count_pass(b, ts, lo, hi, ctype)
        if not num_zeros:
            return 2 * counts, a, z, w
        counts = 2 * counts + num_zeros * (ts >= 0).astype(ctype)
        a = jnp.where(lo < 0, jnp.minimum(a, zero), a)
        z = jnp.where(hi >= 0, jnp.maximum(z, zero), z)
        w = jnp.where(hi < 0, jnp.minimum(w, zero), w)
        return counts, a, z, w

    first = None
    if u.dtype == jnp.float64 and m >= _FOLDED_GUESS_MIN_SIZE:
        first = _float32_thresholds(select_pair_folded(u.astype(jnp.float32), num_zeros, k)[0])
    return select_pair_passes(pass_fn, _sample(b), m, k, u.dtype, first)


def select_pair_blocked(
    values_fn: Callable,
    blocks: Any,
    sample: Float[Array, " s"],
    m: int,
    k: int | Int[Array, ""],
) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """:func:`select_pair` over ``m`` values made block by block and never stored.

    Every counting pass maps ``values_fn(block) -> (values, valid)`` over ``blocks`` (a
    PyTree with a leading block axis, ``jax.lax.map``): one block's non-negative values,
    flat, and which of them count (``m`` of them count in all). ``sample`` holds a few
    of the values (a strided subsample) for the first pass's thresholds.
    """
    ctype = _count_type(m)

    def pass_fn(ts, lo, hi):
        def one(block):
            values, valid = values_fn(block)
            return _count_pass(_bits(values), ts, lo, hi, ctype, valid)

        counts, a, z, w = jax.lax.map(one, blocks)
        return jnp.sum(counts, axis=0, dtype=ctype), jnp.min(a), jnp.max(z), jnp.min(w)

    return select_pair_passes(pass_fn, _bits(sample), m, k, sample.dtype)


# float64 input of at least this size (512 particles' squared distances): the k-th is
# first found in float32. Measured when SVGD's median still counted over the whole
# matrix (it now uses select_pair_folded): at 1000 particles that saved about 1 ms of 6
# per step but cost 0.6-0.8 s more compilation (a second selection loop); at 100, ~5 %.
_GUESS_MIN_SIZE = 2**18
# the same for select_pair_folded, in values of the whole multiset (n^2 for n particles):
# over the fold the float64 passes cost half as much, so the guess paid nothing at 1000
# particles (2.5-2.8 ms either way) for 0.4-0.5 s more compilation; at 2000, 10.5 vs
# 11.5 ms
_FOLDED_GUESS_MIN_SIZE = 2**21


def _float32_thresholds(v32: Float[Array, ""]) -> Int[Array, " 4"]:
    """float64 bits of a bracket (first, last] around ``v32``, the k-th of the values
    rounded to float32, with two thresholds inside.

    Rounding is monotone, so the k-th in float64 rounds to ``v32`` and lies strictly
    between the float32 neighbours of ``v32``: the bracket holds it among the (usually
    very few) values that round to ``v32``. Only speed depends on this guess.
    """
    below = jnp.nextafter(v32, jnp.asarray(-jnp.inf, v32.dtype))
    above = jnp.nextafter(v32, jnp.asarray(jnp.inf, v32.dtype))
    mid = _bits(v32.astype(jnp.float64))
    lo = jnp.where(v32 > 0, _bits(below.astype(jnp.float64)), -1)
    hi = _bits(above.astype(jnp.float64))
    return jnp.stack([lo, jnp.maximum(mid - 1, 0), mid, hi])


def _count_type(m: int):
    return jnp.int32 if m < 2**31 - 1 else jnp.int64


def _sample(x: Array) -> Array:
    """A strided subsample of about ``2 sqrt(m)`` entries, 64 to 1024.

    Sorting it must stay cheap next to the passes it saves: the sort is of integer bits,
    25 us for 1024, against ~80 us for one counting pass over the 500,000-value fold of
    1000 particles (benchmarks/README.md).
    """
    m = x.shape[0]
    sample_size = int(min(1024, max(64, 2 * m**0.5)))
    return x[:: max(1, m // sample_size)]


def select_pair_passes(
    pass_fn: Callable,
    sample: Int[Array, " s"],
    m: int,
    k: int | Int[Array, ""],
    dtype,
    first_thresholds: Int[Array, " 4"] | None = None,
) -> tuple[Float[Array, ""], Float[Array, ""], Int[Array, ""]]:
    """:func:`select_pair` over data seen only through ``pass_fn(ts, p, q)``, which returns
    what :func:`_count_pass` does for the ``m`` values (possibly made block by block, never
    stored); ``sample`` is the bits of a subsample of them. ``first_thresholds`` (bits, a
    guessed bracket ``(ts[0], ts[-1]]`` with thresholds inside) replace the subsample's.

    Each pass counts at four thresholds and takes the smallest, largest and next
    values of one interval ``(p, q]``: the one between thresholds where the k-th is
    expected. When the k-th lies there, those values can end the search in the same
    pass (one distinct value, k its last rank, or exactly ranks k and k+1 in it), and
    they snap the new bracket's ends to data values.
    """
    itype = jnp.int64 if dtype == jnp.float64 else jnp.int32
    kk = jnp.asarray(k, _count_type(m))

    out = jax.lax.while_loop(
        lambda c: (~c["done"]) & (c["passes"] < _MAX_PASSES),
        lambda c: _narrow(c, pass_fn(c["ts"], c["p"], c["q"]), kk, dtype),
        _initial_carry(sample, m, kk, dtype, itype, first_thresholds),
    )
    return _from_bits(out["kth"], dtype), _from_bits(out["next"], dtype), out["passes"]


def _initial_carry(
    sample: Int[Array, " s"],
    m: int,
    kk: Int[Array, ""],
    dtype,
    itype,
    first_thresholds: Int[Array, " 4"] | None,
) -> dict:
    """The search state before the first pass: the whole bit range as the bracket."""
    one = jnp.ones((), itype)
    big = jnp.asarray(jnp.iinfo(itype).max, itype)
    lo, hi = -one, big
    if first_thresholds is None:
        ts, est = _sample_thresholds(sample, m, kk, dtype)
        p, q = _around(est, lo, ts, hi)
    else:  # if the guess misses, the bit midpoints still halve the bracket every pass
        ts = first_thresholds
        p, q = ts[0], ts[-1]
    return dict(
        lo=lo,
        hi=hi,
        c_lo=jnp.zeros((), kk.dtype),
        c_hi=jnp.asarray(m, kk.dtype),
        ts=ts,
        p=p,
        q=q,
        done=jnp.zeros((), bool),
        kth=big,
        next=big,
        passes=jnp.zeros((), jnp.int32),
    )


def _narrow(c: dict, pass_out: tuple, kk: Int[Array, ""], dtype) -> dict:
    """One pass's counts and interval statistics -> the next search state."""
    counts, a, z, w = pass_out
    one = jnp.ones((), c["lo"].dtype)
    big = jnp.asarray(jnp.iinfo(c["lo"].dtype).max, c["lo"].dtype)
    # the new bracket from the thresholds, and the counts at the stats interval's ends
    below = counts < kk
    lo_t = jnp.max(jnp.where(below, c["ts"], c["lo"]))
    c_lo = jnp.max(jnp.where(below, counts, c["c_lo"]))
    hi_t = jnp.min(jnp.where(below, c["hi"], c["ts"]))
    c_hi = jnp.min(jnp.where(below, c["c_hi"], counts))
    ends = jnp.concatenate([c["lo"][None], c["ts"], c["hi"][None]])
    c_ends = jnp.concatenate([c["c_lo"][None], counts, c["c_hi"][None]])
    c_p = jnp.max(jnp.where(ends <= c["p"], c_ends, 0))
    c_q = jnp.max(jnp.where(ends <= c["q"], c_ends, 0))
    # (p, q] holds the k-th: it is a if (p, q] holds one distinct value, z if k is
    # its last rank (and the (k+1)-th is w), a and z if it holds ranks k and k+1
    inside = (c_p < kk) & (kk <= c_q)
    at_top = inside & (c_q == kk)
    pair_left = inside & (c_p + 1 == kk) & (c_q == kk + 1)
    done = (inside & (a >= z)) | at_top | pair_left
    upper = jnp.where((c_q >= kk + 1) | (w == big), a, w)
    upper = jnp.where(pair_left, z, jnp.where(at_top, jnp.where(w == big, z, w), upper))
    # snap the bracket's ends to data values: #{b <= a - 1} == c_p, #{b <= z} == c_q
    lo = jnp.where(inside, jnp.maximum(lo_t, a - one), lo_t)
    lo = jnp.where(lo_t == c["q"], jnp.maximum(lo_t, w - one), lo)
    hi = jnp.where(inside, jnp.minimum(hi_t, z), hi_t)
    ts, est = _interpolated_thresholds(lo, hi, c_lo, c_hi, kk, dtype)
    p, q = _around(est, lo, ts, hi)
    return dict(
        lo=lo,
        hi=hi,
        c_lo=c_lo,
        c_hi=c_hi,
        ts=ts,
        p=p,
        q=q,
        done=done,
        kth=jnp.where(at_top, z, a),
        next=upper,
        passes=c["passes"] + 1,
    )


def _around(
    est: Int[Array, ""], lo: Int[Array, ""], ts: Int[Array, " t"], hi: Int[Array, ""]
) -> tuple[Int[Array, ""], Int[Array, ""]]:
    """The interval ``(p, q]`` between neighbouring thresholds that holds ``est``."""
    p = jnp.max(jnp.where(ts < est, ts, lo))
    q = jnp.min(jnp.where(ts >= est, ts, hi))
    return p, q


def order_statistic(x: Float[Array, " m"], k: int) -> Float[Array, ""]:
    """The ``k``-th smallest (1-based, a Python int) of non-negative ``x``, exactly."""
    return select_pair(x, k)[0]


def median(x: Float[Array, " m"]) -> Float[Array, ""]:
    """Exact median (mean of the two middle values for even length) of non-negative ``x``."""
    m = x.shape[0]
    k = (m + 1) // 2
    lower, upper, _ = select_pair(x, k)
    if m % 2:
        return lower
    return 0.5 * (lower + upper)
