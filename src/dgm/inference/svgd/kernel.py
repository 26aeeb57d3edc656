"""SVGD's kernel machinery: pairwise distances, the bandwidth, and the kernel products.

Every SVGD iteration computes the squared pairwise distances once (from coordinate
differences up to 4 dimensions, else a Gram matrix product), the kernel and its first two
derivatives in the squared distance elementwise, and from them, with matrix products only,
the SVGD direction (the repulsive term in closed form from the pairwise differences, no
per-pair autodiff) and the U-statistic kernelized Stein discrepancy (KSD).

Kernels are radial, ``k(x, y) = g(|x - y|^2)``:

- ``"rbf"``: ``g(D) = exp(-D / h)`` (the original code's ``exp(-D / (2 h_orig^2))`` with
  ``h = 2 h_orig^2``);
- ``"imq"``: ``g(D) = (1 + D / h)^(-1/2)``.

The bandwidth ``h`` is a positive number, ``"median"`` (the original code's exact
variant: ``h = median(D) / log(n + 1)`` with the median over all ``n^2`` entries,
zero diagonal included) or ``"median-paper"`` (``h = med^2 / log n`` with ``med`` the
median of the distances over pairs ``i < j``). A zero median (one particle, or
coinciding particles) falls back to the largest squared distance, or 1 when all
particles coincide; with one particle SVGD is then exactly gradient ascent on log p.

The median is exact and found by selection (counting passes that narrow a bracket on
the float bits, see :mod:`dgm.inference.svgd.median`), not by sorting: ``jnp.median``
sorts and is very slow on XLA CPU. For ``"median"`` the passes read the upper triangle
only (folded into an ``n/2 x n`` array), since the full matrix holds it twice plus the
zero diagonal; ``"median-paper"`` and the blocked path count over the whole matrix.

Large n: with a ``block_size`` the particles are processed in row blocks (``lax.map``),
so no n x n matrix is stored; the median's counting passes recompute the distances block
by block.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from dgm.inference.svgd.median import select_pair, select_pair_blocked, select_pair_folded

KERNELS = ("rbf", "imq")
BANDWIDTHS = ("median", "median-paper")


# ----------------------------------------------------------------------------- kernels


def _dot(a, b):
    """``a @ b`` at full precision (the default may run float32 products in TF32 on GPUs)."""
    return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


# up to this many coordinates, distances come from coordinate differences: one loop
# with no matrix product, and more accurate (a 2-d step at 1000 particles: 1.14 vs
# 1.30 ms float32, 2.27 vs 2.38 ms float64, same run)
_DIRECT_MAX_DIM = 4


def _pairwise(
    xa: Float[Array, "rows dim"], xb: Float[Array, "cols dim"]
) -> tuple[Float[Array, "rows cols"], bool]:
    """``|xa_i - xb_j|^2``, and whether it came from differences (else a Gram product,
    which may be slightly negative and is not exactly 0 for equal rows)."""
    dim = xa.shape[1]
    if dim <= _DIRECT_MAX_DIM:
        d = (xa[:, 0, None] - xb[None, :, 0]) ** 2
        for k in range(1, dim):
            d = d + (xa[:, k, None] - xb[None, :, k]) ** 2
        return d, True
    sq_a, sq_b = jnp.sum(xa * xa, axis=1), jnp.sum(xb * xb, axis=1)
    return sq_a[:, None] + sq_b[None, :] - 2.0 * _dot(xa, xb.T), False


def squared_distances(x: Float[Array, "particles dim"]) -> Float[Array, "particles particles"]:
    """``D_ij = |x_i - x_j|^2``: symmetric, non-negative, exact zero diagonal.

    From coordinate differences for up to 4 dimensions, else from the Gram product
    (symmetric bit for bit on XLA CPU, which the median's fold relies on; tested).
    """
    d, direct = _pairwise(x, x)
    if direct:
        return d
    eye = jnp.eye(x.shape[0], dtype=bool)
    return jnp.where((d > 0) & ~eye, d, jnp.zeros((), x.dtype))


def bandwidth_from(
    d: Float[Array, "particles particles"], bandwidth: str | float | Float[Array, ""]
) -> Float[Array, ""]:
    """The bandwidth ``h`` for squared distances ``d`` (see the module docstring)."""
    n = d.shape[0]
    dtype = d.dtype
    if not isinstance(bandwidth, str):
        return jnp.asarray(bandwidth, dtype)
    if n == 1:
        return jnp.ones((), dtype)
    if bandwidth == "median":
        # D is its upper triangle twice plus the zero diagonal: count over half of it
        folded = select_pair_folded(_fold(d), _fold_extra_zeros(n), (n * n + 1) // 2)
        a, b = _median_pair(folded, n * n)
    else:  # median-paper: median of distances over pairs i < j == over off-diagonal entries
        off = jnp.where(jnp.eye(n, dtype=bool), jnp.inf, d).reshape(-1)
        a, b, _ = select_pair(off, n * (n - 1) // 2)
    # the fallback's max reads d, so XLA stores d once for it, the fold and the kernel
    # (recomputing the distances inside the fold and the kernel was slower: 1.4 vs 1.1
    # ms per 1000-particle step)
    return _finish_bandwidth(a, b, n, bandwidth, lambda: jnp.max(d))


def _fold_extra_zeros(n: int) -> int:
    """Zeros of an ``n x n`` ``d`` beyond twice :func:`_fold`'s values: the diagonal, less
    the fold's spare zeros for even ``n`` (``select_pair_folded``'s ``num_zeros``)."""
    return n if n % 2 else 0


def _fold(d: Float[Array, "particles particles"]) -> Float[Array, " half"]:
    """The entries above the diagonal of a symmetric ``d``, as an ``m x n`` array
    (``m = n // 2``) flattened, with a zero in each of its ``m`` spare places for even
    ``n``. So ``d`` holds every value of the result twice, plus ``n`` more zeros for
    odd ``n``.

    With ``A = [0, m)``, ``B = [m, 2m)`` and, for odd ``n``, the last particle ``z``,
    entry ``[i, c]`` comes from row ``i`` (``top``) or row ``m + i`` (``bottom``) of
    ``d`` at the same column ``c``, so it is one loop over aligned rows (no gather, pad
    or concatenate) that XLA fuses with whatever produces ``d``:

    - ``c < m``: ``A``'s pairs above the diagonal (``c > i``, from ``top``), and the
      pairs ``(c, m + i)`` of ``A x B`` with ``c <= i`` (from ``bottom``);
    - ``c = m + j``, ``j < m``: ``B``'s pairs above the diagonal (``j > i``, from
      ``bottom``), the pairs ``(i, m + j)`` of ``A x B`` with ``j < i`` (from ``top``),
      and at ``j = i`` a zero, or the pair ``(z, m + i)`` (``d``'s last row) for odd ``n``;
    - ``c = n - 1`` for odd ``n``: the pairs ``(i, z)`` (``top``).

    The values are ``d``'s entries bit for bit.
    """
    n = d.shape[0]
    m = n // 2
    i = jax.lax.broadcasted_iota(jnp.int32, (m, n), 0)
    c = jax.lax.broadcasted_iota(jnp.int32, (m, n), 1)
    top, bottom = d[:m], d[m : 2 * m]
    spare = jnp.broadcast_to(d[-1], (m, n)) if n % 2 else jnp.zeros((), d.dtype)
    j = c - m
    right = jnp.where(j > i, bottom, jnp.where(j < i, top, spare))
    left = jnp.where(c > i, top, bottom)
    return jnp.where(c < m, left, jnp.where(c < 2 * m, right, top)).reshape(-1)


def _median_pair(selected, m: int):
    """``(lower, upper)`` middle values from ``select_pair`` at ``k = (m + 1) // 2``."""
    a, b, _ = selected
    return (a, a) if m % 2 else (a, b)


def _finish_bandwidth(a, b, n: int, bandwidth: str, dmax_fn: Callable) -> Float[Array, ""]:
    """``h`` from the two middle values; the zero-median fallback is computed only if needed."""
    dtype = a.dtype
    if bandwidth == "median":
        h = 0.5 * (a + b) / jnp.log(jnp.asarray(n + 1.0, dtype))
    else:
        med = 0.5 * (jnp.sqrt(a) + jnp.sqrt(b))
        h = med**2 / jnp.log(jnp.asarray(float(n), dtype))

    def fallback(_):
        dmax = dmax_fn()
        return jnp.where(dmax > 0, dmax / jnp.log(jnp.asarray(n + 1.0, dtype)), 1.0).astype(dtype)

    return jax.lax.cond(h > 0, lambda _: h, fallback, None)


def kernel_terms(
    d: Float[Array, "rows particles"], h: Float[Array, ""], kernel: str
) -> tuple[Float[Array, "rows particles"], ...]:
    """``g(D)``, ``g'(D)`` and ``g''(D)`` elementwise for the radial kernel ``kernel``."""
    if kernel == "rbf":
        k = jnp.exp(-d / h)
        return k, -k / h, k / (h * h)
    f = 1.0 + d / h  # imq, beta = -1/2
    return f**-0.5, -0.5 / h * f**-1.5, 0.75 / (h * h) * f**-2.5


def _kernel_products(
    x: Float[Array, "particles dim"],
    scores: Float[Array, "particles dim"],
    d: Float[Array, "rows particles"],
    h: Float[Array, ""],
    kernel: str,
) -> tuple[
    Float[Array, "rows dim"],
    Float[Array, "rows dim"],
    Float[Array, " rows"],
    Float[Array, "rows dim"],
    Float[Array, " rows"],
]:
    """``K s``, ``K' x``, ``K' 1``, ``K'' x``, ``K'' 1`` by matrix products only.

    For the RBF kernel ``K' = -K / h`` and ``K'' = K / h^2``, so one product
    ``K [s, x, 1]`` gives everything: the matrix is read once.
    """
    n, dim = x.shape
    ones = jnp.ones((n, 1), x.dtype)
    if kernel == "rbf":
        k = jnp.exp(-d / h)
        prod = _dot(k, jnp.concatenate([scores, x, ones], axis=1))
        ks, kx, krow = prod[:, :dim], prod[:, dim : 2 * dim], prod[:, 2 * dim]
        return ks, -kx / h, -krow / h, kx / (h * h), krow / (h * h)
    k, kp, kpp = kernel_terms(d, h, kernel)
    xo = jnp.concatenate([x, ones], axis=1)
    p1, p2 = _dot(kp, xo), _dot(kpp, xo)
    return _dot(k, scores), p1[:, :dim], p1[:, dim], p2[:, :dim], p2[:, dim]


# ----------------------------------------------------------------------------- blocked


def _row_blocks(
    x: Float[Array, "particles dim"], block_size: int
) -> tuple[Float[Array, "blocks rows dim"], Int[Array, "blocks rows"]]:
    """Rows of ``x`` in blocks of ``block_size`` (zero-padded) and their global indices."""
    n, dim = x.shape
    num_blocks = -(-n // block_size)
    pad = num_blocks * block_size - n
    xp = jnp.concatenate([x, jnp.zeros((pad, dim), x.dtype)]) if pad else x
    rows = jnp.arange(num_blocks * block_size).reshape(num_blocks, block_size)
    return xp.reshape(num_blocks, block_size, dim), rows


def _cross_distances(
    xr: Float[Array, "rows dim"], rows: Int[Array, " rows"], x: Float[Array, "particles dim"]
) -> Float[Array, "rows particles"]:
    """Rows ``rows`` of :func:`squared_distances` (the same formula), from ``xr = x[rows]``."""
    d, direct = _pairwise(xr, x)
    if direct:
        return d
    diag = rows[:, None] == jnp.arange(x.shape[0])[None, :]
    return jnp.where((d > 0) & ~diag, d, jnp.zeros((), x.dtype))


def _blocked_bandwidth(
    x: Float[Array, "particles dim"], bandwidth: str | float, block_size: int
) -> Float[Array, ""]:
    """:func:`bandwidth_from` without storing ``D``: each counting pass of the exact
    selection recomputes ``D`` block by block."""
    n = x.shape[0]
    if not isinstance(bandwidth, str):
        return jnp.asarray(bandwidth, x.dtype)
    if n == 1:
        return jnp.ones((), x.dtype)
    xb, rows = _row_blocks(x, block_size)
    paper = bandwidth == "median-paper"
    m = n * (n - 1) if paper else n * n

    def block_values(block):
        xr, r = block
        d = _cross_distances(xr, r, x)
        valid = (r < n)[:, None] & jnp.ones((1, n), bool)
        if paper:
            valid = valid & (r[:, None] != jnp.arange(n)[None, :])
        return d.reshape(-1), valid.reshape(-1)

    # a strided sample of the (flattened) D for the first thresholds
    flat = jnp.arange(0, n * n, max(1, n * n // int(min(1024, max(64, 2 * n)))))
    i, j = flat // n, flat % n
    sample = jnp.sum((x[i] - x[j]) ** 2, axis=1)
    k = n * (n - 1) // 2 if paper else (m + 1) // 2
    a, b, _ = select_pair_blocked(block_values, (xb, rows), sample, m, k)
    if not paper:
        a, b = _median_pair((a, b, None), m)

    def dmax():
        return jnp.max(jax.lax.map(lambda blk: jnp.max(_cross_distances(*blk, x)), (xb, rows)))

    return _finish_bandwidth(a, b, n, bandwidth, dmax)


def _blocked_products(
    x: Float[Array, "particles dim"],
    scores: Float[Array, "particles dim"],
    h: Float[Array, ""],
    kernel: str,
    block_size: int,
) -> tuple[Array, ...]:
    """:func:`_kernel_products` row block by row block: memory O(block_size * n)."""
    n = x.shape[0]
    xb, rows = _row_blocks(x, block_size)

    def one(args):
        xr, r = args
        return _kernel_products(x, scores, _cross_distances(xr, r, x), h, kernel)

    outs = jax.lax.map(one, (xb, rows))
    return tuple(o.reshape(-1, *o.shape[2:])[:n] for o in outs)


def _g0(kernel: str, h: Float[Array, ""]) -> tuple[float, Float[Array, ""]]:
    """``g(0)`` and ``g'(0)``."""
    return 1.0, (-1.0 / h if kernel == "rbf" else -0.5 / h)


def phi_and_ksd(
    x: Float[Array, "particles dim"],
    scores: Float[Array, "particles dim"],
    kernel: str = "rbf",
    bandwidth: str | float | Float[Array, ""] = "median",
    with_ksd: bool = True,
    block_size: int | None = None,
) -> tuple[Float[Array, "particles dim"], Float[Array, ""], Float[Array, ""]]:
    """The SVGD direction, the KSD U-statistic (KSD², may be < 0) and the bandwidth.

    With ``block_size`` (and more particles than that), no n x n matrix is stored: the
    kernel products run over row blocks of that many particles (``lax.map``), and the
    median heuristic's counting passes recompute the distances block by block.

    ``phi_i = (1/n) sum_j [k(x_j, x_i) s_j + grad_{x_j} k(x_j, x_i)]`` with
    ``grad_{x_j} k(x_j, x_i) = 2 g'(D_ij) (x_j - x_i)``. The Stein kernel summed over
    all pairs uses ``sum_ij g''_ij D_ij = 2 sum_i |x_i|^2 (K''1)_i - 2 sum_i x_i (K''x)_i``,
    so nothing but the products of :func:`_kernel_products` touches an n x n matrix.
    """
    phi, u, _, h = phi_and_ksd_uv(x, scores, kernel, bandwidth, with_ksd, block_size)
    return phi, u, h


def phi_and_ksd_uv(
    x: Float[Array, "particles dim"],
    scores: Float[Array, "particles dim"],
    kernel: str = "rbf",
    bandwidth: str | float | Float[Array, ""] = "median",
    with_ksd: bool = True,
    block_size: int | None = None,
) -> tuple[Float[Array, "particles dim"], Float[Array, ""], Float[Array, ""], Float[Array, ""]]:
    """:func:`phi_and_ksd` with the V-statistic of KSD² too: ``(phi, U, V, h)``.

    ``V = (1/n²) Σ_ij u_p(x_i, x_j)`` is the squared RKHS norm of the SVGD direction, so it
    is ≥ 0 and 0 exactly at a fixed point of SVGD; the U-statistic leaves out the diagonal
    and can be ≤ 0 while the particles still move (a stopping rule on it stops early).
    ``U`` is 0 for one particle; both are 0 (U) and inf (V) without ``with_ksd``.

    Every formula is translation-invariant, so the particles are centred first: in float32,
    ``|x_i|² + |x_j|² − 2 x_i·x_j`` and ``K x − x (K 1)`` cancel catastrophically when the
    particles sit far from the origin against their spread (a 10-d target at 300 with sd 0.1:
    particle sds 1.04 × the target's against 0.66 × at 0, uncentred). Matrix products run at
    full float32 precision (``Precision.HIGHEST``: no TF32 on GPUs).
    """
    n, dim = x.shape
    x = x - jnp.mean(x, axis=0, keepdims=True)
    if block_size is not None and n > block_size:
        h = _blocked_bandwidth(x, bandwidth, block_size)
        ks, kpx, kp_rows, kppx, kpp_rows = _blocked_products(x, scores, h, kernel, block_size)
    else:
        d = squared_distances(x)
        h = bandwidth_from(d, bandwidth)
        ks, kpx, kp_rows, kppx, kpp_rows = _kernel_products(x, scores, d, h, kernel)
    phi = (ks + 2.0 * (kpx - x * kp_rows[:, None])) / n
    if not with_ksd:
        return phi, jnp.zeros((), x.dtype), jnp.full((), jnp.inf, x.dtype), h
    a = jnp.sum(scores * x, axis=1)
    sq = jnp.sum(x * x, axis=1)
    sum_kpp_d = 2.0 * jnp.sum(sq * kpp_rows) - 2.0 * jnp.sum(x * kppx)
    total = (
        jnp.sum(scores * ks)
        + 4.0 * (jnp.sum(scores * kpx) - jnp.sum(a * kp_rows))
        - 4.0 * sum_kpp_d
        - 2.0 * dim * jnp.sum(kp_rows)
    )
    g0, gp0 = _g0(kernel, h)
    diag = g0 * jnp.sum(scores * scores) - 2.0 * dim * n * gp0
    u = (total - diag) / (n * (n - 1)) if n > 1 else jnp.zeros((), x.dtype)
    return phi, u, total / (n * n), h


def ksd(
    x: Float[Array, "particles dim"],
    scores: Float[Array, "particles dim"],
    kernel: str = "rbf",
    bandwidth: str | float | Float[Array, ""] = "median",
) -> Float[Array, ""]:
    """Kernelized Stein discrepancy ``sqrt(max(U, 0))`` of particles with scores ∇log p."""
    _, u, _ = phi_and_ksd(x, scores, kernel, bandwidth)
    return jnp.sqrt(jnp.maximum(u, 0.0))
