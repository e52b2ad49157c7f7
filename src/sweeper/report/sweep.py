"""A sweep dir's manifest as the report reads it: rows, their labels, the swept keys and the axes."""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import pyarrow as pa

from sweeper.storing import manifest
from sweeper.storing.bounds import load_plain_yaml, read_regular, read_table
from sweeper.errors import UnsafePath
from sweeper.storing.files import is_regular_inside
from sweeper.launching.run import AXES, PLAN_FILE

# Columns written as the key they follow when that key was left unset (manifest.row): an axis only where they differ from it.
FOLLOWS = {"prompt_2": "prompt", "negative_prompt_2": "negative_prompt"}
# Negative prompts that planning leaves unset where guidance is 1 or less (no classifier-free guidance):
# with one value per guidance value, part of the guidance axis, not an axis of their own.
WITH_GUIDANCE = ("negative_prompt", "negative_prompt_3")
# Columns that say what an image is; two sweeps' images match when these agree.
MATCH_COLUMNS = [name for name in manifest.SPEC_COLUMNS if name not in {"job_num", "overrides"}]
ENVIRONMENT = ["sweeper", "diffusers", "torch", "device", "host", "dtype", "world_size", "batch_size", "model_id", "model_revision", "refiner_id"]
COMPARED = MATCH_COLUMNS + [name for name in ENVIRONMENT if name not in MATCH_COLUMNS]


class ReportError(ValueError):
    """A user error (no manifest, unknown column...): one line, exit status 2."""


def label(value: Any) -> str:
    """How a manifest value reads in the report and in axis labels."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, list):  # a size pair: 1024, 1024
        return ", ".join(label(item) for item in value)
    if isinstance(value, datetime):
        return value.isoformat(timespec="seconds")
    return str(value)


def sort_key(value: Any, text_order: dict[str, int] | None = None) -> tuple:
    """Numbers in numeric order, lists item by item, then text (in `text_order`, the order the
    sweep gave it, else by label), nulls last."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, value)
    if isinstance(value, list):
        return (1, tuple(sort_key(item) for item in value))
    if value is None:
        return (3,)
    text = label(value)
    return (2, text_order.get(text, len(text_order)) if text_order is not None else 0, text)


