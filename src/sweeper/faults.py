"""Fault injection for tests: one explicit hook, switched on by the environment.

    SWEEPER_FAULT=render:seed=3     rendering a batch that holds an image with seed 3 raises
    SWEEPER_FAULT=die:seed=3        the process SIGKILLs itself rendering a batch that holds an image with seed 3
    SWEEPER_FAULT=oom:batch=2       rendering a batch of more than 2 images runs out of memory
    SWEEPER_FAULT=nan:seed=3        the image with seed 3 comes out as NaN (the fp16 VAE trap)
    SWEEPER_FAULT=enospc:write=2    the 2nd file write (PNG or manifest part) fails: no space left on device
    SWEEPER_FAULT=kill:png=2        the process SIGKILLs itself right after its 2nd PNG is stored
    SWEEPER_FAULT=kill:part=1       ... after its 1st manifest part file is stored
    SWEEPER_FAULT=kill:temp=1       ... after writing a temp file, before renaming it (a torn write)
    SWEEPER_FAULT=score:all=1       every scoring call runs out of memory (rendering is untouched)

    SWEEPER_FAULT_WORKER=1          only in the SLURM array's worker 1 (sweeper/launching/slurm.py), or Ray actor 1

Unset (the normal case) every check is one dict lookup.
"""

from __future__ import annotations

import errno
import os
import signal
from collections import Counter
from typing import Sequence

_events: Counter[str] = Counter()


def environment() -> dict[str, str]:
    """The fault settings of this process, for workers that do not inherit its environment (Ray actors)."""
    return {name: value for name, value in os.environ.items() if name in ("SWEEPER_FAULT", "SWEEPER_FAULT_WORKER")}


def _fault() -> tuple[str, str, str] | None:
    value = os.environ.get("SWEEPER_FAULT")
    if not value:
        return None
    worker = os.environ.get("SWEEPER_FAULT_WORKER")
    if worker is not None and worker != os.environ.get("SWEEPER_WORKER"):
        return None
    kind, _, rest = value.partition(":")
    key, _, arg = rest.partition("=")
    return kind, key, arg


class InjectedFault(RuntimeError):
    pass


def _matches(spec, fault: tuple[str, str, str]) -> bool:
    return str(getattr(spec, fault[1], None)) == fault[2]


def before_render(specs: Sequence) -> None:
    fault = _fault()
    if not fault:
        return
    if fault[0] == "render" and any(_matches(spec, fault) for spec in specs):
        raise InjectedFault(f"injected fault for {fault[1]}={fault[2]}")
    if fault[0] == "die" and any(_matches(spec, fault) for spec in specs):
        os.kill(os.getpid(), signal.SIGKILL)
    if fault[0] == "oom" and len(specs) > int(fault[2]):
        import torch

        raise torch.OutOfMemoryError(f"injected: a batch of {len(specs)} does not fit")


def before_score() -> None:
    fault = _fault()
    if fault and fault[0] == "score":
        import torch

        raise torch.OutOfMemoryError("injected: scoring does not fit")


def after_render(specs: Sequence, arrays) -> None:
    fault = _fault()
    if fault and fault[0] == "nan":
        for index, spec in enumerate(specs):
            if _matches(spec, fault):
                arrays[index][:] = float("nan")


def event(name: str) -> None:
    """Count an event (png, part, temp, write); die or fail here if SWEEPER_FAULT says so."""
    fault = _fault()
    if fault and fault[0] in ("kill", "enospc") and fault[1] == name:
        _events[name] += 1
        if _events[name] == int(fault[2]) and fault[0] == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if _events[name] >= int(fault[2]) and fault[0] == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
