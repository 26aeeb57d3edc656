"""The CLI's Ctrl-C handler (``dgm._sigint``): an interrupt is never lost on its way."""

import gc
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dgm import _sigint

SRC = str(Path(_sigint.__file__).resolve().parents[1])


def _child(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a child Python with Python's own SIGINT handler (a shell's
    background job, such as a CI run, starts it with SIGINT ignored)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    code = "import signal; signal.signal(signal.SIGINT, signal.default_int_handler)\n" + code
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )


def test_ctrl_c_inside_a_gc_callback_is_sent_again_not_lost(monkeypatch):
    """Python drops an exception raised in a garbage-collector callback (JAX registers
    one): there the handler sends SIGINT again instead of raising."""
    sent = []
    monkeypatch.setattr(_sigint.os, "kill", lambda pid, sig: sent.append(sig))
    seen = []

    def callback(phase, info):
        try:
            _sigint.handler(signal.SIGINT, sys._getframe())
            seen.append("returned")
        except KeyboardInterrupt:
            seen.append("raised")

    gc.callbacks.append(callback)
    try:
        gc.collect()
    finally:
        gc.callbacks.remove(callback)
    deadline = time.monotonic() + 5
    while not sent and time.monotonic() < deadline:
        time.sleep(0.01)
    assert seen and set(seen) == {"returned"} and sent and set(sent) == {signal.SIGINT}
    with pytest.raises(KeyboardInterrupt):  # anywhere else it raises at once
        _sigint.handler(signal.SIGINT, sys._getframe())
    _sigint.acknowledge()


# A library's bare `except:` (JAX's tracing has several) swallows the first
# KeyboardInterrupt; the handler's repeat must still stop the loop within seconds.
SWALLOWED = """
import os, signal, sys, time
from dgm import _sigint
assert _sigint.install()
try:
    try:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    except:  # noqa: E722  the library's bare except
        pass
    t0 = time.monotonic()
    while time.monotonic() - t0 < 10:
        time.sleep(0.01)
    print("lost")
except KeyboardInterrupt:
    _sigint.acknowledge()
    print("surfaced after %.2f s" % (time.monotonic() - t0))
"""


def test_an_interrupt_swallowed_by_a_bare_except_is_sent_again():
    out = _child(SWALLOWED)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("surfaced"), out.stdout + out.stderr
    assert float(out.stdout.split()[2]) < 5 * _sigint.RESEND_S


# run_chunks turns Ctrl-C into `interrupted=True`: it takes the interrupt, so no repeat
# may hit the caller while it saves its chains.
TAKEN = """
import os, signal, time
from dgm import _sigint
from dgm.inference._compiled import run_chunks
assert _sigint.install()

def chunk(done, n):
    if done == 2:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(5)
    return n

print(run_chunks(10, 1, chunk))
time.sleep(4 * _sigint.RESEND_S)
print("no repeat")
"""


def test_an_interrupt_taken_by_the_chunk_loop_is_not_repeated():
    out = _child(TAKEN)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["(2, True)", "no repeat"], out.stdout + out.stderr


def test_a_librarys_interrupt_line_is_left_to_the_cli_when_its_handler_is_in_place(capsys):
    """``dgm.sample`` and ``posterior.sample`` say on stderr that Ctrl-C cut their run
    short; under the CLI (its handler installed), the CLI's own line is the only one."""
    _sigint.note("interrupted after 4 of 8 draws")
    assert capsys.readouterr().err == "interrupted after 4 of 8 draws\n"
    assert _sigint.install()
    try:
        _sigint.note("interrupted after 4 of 8 draws")
    finally:
        _sigint.uninstall()
    assert capsys.readouterr().err == ""
