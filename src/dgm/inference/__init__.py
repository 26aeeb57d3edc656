"""Samplers: HMC, constrained HMC on generator manifolds, adaptation, ABC baselines."""

from dgm.inference.base import ChainRunner, Kernel
from dgm.inference.hmc import HMCInfo, HMCState, hmc
from dgm.inference.svgd import SVGDInfo, SVGDState
from dgm.inference.svgd_driver import SVGDResult, SVGDRunner

__all__ = [
    "ChainRunner",
    "HMCInfo",
    "HMCState",
    "Kernel",
    "SVGDInfo",
    "SVGDResult",
    "SVGDRunner",
    "SVGDState",
    "hmc",
]
