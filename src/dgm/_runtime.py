"""Process-level settings that must be in place before JAX is imported.

The CLI and the test suite call :func:`configure_cpu` first thing. On a CPU with
several cores, JAX then exposes one host device per core (chains are sharded over
them) and OpenBLAS runs single-threaded: with both cores busy, a multi-threaded
OpenBLAS slows small triangular solves by two orders of magnitude.

:func:`set_host_device_count` (public as ``dgm.set_host_device_count``) asks for a number
of host devices explicitly; unlike :func:`configure_cpu` it may be called after ``import
jax``, as long as JAX has not run anything yet.

It also keeps glibc's allocator from handing large blocks back to the kernel: XLA:CPU
allocates each execution's temporaries as one block (47 MB for a DMM training step on a
20 × 64 JSB batch) and frees it afterwards; by default glibc serves such blocks by ``mmap``
and unmaps them on free, so every step touched fresh pages: 10,000 page faults per step
(1,200 with the settings below), about 10 ms of a 65 ms step. The price is slower
compilation (one malloc arena for XLA's compiler threads: a JSB step's compile 3.5 s instead
of 3.0), so it is opt-in (``reuse_freed_memory``): the CLI turns it on for training runs
only, and ``DGM_REUSE_FREED_MEMORY=0`` turns it off there too.
"""

import ctypes
import os
import sys

# mallopt parameters from <malloc.h>
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8


def configure_cpu(num_devices: int | None = None, reuse_freed_memory: bool = False) -> None:
    """Set thread and host-device environment variables; call before importing JAX.

    Args:
        num_devices: number of host (CPU) devices JAX should expose; defaults to the
            number of cores this process may run on (:func:`usable_cores`). Ignored when
            ``XLA_FLAGS`` already sets a device count.
        reuse_freed_memory: call :func:`keep_freed_memory` (unless
            ``DGM_REUSE_FREED_MEMORY=0``): for training loops, whose steps reuse large
            blocks; the CLI sets it for the ``dmm-*`` experiments only, since the single
            arena slows compilation (the LV quick preset: 38 s instead of 34 s).
    """
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        count = num_devices or usable_cores()
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={count}".strip()
    if reuse_freed_memory and os.environ.get("DGM_REUSE_FREED_MEMORY", "1") != "0":
        keep_freed_memory()


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, a Slurm or
    container allocation), which ``os.cpu_count()`` ignores; that count where the platform
    has no affinity."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS, Windows
        return max(1, os.cpu_count() or 1)


def set_host_device_count(num_devices: int) -> None:
    """Expose ``num_devices`` CPU devices to JAX, so chains (or particles, or batch rows)
    spread over that many cores.

    Call it first thing: before JAX runs any computation (importing JAX is fine). It also
    makes OpenBLAS single-threaded unless the environment says otherwise. On a GPU
    machine it changes only the CPU backend.

    Args:
        num_devices: the number of host devices, usually the number of cores.

    Raises:
        ValueError: ``num_devices`` is not a positive int.
        RuntimeError: JAX has already initialized its devices.

    Example:
        >>> import dgm
        >>> dgm.set_host_device_count(2)  # doctest: +SKIP
    """
    ok = isinstance(num_devices, int) and not isinstance(num_devices, bool)
    if not (ok and num_devices >= 1):
        raise ValueError(f"`num_devices` must be a positive int; got {num_devices!r}")
    if "jax" in sys.modules:
        import jax

        try:
            jax.config.update("jax_num_cpu_devices", num_devices)
        except RuntimeError:
            have = len(jax.devices("cpu"))
            if have != num_devices:
                raise RuntimeError(
                    f"set_host_device_count({num_devices}) came too late: JAX has already "
                    f"initialized {have} CPU device(s); call it before any JAX computation"
                ) from None
    for var in ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    os.environ["JAX_NUM_CPU_DEVICES"] = str(num_devices)  # read when JAX is imported


def keep_freed_memory() -> bool:
    """Make glibc reuse freed memory instead of unmapping it; False where that is not glibc.

    Large blocks come from the heap rather than fresh ``mmap`` regions, and the heap is
    never trimmed, so the process keeps its peak size (the next step reuses those pages).
    One arena: a thread's own arena cannot hold a block over 64 MB and would ``mmap`` it.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    settings = ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, 2**30))
    return all([bool(mallopt(param, value)) for param, value in settings])
