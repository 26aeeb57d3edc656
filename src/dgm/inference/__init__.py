"""Samplers: HMC, constrained HMC on generator manifolds, adaptation, ABC baselines.

Modules: ``hmc``, ``constrained_hmc``, ``manifold``, ``integrators``, ``metrics``,
``base`` (kernel container and multi-chain driver).
"""

from dgm.inference.adaptation import WarmupResult, warmup
from dgm.inference.base import ChainRunner, Kernel

__all__ = ["ChainRunner", "Kernel", "WarmupResult", "warmup"]
