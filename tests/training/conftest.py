"""Fixtures of the training tests."""

import jax
import pytest


@pytest.fixture(params=[False, True], ids=["x32", "x64"])
def x64(request):
    """Run the test with JAX's x64 mode off (the suite's future default) and on."""
    with jax.enable_x64(request.param):
        yield request.param
