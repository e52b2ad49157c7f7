"""Errors that end a run with one line (app.main turns them into exit codes).

Kept apart from the modules that raise them, so the command line can catch
them without importing what those modules need (numpy, pyarrow, PIL).
"""

from __future__ import annotations

import json
from typing import Any


class PlanError(ValueError):
    """A config value that cannot be rendered; the message is one line."""


def invalid(key: str, value: Any, allowed: str) -> PlanError:
    """The one line of a refused value: invalid {key}={value}: {allowed}."""
    return PlanError(f"invalid {key}={show(value)}: {allowed}")


def one_line(text: Any) -> str:
    """A library's message on one line."""
    return " ".join(str(text).split())


def show(value: Any) -> str:
    """A value as a user would write it: strings quoted, the rest as JSON."""
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, default=str)


class StorageError(RuntimeError):
    """Writing into the output dir failed (full, gone, read-only): the sweep stops."""


class UnsafePath(RuntimeError):
    """A path inside a sweep dir that sweeper will not write or read through (a planted link)."""


class DeviceFailed(RuntimeError):
    """A CUDA error left this process unable to render on (an illegal address, a device-side assert)."""


class RanksDisagree(RuntimeError):
    """The ranks of one launch planned different sweeps."""


class RankLost(RuntimeError):
    """Another rank of the launch died or failed: this one stops too."""


class SubmitFailed(RuntimeError):
    """The cluster refused the array (sbatch said why): nothing was submitted."""


class Interrupted(RuntimeError):
    """Ctrl-C: the batch in flight was finished and stored, the rest is still to do."""

    def __init__(self, out_dir, planned: int) -> None:
        super().__init__(f"interrupted: {out_dir}")
        self.out_dir, self.planned = out_dir, planned
