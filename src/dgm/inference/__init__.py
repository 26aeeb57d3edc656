"""Samplers: HMC, constrained HMC on generator manifolds, adaptation, ABC baselines, SVGD.

Modules: ``hmc``, ``constrained_hmc``, ``manifold``, ``integrators``, ``metrics``,
``adaptation``, ``abc``, ``svgd``, ``base`` (kernel container and multi-chain driver).
"""

from dgm.inference.adaptation import WarmupResult, warmup
from dgm.inference.base import ChainRunner, Kernel
from dgm.inference.svgd import SVGDInfo, SVGDResult, SVGDRunner, SVGDState

__all__ = [
    "ChainRunner",
    "Kernel",
    "SVGDInfo",
    "SVGDResult",
    "SVGDRunner",
    "SVGDState",
    "WarmupResult",
    "warmup",
]
