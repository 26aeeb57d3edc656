"""Samplers: HMC, constrained HMC on generator manifolds, adaptation, ABC baselines."""

from dgm.inference.adaptation import WarmupResult, warmup
from dgm.inference.base import ChainRunner, Kernel
from dgm.inference.hmc import HMCInfo, HMCState, hmc

__all__ = [
    "ChainRunner",
    "HMCInfo",
    "HMCState",
    "Kernel",
    "WarmupResult",
    "hmc",
    "warmup",
]
