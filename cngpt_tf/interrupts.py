"""Signals that end a CLI run: Ctrl-C (SIGINT), SIGTERM and SIGHUP.

`cli.run_main` wraps each run in `handled()`: each of these signals raises `Interrupted` (a
KeyboardInterrupt), so every `finally` and context manager cleans up as for Ctrl-C, and is also
recorded here. The record matters because a KeyboardInterrupt raised inside a `__del__`, a callback or
TensorFlow's cleanup is printed as "Exception ignored" and lost: library code calls `check()` before
an irreversible step (the final rename of an output folder), and `run_main` exits with the signal's
code even when the run returned normally. Library code imports this module, never `cli`.
"""

from __future__ import annotations

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)

_received: int | None = None  # the first signal of the current run
_count = 0  # signals received in the current run
_held = 0  # > 0: signals are only recorded, not raised


class Interrupted(KeyboardInterrupt):
    """Raised by the handlers of `handled()`; `signum` is the signal that arrived."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def exit_code(signum: int) -> int:
    """The shell's code for a process ended by `signum`: 130 for SIGINT, 143 SIGTERM, 129 SIGHUP."""
    return 128 + int(signum)


def received() -> int | None:
    """The first signal that arrived during the current `handled()` block, else None."""
    return _received


def check() -> None:
    """Raise `Interrupted` if a signal arrived, even one whose KeyboardInterrupt was swallowed."""
    if _received is not None:
        raise Interrupted(_received)


def hold() -> None:
    """From now until the end of the `handled()` block, signals are only recorded (`run_main`'s report)."""
    global _held
    _held += 1


@contextlib.contextmanager
def deferred():
    """Signals arriving in this block are recorded and raised when it ends, so the block (making a temp
    folder and remembering it, a cleanup, two renames that go together) is never cut in half. When the
    block ends with an exception, that one goes on (the record still decides the exit code)."""
    global _held
    count = _count
    _held += 1
    try:
        yield
    finally:
        _held -= 1
    if _count != count and not _held:
        raise Interrupted(_received)


def _handler(signum, frame):
    global _received, _count
    _count += 1
    if _received is None:
        _received = signum
    if not _held:
        raise Interrupted(signum)


@contextlib.contextmanager
def handled():
    """Install the handlers for the block (main thread only) and restore the previous ones after.

    A signal that is ignored when the block starts (`nohup` ignores SIGHUP, a shell's background job
    SIGINT) stays ignored. The record is cleared on entry and on exit."""
    global _received, _count, _held
    _received, _count, _held = None, 0, 0
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in SIGNALS:
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, _handler)
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, signal.SIG_DFL if old is None else old)  # None: set outside Python
        _received, _count, _held = None, 0, 0
