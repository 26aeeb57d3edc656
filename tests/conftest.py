"""Test configuration: CPU threads, strict numerics, JAX's default dtypes, dataset location.

XLA compiles the suite's programs without LLVM's optimisations (``--xla_backend_optimization
_level=0``, ``--xla_llvm_disable_expensive_passes``) and with XLA:CPU's older fusion emitters
(``--xla_cpu_use_fusion_emitters=false``, a flag of jaxlib 0.10): compilation is most of the
suite's time, and the first two flags alone took a whole run from 21 to 13 minutes on a 2-core
AMD EPYC; the third cut a NUTS chunk's compilation from 2.5-3.3 s to 1.8-2.1 s. Every
program and result is the same XLA computation; only the machine code differs. The flags go
into ``XLA_FLAGS``, so subprocesses (the CLI tests, the distributed workers) compile the
same way.
``DGM_TEST_FULL_OPTIMIZATION=1`` runs the suite as users' programs are compiled.
"""

import contextlib
import os
from importlib.metadata import version

from dgm._runtime import configure_cpu

FULL_OPTIMIZATION = os.environ.get("DGM_TEST_FULL_OPTIMIZATION") == "1"
if not FULL_OPTIMIZATION:
    _FAST_COMPILE = "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true"
    if version("jaxlib").startswith("0.10."):  # an unknown XLA flag aborts the process
        _FAST_COMPILE += " --xla_cpu_use_fusion_emitters=false"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILE}".strip()
configure_cpu(2)

from pathlib import Path  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def full_optimization() -> bool:
    """Whether XLA compiles as for users (``DGM_TEST_FULL_OPTIMIZATION=1``), not with the
    suite's fast-compile flags: for the few checks that are bit for bit only then."""
    return FULL_OPTIMIZATION


_COMPILES: list | None = None  # XLA programs compiled while a test collects them


def _count_compile(event: str, duration: float, **kwargs) -> None:
    if _COMPILES is not None and event.endswith("backend_compile_duration"):
        _COMPILES.append(event)


jax.monitoring.register_event_duration_secs_listener(_count_compile)


@pytest.fixture
def compiles() -> list:
    """A list that gains one entry per XLA program compiled while the test runs (an
    operation run outside ``jit`` compiles one too); ``clear()`` it before the part to count."""
    global _COMPILES
    _COMPILES = []
    try:
        yield _COMPILES
    finally:
        _COMPILES = None


@pytest.fixture
def plant(monkeypatch):
    """``with plant() as m: m.setattr(...)``: ``monkeypatch.context()`` for a bug planted in
    code that JAX traces. JAX's caches and dgm's runner cache (compiled samplers shared by
    every conditioning of the same generator) are cleared on entry and on exit: otherwise a
    program compiled before the patch serves again and the bug never runs, and a later test
    could reuse a program compiled with the bug."""
    from dgm.inference import chmc_driver

    def clear():
        jax.clear_caches()
        chmc_driver.clear_caches()

    @contextlib.contextmanager
    def context():
        clear()
        try:
            with monkeypatch.context() as m:
                yield m
        finally:
            clear()

    return context


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
