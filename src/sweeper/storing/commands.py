"""Commands: every command that wrote a sweep dir, one JSON line each in `commands.jsonl`.

Two commands with the same keys and other values share a sweep dir (its name
comes from the keys). Each gets its own range of job numbers: the first
command's jobs are 0..N-1, the next one's follow; the same command run again
(to resume) keeps its numbers. The report lists the commands.

The file may come from someone else (a shared sweep dir): it is read as data,
bounded, and lines that do not parse are skipped.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from pathlib import Path
from typing import Any, Sequence

from sweeper.storing.bounds import loads_json
from sweeper.errors import UnsafePath
from sweeper.storing.files import read_inside, write_atomic

COMMANDS_FILE = "commands.jsonl"
MAX_BYTES = 4 << 20  # ~10,000 commands; a larger file is not ours to read


def read(sweep_dir: Path) -> list[dict[str, Any]]:
    """The commands recorded in the dir, oldest first (none when there is no readable file)."""
    try:  # opened with no link followed, a regular file of bounded size
        text = read_inside(Path(sweep_dir), Path(sweep_dir) / COMMANDS_FILE, MAX_BYTES, "a list of commands").decode("utf-8", errors="ignore")
    except (OSError, ValueError, UnsafePath):
        return []
    found = []
    for line in text.splitlines():
        try:
            entry = loads_json(line)  # bounded nesting: `[` x 100,000 is a RecursionError for json.loads
        except ValueError:
            continue
        if _valid(entry):
            found.append(entry)
    return found


def _valid(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("overrides"), list)
        and all(isinstance(item, str) for item in entry["overrides"])
        and all(isinstance(entry.get(key), int) and not isinstance(entry.get(key), bool) and entry[key] >= 0 for key in ("first_job", "jobs", "images", "to_render"))
        and isinstance(entry.get("at"), str)
    )


def first_job(sweep_dir: Path, overrides: Sequence[str]) -> int:
    """The number of the command's first job: its own if it wrote the dir before, else the next free one."""
    recorded = read(sweep_dir)
    for entry in recorded:
        if entry["overrides"] == list(overrides):
            return entry["first_job"]
    return max((entry["first_job"] + entry["jobs"] for entry in recorded), default=0)


def running_first_job(sweep_dir: Path) -> int:
    """The first job number of the command now rendering into the dir: the last one recorded
    (our sweeper records a command before it launches any job)."""
    recorded = read(sweep_dir)
    return recorded[-1]["first_job"] if recorded else 0


def record(sweep_dir: Path, overrides: Sequence[str], first: int, jobs: int, images: int, to_render: int) -> None:
    """Add the command now starting to the dir's list (rewritten whole, atomically)."""
    entry = {
        "at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "overrides": list(overrides),
        "first_job": first,
        "jobs": jobs,
        "images": images,
        "to_render": to_render,
    }
    lines = [json.dumps(old, ensure_ascii=False) for old in read(sweep_dir)] + [json.dumps(entry, ensure_ascii=False)]
    write_atomic(Path(sweep_dir) / COMMANDS_FILE, ("\n".join(lines) + "\n").encode("utf-8"))


def command_line(overrides: Sequence[str]) -> str:
    return shlex.join(["python", "-m", "sweeper", "-m", *overrides])