@dataclass
class Sweep:
    """A sweep dir's manifest rows (best row per image) and their labels."""

    dir: Path
    rows: list[dict[str, Any]]
    columns: list[str]
    planned: set[str] | None = None  # the ids of every image the sweep asks for (its plan.parquet), if known
    text: list[dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        self._first: dict[str, dict[str, Any]] = {}  # per column: label -> a value, in the order first seen
        self.text = []

    @classmethod
    def of(cls, sweep_dir: Path, table: pa.Table, planned: set[str] | None) -> Sweep:
        """The sweep of a manifest table, labelled column by column: each distinct value once
        (100,000 rows hold a few hundred values). Rows come in job order, so values in the
        order first seen are the sweep's own order."""
        sweep = cls(sweep_dir, table.to_pylist(), table.column_names, planned)
        columns = []
        for name in sweep.columns:
            column = table.column(name)
            if pa.types.is_list(column.type):  # no dictionary encoding for lists: few rows have them set
                encoded = pa.array([None if value is None else json.dumps(value) for value in column.to_pylist()]).dictionary_encode("encode")
                values = [None if value is None else json.loads(value) for value in encoded.dictionary.to_pylist()]
            else:
                encoded = column.combine_chunks().dictionary_encode("encode")
                values = encoded.dictionary.to_pylist()
            labels = [label(value) for value in values]
            sweep._first[name] = {}
            for text, value in zip(labels, values):
                sweep._first[name].setdefault(text, value)
            columns.append([labels[index] for index in encoded.indices.to_pylist()])
        sweep.text = [dict(zip(sweep.columns, texts)) for texts in zip(*columns)]
        return sweep

    @property
    def name(self) -> str:
        return self.dir.resolve().name

    def values(self, column: str) -> list[Any]:
        """Distinct values of a column, in display order."""
        if column not in self._values:  # sorted when asked: ids, paths and times have a value per image
            found = self._first[column]
            order = {text: n for n, text in enumerate(found)}
            self._values[column] = sorted(found.values(), key=lambda value: sort_key(value, order))
        return self._values[column]

    def labels(self, column: str) -> list[str]:
        return [label(value) for value in self.values(column)]

    def constant(self, column: str) -> bool:
        return len(self._first[column]) == 1

    @cached_property
    def _values(self) -> dict[str, list[Any]]:
        return {}

    def rank(self, column: str, value: Any) -> int:
        """Where `value` comes among the column's values, in display order."""
        if column not in self._ranks:
            self._ranks[column] = {text: n for n, text in enumerate(self.labels(column))}
        return self._ranks[column].get(label(value), len(self._ranks[column]))

    @cached_property
    def _ranks(self) -> dict[str, dict[str, int]]:
        return {}

    @cached_property
    def swept(self) -> list[str]:
        """The axes: config keys whose value varies across the images, in the order the start line
        names them (run.AXES); never a column derived from one (lora_sha, init_image_sha, ...)."""
        return [name for name in AXES if name in self._first and not self.constant(name) and not self._follows(name)]

    def _follows(self, name: str) -> bool:
        leader = FOLLOWS.get(name)
        if leader is not None and all(text[name] == text[leader] for text in self.text):
            return True
        return name in WITH_GUIDANCE and "guidance" in self._first and self._one_per(name, "guidance")

    def _one_per(self, name: str, leader: str) -> bool:
        """Whether each value of `leader` comes with one value of `name`."""
        seen: dict[str, str] = {}
        return all(seen.setdefault(text[leader], text[name]) == text[name] for text in self.text)

    def mean_seconds(self, indices: Iterable[int]) -> float | None:
        """Mean render seconds per image (loads and warm-up calls are apart: every image's call ran warm)."""
        timed = [self.rows[i]["seconds"] for i in indices if self.rows[i]["status"] == "ok" and self.rows[i]["seconds"] is not None]
        return sum(timed) / len(timed) if timed else None

    @property
    def still_to_do(self) -> int | None:
        """Planned images without an ok row yet (None when the plan is not known)."""
        if self.planned is None:
            return None
        return len(self.planned - {row["image_id"] for row in self.rows if row["status"] == "ok"})

    def by_value(self, column: str) -> dict[str, list[int]]:
        """Row indices per value label, in display order."""
        groups: dict[str, list[int]] = {text: [] for text in self.labels(column)}
        for index, text in enumerate(self.text):
            groups[text[column]].append(index)
        return groups


def load_sweep(sweep_dir: Path, table: pa.Table | None = None) -> Sweep:
    """Read a sweep (or run) dir's manifest, merged with any part files not yet folded in
    (or take `table`, just merged)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise ReportError(f"{sweep_dir} is not a directory")
    try:
        table = manifest.read(sweep_dir) if table is None else table
    except (OSError, pa.ArrowException, UnsafePath) as error:
        raise ReportError(f"cannot read the manifest in {sweep_dir}: {error}") from None
    if table.num_rows == 0:
        raise ReportError(f"no images in {sweep_dir}: {manifest.MANIFEST} is missing or empty")
    return Sweep.of(sweep_dir, table, _planned(sweep_dir))


def _planned(sweep_dir: Path) -> set[str] | None:
    """The image ids of the sweep's plan.parquet, if it has a readable one of its own."""
    path = sweep_dir / PLAN_FILE
    if not is_regular_inside(path, sweep_dir):
        return None
    try:
        return set(read_table(path, ["image_id"]).column("image_id").to_pylist())
    except (OSError, ValueError, KeyError, pa.ArrowException) as error:
        print(f"sweeper: warning: skipping {path}: {error}", file=sys.stderr, flush=True)
        return None


def choose_axes(sweep: Sweep, x: str | None = None, y: str | None = None) -> tuple[str | None, str | None]:
    """Check --x/--y against the manifest's columns; fill the missing ones with the most varied swept keys
    (of equally varied ones the later in the axes' order goes along x: seeds, named last, become the columns)."""
    for flag, column in (("--x", x), ("--y", y)):
        if column is not None and column not in sweep.columns:
            swept = ", ".join(sweep.swept) or "none"
            raise ReportError(f"{flag}: no column {column!r} in the manifest (swept here: {swept}); allowed: {', '.join(sweep.columns)}")
    if x is not None and x == y:
        raise ReportError(f"--x and --y are both {x!r}; pick two columns")
    order = {name: n for n, name in enumerate(sweep.swept)}
    free = [name for name in sorted(sweep.swept, key=lambda name: (-len(sweep.values(name)), -order[name])) if name not in (x, y)]
    if x is None and free:
        x = free.pop(0)
    if y is None and free:
        y = free.pop(0)
    return x, y


MAX_YAML_BYTES = 16 * 2**20  # Hydra's multirun.yaml of a sweep: a few KB


def sweep_command(sweep_dir: Path) -> str | None:
    """The command that made the dir, from the overrides Hydra recorded (multirun.yaml, or a run's .hydra/overrides.yaml).

    A received sweep's YAML is data: bounded in size, nesting and aliases; one that is not is skipped with a warning.
    """
    multirun, run = Path(sweep_dir) / "multirun.yaml", Path(sweep_dir) / ".hydra" / "overrides.yaml"
    path = multirun if os.path.lexists(multirun) else run if os.path.lexists(run) else None
    if path is None:
        return None
    try:
        config = load_plain_yaml(read_regular(path, MAX_YAML_BYTES, "a YAML file", follow_links=False).decode("utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as error:  # UnicodeDecodeError too
        print(f"sweeper: warning: skipping {path}: {' '.join(str(error).split())[:300]}", file=sys.stderr, flush=True)
        return None
    overrides, command = config, ["python", "-m", "sweeper"]
    if path == multirun:
        for key in ("hydra", "overrides", "task"):
            overrides = overrides.get(key) if isinstance(overrides, dict) else None
        command.append("-m")
    if not isinstance(overrides, list) or not all(isinstance(item, (str, int, float)) for item in overrides):
        return None
    return shlex.join(command + [str(item) for item in overrides])
