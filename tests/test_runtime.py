"""Process settings: glibc keeps freed memory, so a repeated large allocation is reused."""

import subprocess
import sys

import pytest

_PROBE = """
import ctypes, resource, sys
from dgm._runtime import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def touch(size):
    block = libc.malloc(size)
    ctypes.memset(block, 1, size)
    libc.free(block)

touch(80 << 20)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch(80 << 20)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_keep_freed_memory_reuses_a_freed_80_mb_block():
    """Without it glibc maps fresh pages (about 20,000 faults); with it, almost none."""
    assert _faults("default") > 10_000
    assert _faults("keep") < 1_000


def test_one_device_per_core_the_process_may_use(monkeypatch):
    """`taskset -c 0` or a Slurm allocation of 16 cores on a 128-core node: the default
    device count follows the affinity, not os.cpu_count()."""
    from dgm import _runtime

    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_foo=1")
    monkeypatch.setattr(_runtime.os, "cpu_count", lambda: 128)
    monkeypatch.setattr(_runtime.os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    _runtime.configure_cpu()
    assert _runtime.os.environ["XLA_FLAGS"].split() == [
        "--xla_cpu_foo=1",
        "--xla_force_host_platform_device_count=16",
    ]
    monkeypatch.delattr(_runtime.os, "sched_getaffinity")  # no affinity: every core
    assert _runtime.usable_cores() == 128
