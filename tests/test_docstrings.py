"""Every ``>>>`` example in dgm's docstrings runs and prints what it shows, under JAX's
default promotion rules (the suite's are strict; users' are not)."""

import doctest
import importlib
import pkgutil
from pathlib import Path

import jax
import pytest

import dgm


def _modules_with_examples() -> list[str]:
    names = []
    for info in pkgutil.walk_packages(dgm.__path__, "dgm."):
        source = importlib.util.find_spec(info.name).origin
        if source and source.endswith(".py") and ">>>" in Path(source).read_text("utf-8"):
            names.append(info.name)
    return sorted(names)


@pytest.mark.parametrize("name", _modules_with_examples())
def test_docstring_examples(name):
    module = importlib.import_module(name)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    tests = doctest.DocTestFinder().find(module)
    assert any(t.examples for t in tests), f"{name} has '>>>' but no example was found"
    with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
        for t in tests:
            runner.run(t)
    failed, attempted = runner.summarize(verbose=False)
    assert failed == 0, f"{failed} of {attempted} examples in {name} failed (output above)"
