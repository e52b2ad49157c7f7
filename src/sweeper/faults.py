"""Fault injection for tests: one explicit hook, switched on by the environment.

    SWEEPER_FAULT=render:seed=3     rendering a batch that holds an image with seed 3 raises
    SWEEPER_FAULT=kill:png=2        the process SIGKILLs itself right after its 2nd PNG is stored
    SWEEPER_FAULT=kill:part=1       ... after its 1st manifest part file is stored
    SWEEPER_FAULT=kill:temp=1       ... after writing a temp file, before renaming it (a torn write)

Unset (the normal case) every check is one dict lookup.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from typing import Iterable

_events: Counter[str] = Counter()


def _fault() -> tuple[str, str, str] | None:
    value = os.environ.get("SWEEPER_FAULT")
    if not value:
        return None
    kind, _, rest = value.partition(":")
    key, _, arg = rest.partition("=")
    return kind, key, arg


class InjectedFault(RuntimeError):
    pass


def before_render(specs: Iterable) -> None:
    fault = _fault()
    if fault and fault[0] == "render" and any(str(getattr(spec, fault[1], None)) == fault[2] for spec in specs):
        raise InjectedFault(f"injected fault for {fault[1]}={fault[2]}")


def event(name: str) -> None:
    """Count an event (png, part, temp); die here if SWEEPER_FAULT says so."""
    fault = _fault()
    if fault and fault[0] == "kill" and fault[1] == name:
        _events[name] += 1
        if _events[name] == int(fault[2]):
            os.kill(os.getpid(), signal.SIGKILL)
