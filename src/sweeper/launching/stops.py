"""Stops by signal: SIGTERM (`timeout`, batch systems, CI) and SIGHUP (a closed terminal) stop a
run as Ctrl-C does: the batch in flight is stored, the manifest merged, the report written.

Each is passed on to whatever handles SIGINT at that moment (a run's "stop after
this batch", or Python's KeyboardInterrupt), so every code path that handles
Ctrl-C handles them too; the exit code says which signal it was (128 + its number).
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Any, Iterator

OTHERS = (signal.SIGTERM, signal.SIGHUP)
SIGNALS = (signal.SIGINT, *OTHERS)

_received: list[int] = []  # the signals of this command, in order
_active = False  # inside as_ctrl_c, with SIGTERM not ignored


def _as_ctrl_c(signum: int, frame: Any) -> None:
    _received.append(signum)
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:
        return
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


def _note_ctrl_c(signum: int, frame: Any) -> None:
    _received.append(signum)
    signal.default_int_handler(signum, frame)


@contextlib.contextmanager
def as_ctrl_c() -> Iterator[None]:
    """For one command: SIGTERM and SIGHUP act as Ctrl-C. A signal ignored when we start (SIGHUP under
    nohup) stays ignored."""
    global _active
    _received.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {number: signal.getsignal(number) for number in SIGNALS}
    if previous[signal.SIGINT] is signal.default_int_handler:
        signal.signal(signal.SIGINT, _note_ctrl_c)
    for number in OTHERS:
        if previous[number] is not signal.SIG_IGN:
            signal.signal(number, _as_ctrl_c)
    _active = previous[signal.SIGTERM] is not signal.SIG_IGN
    try:
        yield
    finally:
        _active = False
        for number, handler in previous.items():
            signal.signal(number, handler)


def reclaim() -> None:
    """After a library took SIGTERM over (ray.init makes it exit at once): it acts as Ctrl-C again."""
    if _active and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _as_ctrl_c)


@contextlib.contextmanager
def held() -> Iterator[None]:
    """These signals wait while processes are started: the children inherit them blocked, so one
    sent to the whole process group (a terminal, `timeout`) cannot end a worker that is still
    importing, nor multiprocessing's resource tracker (which unblocks only SIGINT and SIGTERM)."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def ignore() -> None:
    """In a worker started under `held` whose parent says when to stop: none of these signals ends it mid-batch."""
    for number in SIGNALS:
        signal.signal(number, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def name() -> str:
    """The signal that stopped this command: `Ctrl-C`, `SIGTERM` or `SIGHUP`."""
    number = _received[0] if _received else signal.SIGINT
    return "Ctrl-C" if number == signal.SIGINT else signal.Signals(number).name


def exit_code() -> int:
    """As a shell reports a process ended by the signal: 128 + its number (130 for Ctrl-C)."""
    return 128 + (_received[0] if _received else signal.SIGINT)
