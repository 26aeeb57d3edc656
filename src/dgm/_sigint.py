"""The CLI's Ctrl-C handler: a ``KeyboardInterrupt`` that is not lost on its way.

Python raises ``KeyboardInterrupt`` wherever the main thread happens to be, and in two
places it can vanish, so that the run goes on to its end and exits 0:

- inside a garbage-collector callback (JAX registers one), where Python prints the
  exception and drops it;
- inside a bare ``try: ... except:`` of a library, which catches it and goes on. JAX's
  tracing has several (broadcast-shape caching, ``jnp.where``'s empty-shape check); a
  Ctrl-C during the first compilation of a run landed in one about once in 300 presses.

So :func:`handler` does not raise inside a gc callback but sends the signal again a moment
later, and after it raises it sends the signal again every :data:`RESEND_S` seconds until
the interrupt is *acknowledged*: the CLI caught it, or a loop that turns Ctrl-C into a
clean stop (:func:`dgm.inference._compiled.run_chunks`) took it. Code that is
propagating the interrupt meanwhile may see it again (a second Ctrl-C, as if pressed).
No JAX import here.
"""

import gc
import os
import signal
import sys
import threading

RESEND_S = 0.5  # seconds between repeats of an unacknowledged interrupt
_GC_RETRY_S = 0.05

_lock = threading.Lock()
_pending = False  # raised and not yet acknowledged
_resends = 0  # repeats sent and not yet handled


def acknowledge() -> None:
    """The interrupt reached code that acts on it: stop repeating it."""
    global _pending
    with _lock:
        _pending = False


def _send_again() -> None:
    global _resends
    with _lock:
        if not _pending:
            return
        _resends += 1
    os.kill(os.getpid(), signal.SIGINT)


def _later(seconds: float) -> None:
    timer = threading.Timer(seconds, _send_again)
    timer.daemon = True
    timer.start()


def handler(signum, frame) -> None:
    """SIGINT: raise ``KeyboardInterrupt`` (see the module's text for when it doesn't)."""
    global _pending, _resends
    with _lock:
        repeat = _resends > 0
        _resends = max(_resends - 1, 0)
        if repeat and not _pending:  # acknowledged while the repeat was on its way
            return
        _pending = True
    codes = {getattr(callback, "__code__", None) for callback in gc.callbacks}
    while frame is not None:
        if frame.f_code in codes:
            _later(_GC_RETRY_S)
            return
        frame = frame.f_back
    _later(RESEND_S)
    raise KeyboardInterrupt


def note(message: str) -> None:
    """A library's line that Ctrl-C stopped its run early (the draws so far kept): on
    stderr, unless the CLI's :func:`handler` is installed, since the CLI then ends with its
    own one line."""
    if signal.getsignal(signal.SIGINT) is not handler:
        print(message, file=sys.stderr)


def install() -> bool:
    """Install :func:`handler` if SIGINT has Python's own handler in the main thread (not
    where it is ignored, as in a shell's background job). Returns whether it did."""
    if threading.current_thread() is not threading.main_thread():
        return False
    if signal.getsignal(signal.SIGINT) is not signal.default_int_handler:
        return False
    _reset()
    signal.signal(signal.SIGINT, handler)
    return True


def uninstall() -> None:
    """Put Python's own handler back; repeats still on their way do nothing."""
    acknowledge()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _reset() -> None:
    """Forget an earlier install's state (a repeat it sent may never have been handled)."""
    global _pending, _resends
    with _lock:
        _pending, _resends = False, 0
