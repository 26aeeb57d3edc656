"""dgm: differentiable generative models and exact inference in them, on JAX.

Import creates no arrays and changes no global JAX setting: public classes that need
JAX (``dgm.condition``, ``dgm.SVGD``) and the subpackages (``dgm.diagnostics``,
``dgm.models``, ...) are imported on first access.
"""

__version__ = "0.1.0"

_LAZY = {
    "Amortized": "dgm.amortized",
    "amortize": "dgm.amortized",
    "SVGD": "dgm.svgd_original",
    "condition": "dgm.conditioning",
    "condition_additive_noise": "dgm.conditioning_additive",
    "ConditionedGenerator": "dgm.conditioning",
    "set_host_device_count": "dgm._runtime",
    "sample": "dgm.sampling",
    "sbc": "dgm.calibration",
    "svgd": "dgm.stein",
}

__all__ = [
    "Amortized",
    "SVGD",
    "ConditionedGenerator",
    "__version__",
    "amortize",
    "condition",
    "condition_additive_noise",
    "sample",
    "sbc",
    "set_host_device_count",
    "svgd",
]


def __getattr__(name: str):
    import importlib
    import importlib.util

    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")  # dgm.diagnostics, dgm.models...
    raise AttributeError(f"module 'dgm' has no attribute {name!r}")
