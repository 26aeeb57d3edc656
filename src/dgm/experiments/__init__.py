"""Experiment registry: name -> module.

Each experiment module defines ``NAME``, ``DESCRIPTION``, a frozen dataclass ``Config``
whose defaults are the paper's settings, ``PRESETS`` (at least ``smoke``, ``quick`` and
``paper``), optional ``EXTRA_ARGS`` (CLI flag -> dotted config field) and
``run(config, key, ctx) -> dict``; optionally ``summary(metrics) -> str``, and
``TRAINS = True`` for a run that trains a model through ``dgm.training.fit`` (``dgm run
--time-limit`` applies; its metrics hold ``updates`` and ``time_limited``).
"""

import ast
import importlib
import importlib.util
from types import ModuleType

_REGISTRY: dict[str, str] = {
    "lotka-volterra": "dgm.experiments.lotka_volterra",
    "mnist-inpainting": "dgm.experiments.mnist_inpainting",
    "ode-predator-prey": "dgm.experiments.ode_predator_prey",
    "pose": "dgm.experiments.pose",
    "sbc": "dgm.experiments.sbc",
    "dmm-polyphonic": "dgm.experiments.dmm_polyphonic",
    "dmm-synthetic": "dgm.experiments.dmm_synthetic",
    "draw-mnist": "dgm.experiments.draw_mnist",
    "iaf-vae": "dgm.experiments.iaf_vae",
    "svgd-blr": "dgm.experiments.svgd_blr",
    "svgd-bnn": "dgm.experiments.svgd_bnn",
    "svgd-gaussian2d": "dgm.experiments.svgd_gaussian2d",
    "svgd-gmm1d": "dgm.experiments.svgd_gmm1d",
    "vae-mnist": "dgm.experiments.vae_mnist",
}


def names() -> list[str]:
    """Registered experiment names, sorted."""
    return sorted(_REGISTRY)


def register(name: str, module: str) -> None:
    """Register an experiment module under ``name``."""
    _REGISTRY[name] = module


def get(name: str) -> ModuleType:
    """The experiment module called ``name``.

    Raises:
        ValueError: for an unknown name, listing the known ones.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown experiment {name!r}; expected one of: {', '.join(names())}")
    return importlib.import_module(_REGISTRY[name])


def description(name: str) -> str:
    """The experiment's ``DESCRIPTION``, read from its source when it is a string literal
    there (``dgm list`` then imports no experiment, and so no JAX), else from the module.

    Raises:
        ValueError: for an unknown name, as :func:`get`.
    """
    if name not in _REGISTRY:
        get(name)  # raises, naming the known experiments
    spec = importlib.util.find_spec(_REGISTRY[name])
    if spec is not None and spec.origin and spec.origin.endswith(".py"):
        with open(spec.origin, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "DESCRIPTION" for t in node.targets)
                and isinstance(node.value, ast.Constant)
                and isinstance(node.value.value, str)
            ):
                return node.value.value
    return get(name).DESCRIPTION
