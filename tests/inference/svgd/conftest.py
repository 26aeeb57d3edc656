"""SVGD test fixtures: float64 on demand, whatever the suite's global x64 setting."""

import jax
import pytest


@pytest.fixture
def x64():
    """Run the test with JAX's 64-bit mode on (scoped: the global setting is restored)."""
    with jax.enable_x64(True):
        yield
