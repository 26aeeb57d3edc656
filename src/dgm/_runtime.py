"""Process-level settings that must be in place before JAX is imported.

The CLI and the test suite call :func:`configure_cpu` first thing. On a CPU with
several cores, JAX then exposes one host device per core (chains are sharded over
them) and OpenBLAS runs single-threaded: with both cores busy, a multi-threaded
OpenBLAS slows small triangular solves by two orders of magnitude.
"""

import os


def configure_cpu(num_devices: int | None = None) -> None:
    """Set thread and host-device environment variables; call before importing JAX.

    Args:
        num_devices: number of host (CPU) devices JAX should expose; defaults to the
            number of cores. Ignored when ``XLA_FLAGS`` already sets a device count.
    """
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = num_devices or max(1, os.cpu_count() or 1)
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
