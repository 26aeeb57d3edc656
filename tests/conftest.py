"""Test configuration: CPU threads, strict numerics, JAX's default dtypes, dataset location."""

import os

from dgm._runtime import configure_cpu

configure_cpu(2)

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def x64():
    """Run a test with float64 enabled (JAX's default, which the suite keeps, is float32).

    Use it for float64 algorithms and exact-arithmetic checks: ``pytestmark =
    pytest.mark.usefixtures("x64")`` for a whole module.
    """
    with jax.enable_x64(True):
        yield


def data_dir() -> Path | None:
    """The verified datasets (``DGM_DATA_DIR``, else ``../shared/data`` beside the checkout)."""
    env = os.environ.get("DGM_DATA_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Path to the shared datasets; skips (or fails, when ``DGM_REQUIRE_DATA=1``) without them."""
    path = data_dir()
    if path is None:
        msg = "needs the shared datasets: set DGM_DATA_DIR to the shared/data folder"
        if os.environ.get("DGM_REQUIRE_DATA") == "1":
            pytest.fail(msg + " (DGM_REQUIRE_DATA=1 forbids skipping)")
        pytest.skip(msg)
    return path
