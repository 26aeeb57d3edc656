"""Stein variational gradient descent (SVGD): pure ``init``/``step``, kernels, a driver.

Modules:

- ``core``: :class:`SVGDState`, :class:`SVGDInfo`, :func:`make_score_fn`, :func:`init`,
  :func:`build_step`, :func:`shard`;
- ``kernel``: pairwise distances, the (median) bandwidth, the kernel products behind
  the SVGD direction and the kernelized Stein discrepancy, dense or in row blocks;
- ``median``: exact order statistics by counting passes (no sorting), which the median
  bandwidth uses;
- ``driver``: :class:`SVGDRunner` (compiled chunks of steps, NaN stop, stopping rule,
  traces), :class:`SVGDResult`, :func:`to_inference_data`.

``dgm.inference.svgd.median`` is the function :func:`median` re-exported here, which
shadows the submodule of that name; reach the module as
``importlib.import_module("dgm.inference.svgd.median")`` or import names from it.

The original code's ``SVGD().update(...)`` API is :class:`dgm.SVGD`
(``dgm.svgd_original``).

References:
    Liu & Wang, "Stein Variational Gradient Descent: A General Purpose Bayesian
    Inference Algorithm", NIPS 2016 (arXiv:1608.04471).
"""

from dgm.inference.svgd.core import (
    SVGDInfo,
    SVGDState,
    build_step,
    init,
    make_score_fn,
    shard,
)
from dgm.inference.svgd.driver import SVGDResult, SVGDRunner, to_inference_data
from dgm.inference.svgd.kernel import (
    BANDWIDTHS,
    KERNELS,
    bandwidth_from,
    kernel_terms,
    ksd,
    phi_and_ksd,
    phi_and_ksd_uv,
    squared_distances,
)
from dgm.inference.svgd.median import median, order_statistic, select_pair

__all__ = [
    "BANDWIDTHS",
    "KERNELS",
    "SVGDInfo",
    "SVGDResult",
    "SVGDRunner",
    "SVGDState",
    "bandwidth_from",
    "build_step",
    "init",
    "kernel_terms",
    "ksd",
    "make_score_fn",
    "median",
    "order_statistic",
    "phi_and_ksd",
    "phi_and_ksd_uv",
    "select_pair",
    "shard",
    "squared_distances",
    "to_inference_data",
]
