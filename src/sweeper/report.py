"""HTML report of a sweep: X/Y image grids, per-axis tables, timing plots, comparison of two sweeps.

    python -m sweeper.report outputs/sweeps/<name>                  # -> <name>/report.html
    python -m sweeper.report SWEEP --x guidance --y seed --compare OTHER_SWEEP -o cmp.html
    python -m sweeper.report SWEEP --grid grid.png                  # + labelled PNG grid(s)

The report is one static file: inline CSS, JS and SVG, nothing from the
network. It links the images by path relative to itself and shows small
thumbnails cached in `<sweep>/.thumbs/` (made once). The grids are drawn in
the browser from the manifest embedded as JSON, one page at a time, so a
sweep of 10,000 images opens as fast as one of ten; axes, sections and
filters can be changed there. This module imports no torch: it runs at the
end of every multirun.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import re
import shlex
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pyarrow as pa
import yaml  # PyYAML, installed with Hydra: reads the sweep's multirun.yaml

from sweeper import manifest
from sweeper.run import PLAN_FILE
from sweeper.errors import UnsafePath
from sweeper.files import is_regular_inside, open_image, write_atomic
from sweeper.store import IMAGES_DIR, THUMB_EXT, THUMBS_DIR, needs_thumbnail, thumbnail_bytes, thumbnail_path
from sweeper.report_grid import Cell, Grid, write_grid

REPORT = "report.html"
GRID_CELL = 512
PAGE_CELLS = 200  # grid cells per page in the browser
MAX_COLS = 16  # wider grids are cut into blocks of columns
PAGE_PAIRS = 50  # compared pairs per page
MAX_TABLE_ROWS = 200  # longer tables (errors, jobs, axis values) are cut, with a note

# Spec columns that vary with every job or follow from another key: never swept keys.
_NOT_KEYS = {"job_num", "overrides", "model_id", "model_revision", "refiner_id"}
KEY_COLUMNS = [name for name in manifest.SPEC_COLUMNS if name not in _NOT_KEYS]
# Columns that say what an image is; two sweeps' images match when these agree.
MATCH_COLUMNS = [name for name in manifest.SPEC_COLUMNS if name not in {"job_num", "overrides"}]
ENVIRONMENT = ["sweeper", "diffusers", "torch", "device", "host", "dtype", "world_size", "batch_size", "model_id", "model_revision", "refiner_id"]
COMPARED = MATCH_COLUMNS + [name for name in ENVIRONMENT if name not in MATCH_COLUMNS]


class ReportError(ValueError):
    """A user error (no manifest, unknown column...): one line, exit status 2."""


class Raw(str):
    """Markup that is already safe HTML; every other cell is escaped."""


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
    if isinstance(value, list):
        return "[" + ", ".join(label(item) for item in value) + "]"
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
        return self._values[column]

    def labels(self, column: str) -> list[str]:
        return [label(value) for value in self.values(column)]

    def constant(self, column: str) -> bool:
        return len(self.values(column)) == 1

    @cached_property
    def _values(self) -> dict[str, list[Any]]:
        return {
            name: sorted(found.values(), key=lambda value, order={t: n for n, t in enumerate(found)}: sort_key(value, order))
            for name, found in self._first.items()
        }

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
        """Config keys whose value varies across the images."""
        return [name for name in KEY_COLUMNS if not self.constant(name)]

    def mean_seconds(self, indices: Iterable[int]) -> float | None:
        """Mean render seconds per image; warm-up calls (a pipeline's first) count only when nothing else does."""
        timed = [self.rows[i] for i in indices if self.rows[i]["status"] == "ok" and self.rows[i]["seconds"] is not None]
        steady = [row for row in timed if not row.get("warmup")] or timed
        return sum(row["seconds"] for row in steady) / len(steady) if steady else None

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
    from pyarrow import parquet

    path = sweep_dir / PLAN_FILE
    if not is_regular_inside(path, sweep_dir):
        return None
    try:
        return set(parquet.read_table(path, columns=["image_id"]).column("image_id").to_pylist())
    except (OSError, pa.ArrowException, KeyError) as error:
        print(f"sweeper: warning: skipping {path}: {error}", file=sys.stderr, flush=True)
        return None


def choose_axes(sweep: Sweep, x: str | None = None, y: str | None = None) -> tuple[str | None, str | None]:
    """Check --x/--y against the manifest's columns; fill the missing ones with the most varied swept keys."""
    for flag, column in (("--x", x), ("--y", y)):
        if column is not None and column not in sweep.columns:
            swept = ", ".join(sweep.swept) or "none"
            raise ReportError(f"{flag}: no column {column!r} in the manifest (swept here: {swept}); allowed: {', '.join(sweep.columns)}")
    if x is not None and x == y:
        raise ReportError(f"--x and --y are both {x!r}; pick two columns")
    free = [name for name in sorted(sweep.swept, key=lambda name: -len(sweep.values(name))) if name not in (x, y)]
    if x is None and free:
        x = free.pop(0)
    if y is None and free:
        y = free.pop(0)
    return x, y


# Thumbnails


def _regular_files(folder: Path, root: Path) -> dict[str, int]:
    """Name -> mtime of the regular files (no links) of a folder of the sweep dir; {} if it is not one."""
    if folder.is_symlink() or not is_regular_inside(folder / ".", root) and not folder.is_dir():
        return {}
    found = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return {}
    return found


def _make_thumb(source: Path, thumb: Path, root: Path) -> str:
    """'ok' once the thumbnail is written, 'full' when the browser must show the image itself,
    'missing' when `source` is no image of the sweep (a link, a bomb, not a PNG: said on stderr)."""
    try:
        with open_image(source, root) as image:
            data = thumbnail_bytes(image)
    except ValueError as error:
        print(f"sweeper: warning: skipping {error}", file=sys.stderr, flush=True)
        return "missing"
    except OSError:  # a truncated image: the browser gets the full file
        return "full"
    try:
        write_atomic(thumb, data, durable=False)  # a cache: whole for a viewer, not fsynced
        return "ok"
    except (OSError, UnsafePath):  # read-only sweep dir: the browser gets the full image
        return "full"


def image_states(sweep: Sweep) -> list[str]:
    """Per row: 'ok' (thumbnail made or cached), 'full', 'missing' (no file) or 'error' (failed render)."""
    images = _regular_files(sweep.dir / IMAGES_DIR, sweep.dir)  # one listing, not a stat per image
    thumbs = _regular_files(sweep.dir / THUMBS_DIR, sweep.dir)
    states, todo = [], []
    for row in sweep.rows:
        if row["status"] != "ok":
            states.append("error")
            continue
        name = f"{row['image_id']}.png"
        if name not in images:
            states.append("missing")
        elif not needs_thumbnail(row["width"], row["height"]):
            states.append("full")
        elif thumbs.get(f"{row['image_id']}{THUMB_EXT}", -1) >= images[name]:
            states.append("ok")
        else:
            states.append("")
            todo.append((len(states) - 1, (sweep.dir / row["path"], sweep.dir / thumbnail_path(row["image_id"]))))
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for (index, _), state in zip(todo, pool.map(lambda item: _make_thumb(*item[1], sweep.dir), todo)):
                states[index] = state
    return states


# Comparison


@dataclass
class Comparison:
    """Two sweeps matched on the columns they share."""

    differ: list[tuple[str, str, str]]  # column, value in A, value in B: constant in each, different between
    shown: list[str]  # the matched columns that vary: what tells one pair from the next
    pairs: list[tuple[list[int], list[int]]]  # row indices in A and in B that agree on every matched column
    only_a: int
    only_b: int


def compare(a: Sweep, b: Sweep) -> Comparison:
    """Pair the images of two sweeps that agree on every spec column except the ones that tell the sweeps apart."""
    differ = [
        (name, a.text[0][name], b.text[0][name])
        for name in COMPARED
        if a.constant(name) and b.constant(name) and a.text[0][name] != b.text[0][name]
    ]
    differing = {name for name, _, _ in differ}
    match_on = [name for name in MATCH_COLUMNS if name not in differing]

    def groups(sweep: Sweep) -> dict[tuple[str, ...], list[int]]:
        found: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for index, text in enumerate(sweep.text):
            found[tuple(text[name] for name in match_on)].append(index)
        return found

    in_a, in_b = groups(a), groups(b)
    shown = [name for name in match_on if not (a.constant(name) and b.constant(name))]
    pairs = [(rows, in_b[key]) for key, rows in in_a.items() if key in in_b]
    pairs.sort(key=lambda pair: tuple(a.rank(name, a.rows[pair[0][0]][name]) for name in shown))
    only_a = sum(len(rows) for key, rows in in_a.items() if key not in in_b)
    only_b = sum(len(rows) for key, rows in in_b.items() if key not in in_a)
    return Comparison(differ, shown, pairs, only_a, only_b)


# Hydra's record of the sweep


def sweep_command(sweep_dir: Path) -> str | None:
    """The command that made the dir, from the overrides Hydra recorded (multirun.yaml, or a run's .hydra/overrides.yaml)."""
    multirun, run = Path(sweep_dir) / "multirun.yaml", Path(sweep_dir) / ".hydra" / "overrides.yaml"
    try:
        if multirun.is_file():
            config = yaml.safe_load(multirun.read_text(encoding="utf-8")) or {}
            overrides, command = ((config.get("hydra") or {}).get("overrides") or {}).get("task"), ["python", "-m", "sweeper", "-m"]
        elif run.is_file():
            overrides, command = yaml.safe_load(run.read_text(encoding="utf-8")), ["python", "-m", "sweeper"]
        else:
            return None
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    return shlex.join(command + [str(item) for item in overrides]) if isinstance(overrides, list) else None


# HTML pieces


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value))


def table(head: list[str], rows: Iterable[list[Any]], cls: str = "", total: int | None = None) -> str:
    """An HTML table; cells are escaped unless Raw. `total` notes rows left out."""
    rows = list(rows)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    note = ""
    if total is not None and total > len(rows):
        note = f'<p class="note">{len(rows)} of {total} shown.</p>'
    header = "".join(f'<th scope="col">{esc(cell)}</th>' for cell in head)
    return f'<table class="{cls}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{note}'


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"


def bar_chart(title: str, labels: list[str], values: list[float | None], unit: str = "s") -> str:
    """A horizontal bar chart as inline SVG, one bar per label."""
    bar, gap, width, value_width = 18, 6, 460, 70
    label_width = min(170, 12 + 7 * max(len(text) for text in labels))
    top = max((value for value in values if value is not None), default=0) or 1
    scale = (width - label_width - value_width) / top
    height = len(labels) * (bar + gap) + gap
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>'
    ]
    for n, (text, value) in enumerate(zip(labels, values)):
        y = gap + n * (bar + gap)
        short = text if len(text) <= 24 else text[:23] + "…"
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end"><title>{esc(text)}</title>{esc(short)}</text>'
        )
        if value is not None:
            length = max(1.0, value * scale)
            parts.append(f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar}" rx="2"/>')
            parts.append(f'<text x="{label_width + length + 4:.1f}" y="{y + 13}">{value:.3g} {unit}</text>')
        else:
            parts.append(f'<text x="{label_width + 4}" y="{y + 13}">no timing</text>')
    parts.append("</svg>")
    return "".join(parts)


def _overview(sweep: Sweep, states: list[str]) -> str:
    counts = Counter(states)
    ok = counts["ok"] + counts["full"]
    starts = [row["started_at"] for row in sweep.rows if row["started_at"] is not None]
    ends = [row["finished_at"] for row in sweep.rows if row["finished_at"] is not None]
    total = sum(row["seconds"] or 0 for row in sweep.rows)
    loads = sum(row.get("load_seconds") or 0 for row in sweep.rows if row["batch_index"] in (0, None))
    facts = [("images", f"{len(sweep.rows)} ({ok} ok, {counts['error']} failed, {counts['missing']} files missing)")]
    if sweep.still_to_do:
        facts.append(("still to do", f"{sweep.still_to_do} of {len(sweep.planned)} planned images: run the same command to render them"))
    facts += [
        ("swept", " × ".join(f"{name} ({len(sweep.values(name))})" for name in sweep.swept) or "nothing varies"),
        ("render time", f"{seconds_text(total)} in all, {seconds_text(sweep.mean_seconds(range(len(sweep.rows))))} per image"
                        f"; model loads {seconds_text(loads)} apart; a pipeline's first call (warm-up) is left out of the means"),
    ]
    if starts and ends:
        facts.append(("wall clock", f"{label(min(starts))} → {label(max(ends))} ({seconds_text((max(ends) - min(starts)).total_seconds())})"))
    items = "".join(f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in facts)
    return f'<dl class="facts">{items}</dl>'


def _axes_section(sweep: Sweep) -> str:
    if not sweep.swept:
        return '<section id="axes"><h2>Per axis</h2><p class="note">Nothing varies in this sweep.</p></section>'
    blocks = []
    for name in sweep.swept:
        groups = sweep.by_value(name)
        means = {text: sweep.mean_seconds(rows) for text, rows in groups.items()}
        rows = [
            [text, len(rows), sum(sweep.rows[i]["status"] == "ok" for i in rows), sum(sweep.rows[i]["status"] != "ok" for i in rows), seconds_text(means[text])]
            for text, rows in list(groups.items())[:MAX_TABLE_ROWS]
        ]
        chart = ""
        if len(groups) <= 40:
            chart = bar_chart(f"mean seconds per image by {name}", list(means), list(means.values()))
        blocks.append(
            f'<div class="axis"><h3>{esc(name)}</h3>'
            + table([name, "images", "ok", "failed", "s / image"], rows, "counts", total=len(groups))
            + chart
            + "</div>"
        )
    return '<section id="axes"><h2>Per axis: counts and time per image</h2><div class="axes">' + "".join(blocks) + "</div></section>"


def _errors_section(sweep: Sweep) -> str:
    failed = [index for index, row in enumerate(sweep.rows) if row["status"] != "ok"]
    if not failed:
        return '<section id="errors"><h2>Errors</h2><p class="note">No failed images.</p></section>'
    messages = Counter(sweep.rows[i]["error"] or "(no message)" for i in failed)
    summary = table(["error", "images"], messages.most_common(MAX_TABLE_ROWS), "errors", total=len(messages))
    keys = sweep.swept
    rows = [
        [sweep.rows[i]["image_id"], *(sweep.text[i][name] for name in keys), Raw(f"<pre>{esc(sweep.rows[i]['error'] or '')}</pre>")]
        for i in failed[:MAX_TABLE_ROWS]
    ]
    detail = table(["image_id", *keys, "error"], rows, "errors", total=len(failed))
    return f'<section id="errors"><h2>Errors ({len(failed)})</h2>{summary}<details><summary>Failed images</summary>{detail}</details></section>'


def _overrides_section(sweep: Sweep) -> str:
    recorded = sweep_command(sweep.dir)
    command = f"<pre>{esc(recorded)}</pre>" if recorded else '<p class="note">No multirun.yaml in the sweep dir.</p>'
    jobs: dict[tuple[Any, str], int] = Counter((row["job_num"], row["overrides"] or "") for row in sweep.rows)
    ordered = sorted(jobs.items(), key=lambda item: sort_key(item[0][0]))
    rows = [[label(job), Raw(f"<code>{esc(overrides)}</code>"), count] for (job, overrides), count in ordered[:MAX_TABLE_ROWS]]
    return (
        '<section id="overrides"><h2>Overrides</h2><h3>Sweep (Hydra)</h3>'
        + command
        + f"<details><summary>Jobs ({len(jobs)})</summary>"
        + table(["job", "overrides", "images"], rows, "jobs", total=len(jobs))
        + "</details></section>"
    )


def _environment_section(sweep: Sweep) -> str:
    rows = []
    for name in ENVIRONMENT:
        counts = Counter(text[name] for text in sweep.text)
        rows.append([name, ", ".join(f"{value} ({count})" if len(counts) > 1 else value for value, count in counts.most_common())])
    return '<section id="environment"><h2>Versions and devices</h2>' + table(["column", "values (images)"], rows, "env") + "</section>"


def _compare_section(a: Sweep, b: Sweep, comparison: Comparison) -> str:
    differ = (
        table(["column", f"A: {a.name}", f"B: {b.name}"], [list(row) for row in comparison.differ], "differ")
        if comparison.differ
        else '<p class="note">No column is constant in both sweeps with different values.</p>'
    )
    swept_a, swept_b = ", ".join(a.swept) or "nothing", ", ".join(b.swept) or "nothing"
    summary = (
        f"<p>A: <code>{esc(a.dir)}</code> ({len(a.rows)} images, sweeps {esc(swept_a)})<br>"
        f"B: <code>{esc(b.dir)}</code> ({len(b.rows)} images, sweeps {esc(swept_b)})</p>"
        f'<p class="compare-counts">{len(comparison.pairs)} matched pairs; {comparison.only_a} images only in A, '
        f"{comparison.only_b} only in B. Matched on equal {esc(', '.join(comparison.shown) or 'spec columns')}.</p>"
    )
    return (
        f'<section id="compare"><h2>Compare with {esc(b.name)}</h2>{summary}'
        f"<h3>Parameters that differ</h3>{differ}"
        '<h3>Side by side</h3><div class="pager" id="compare-pager"></div><div id="compare-pairs" data-scope></div>'
        "</section>"
    )


def _sweep_data(sweep: Sweep, states: list[str], out_dir: Path, axes: list[str]) -> dict[str, Any]:
    varying = [name for name in sweep.columns if not sweep.constant(name)]
    return {
        "name": sweep.name,
        "base": relative_url(sweep.dir, out_dir),
        "thumbs": f"{THUMBS_DIR}/",
        "ext": THUMB_EXT,
        "order": sweep.columns,
        "columns": varying,
        "rows": [[text[name] for name in varying] for text in sweep.text],
        "constants": {name: sweep.text[0][name] for name in sweep.columns if name not in varying},
        "state": states,
        "swept": sweep.swept,
        "values": {name: sweep.labels(name) for name in axes},
        "short": {name: short_labels(sweep.labels(name)) for name in axes},
    }


SHORT_LABEL = 28  # characters of an axis label before it is cut


def short_labels(labels: list[str], width: int = SHORT_LABEL) -> dict[str, str]:
    """Long labels cut to where they differ, the full text stays in the tooltip:
    prompts of one template vary in a word or at their end (`a blue car, emerald gr…`, `…a man, watercolor`)."""
    if not any(len(text) > width for text in labels):
        return {}
    common = len(os.path.commonprefix(labels)) if len(labels) > 1 else 0
    start = max(0, common - 10)  # a little of what they share, before where they differ
    short = {}
    for text in labels:
        if len(text) > width:
            piece = text[start : start + width].strip()
            short[text] = ("…" if start else "") + piece + ("…" if start + width < len(text) else "")
    return short


def relative_url(target: Path, start: Path) -> str:
    """URL prefix of `target` (a dir) as seen from a page in `start`: '' or 'a/b/'."""
    try:
        relative = os.path.relpath(Path(target).resolve(), Path(start).resolve())
    except ValueError:  # another drive (Windows): no relative path
        return Path(target).resolve().as_uri() + "/"
    return "" if relative == "." else quote(Path(relative).as_posix()) + "/"


def json_script(data: Any) -> str:
    """JSON for a <script> element: no '<' can close it early, whatever the prompts hold."""
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("<", "\\u003c")


def render_html(sweep: Sweep, x: str | None, y: str | None, out_dir: Path, other: Sweep | None = None) -> str:
    """The whole report page as a string (makes the thumbnails it needs)."""
    states = image_states(sweep)
    axes = list(dict.fromkeys([*sweep.swept, *(name for name in (x, y) if name)]))
    data: dict[str, Any] = {
        "sweeps": [_sweep_data(sweep, states, out_dir, axes)],
        "x": x or "",
        "y": y or "",
        "axes": axes,
        "pageCells": PAGE_CELLS,
        "maxCols": MAX_COLS,
        "pagePairs": PAGE_PAIRS,
        "compare": None,
    }
    compare_html = ""
    if other is not None:
        comparison = compare(sweep, other)
        data["sweeps"].append(_sweep_data(other, image_states(other), out_dir, []))
        data["compare"] = {"shown": comparison.shown, "pairs": comparison.pairs}
        compare_html = _compare_section(sweep, other, comparison)
    nav = [("grid", "Grid"), ("axes", "Per axis"), ("errors", "Errors"), ("overrides", "Overrides"), ("environment", "Versions")]
    if other is not None:
        nav.insert(1, ("compare", "Compare"))
    links = "".join(f'<a href="#{anchor}">{text}</a>' for anchor, text in nav)
    generated = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="sweeper report">
<title>sweep {esc(sweep.name)}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>sweep <span class="name">{esc(sweep.name)}</span></h1>
<p class="path"><code>{esc(sweep.dir.resolve())}</code> · report written {esc(generated)}</p>
<nav>{links}</nav>
{_overview(sweep, states)}
</header>
<main>
<section id="grid">
<h2>Grid</h2>
<div id="grid-controls" class="controls"></div>
<p id="grid-status" class="note"></p>
<div class="pager" id="grid-pager"></div>
<div id="grid-blocks" data-scope></div>
<div class="pager" id="grid-pager-bottom"></div>
<noscript><p>The grids need JavaScript; the tables below do not.</p></noscript>
</section>
{compare_html}
{_axes_section(sweep)}
{_errors_section(sweep)}
{_overrides_section(sweep)}
{_environment_section(sweep)}
</main>
<div id="lightbox" hidden>
<div class="box" role="dialog" aria-modal="true" aria-label="image and parameters">
<div class="bar">
<button type="button" data-go="-1" title="previous (←)">‹</button><button type="button" data-go="1" title="next (→)">›</button>
<span class="where"></span><button type="button" class="close" title="close (Esc)">×</button>
</div>
<div class="content"><div class="figure"></div><table class="params"></table></div>
</div>
</div>
<script type="application/json" id="report-data">{json_script(data)}</script>
<script>{JS}</script>
</body>
</html>
"""


def grids(sweep: Sweep, x: str | None, y: str | None) -> list[Grid]:
    """The report's default grids (one per combination of the other swept keys) for the PNG writer."""
    sections = [name for name in sweep.swept if name not in (x, y)]
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, text in enumerate(sweep.text):
        groups[tuple(text[name] for name in sections)].append(index)
    ordered = sorted(groups.items(), key=lambda item: tuple(sweep.rank(name, sweep.rows[item[1][0]][name]) for name in sections))
    axis_names = ", ".join(f"{axis}: {name}" for axis, name in (("x", x), ("y", y)) if name)
    result = []
    for key, indices in ordered:
        xs = [label(value) for value in sweep.values(x)] if x else [""]
        ys = [label(value) for value in sweep.values(y)] if y else [""]
        xs = [value for value in xs if any(sweep.text[i][x] == value for i in indices)] if x else xs
        ys = [value for value in ys if any(sweep.text[i][y] == value for i in indices)] if y else ys
        cells: dict[tuple[int, int], Cell] = {}
        for i in indices:
            place = (ys.index(sweep.text[i][y]) if y else 0, xs.index(sweep.text[i][x]) if x else 0)
            cells.setdefault(place, _grid_cell(sweep, i))
        title = " · ".join(f"{name} = {value}" for name, value in zip(sections, key))
        result.append(Grid(" — ".join(part for part in (title, axis_names) if part), xs, ys, cells))
    return result


def _grid_cell(sweep: Sweep, index: int) -> Cell:
    row = sweep.rows[index]
    if row["status"] != "ok":
        return Cell(note=f"error: {row['error'] or ''}")
    path = sweep.dir / row["path"]
    return Cell(image=path) if is_regular_inside(path, sweep.dir) else Cell(note="missing file")


def write_grid_png(sweep: Sweep, x: str | None, y: str | None, out: Path, cell: int = GRID_CELL) -> list[Path]:
    """Labelled PNG grid(s) of the sweep; cells as big as the images, at most `cell` px."""
    sides = [max(row["width"] or 0, row["height"] or 0) for row in sweep.rows]
    try:
        return write_grid(grids(sweep, x, y), Path(out), cell=max(16, min(cell, max(sides) or cell)))
    except OSError as error:
        raise ReportError(f"cannot write the grid {out}: {error}") from None


def _write_html(sweep: Sweep, x: str | None, y: str | None, other: Sweep | None, output: Path | None) -> Path:
    # A path the user gave is theirs to route through links; inside the sweep dir none is followed.
    if output is None:  # a comparison does not replace the sweep's own report
        output = sweep.dir / (REPORT if other is None else f"compare-{re.sub(r'[^A-Za-z0-9._-]+', '_', other.name)}.html")
    else:
        output = Path(output).resolve()
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        page = render_html(sweep, x, y, output.parent, other)
        write_atomic(output, page.encode("utf-8"), durable=False)
    except (OSError, UnsafePath) as error:
        raise ReportError(f"cannot write {output}: {error}") from None
    return output


def is_stale(sweep_dir: Path) -> bool:
    """True unless report.html is newer than the manifest and the plan it shows."""
    try:
        written = (Path(sweep_dir) / REPORT).stat().st_mtime_ns
    except OSError:
        return True
    sources = [Path(sweep_dir) / name for name in (manifest.MANIFEST, PLAN_FILE)]
    return any(source.exists() and source.stat().st_mtime_ns >= written for source in sources)


def write_report(
    sweep_dir: Path,
    x: str | None = None,
    y: str | None = None,
    compare: Path | None = None,
    output: Path | None = None,
    table: pa.Table | None = None,
) -> Path:
    """Write the HTML report of a sweep dir (default `<sweep_dir>/report.html`); returns its path.

    `table`: its manifest rows, if just merged. Raises ReportError for a dir
    without a manifest or an unknown column.
    """
    sweep = load_sweep(sweep_dir, table)
    x, y = choose_axes(sweep, x, y)
    other = load_sweep(compare) if compare is not None else None
    return _write_html(sweep, x, y, other, output)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        fail(message)


def fail(message: str) -> NoReturn:
    print(f"sweeper: error: {message}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> int:
    """`python -m sweeper.report`: write the report (and a PNG grid), print the paths written."""
    parser = _Parser(
        prog="python -m sweeper.report",
        description="Write a static HTML report of a sweep: X/Y grids, per-axis tables, timing, comparison.",
    )
    parser.add_argument("sweep_dir", type=Path, metavar="SWEEP_DIR", help="a sweep (or run) dir holding manifest.parquet")
    parser.add_argument("--x", metavar="KEY", help="manifest column along the grids' columns (default: the most varied swept key)")
    parser.add_argument("--y", metavar="KEY", help="manifest column along the grids' rows (default: the next most varied)")
    parser.add_argument("--compare", type=Path, metavar="OTHER_DIR", help="another sweep dir to show side by side")
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help=f"where to write the HTML (default: SWEEP_DIR/{REPORT}, or SWEEP_DIR/compare-OTHER.html with --compare)")
    parser.add_argument("--grid", type=Path, metavar="PNG", help="also draw the grids as a labelled PNG (tiled as PNG-1.png... when big)")
    parser.add_argument("--cell", type=int, default=GRID_CELL, metavar="PX", help=f"largest cell of --grid in pixels (default {GRID_CELL})")
    args = parser.parse_args(argv)
    if not 16 <= args.cell <= 2048:
        fail(f"--cell must be between 16 and 2048 pixels, not {args.cell}")
    try:
        if (args.sweep_dir / manifest.PARTS_DIR).is_dir():  # rows that workers wrote (a SLURM array's, say): one manifest first
            manifest.merge(args.sweep_dir)
        sweep = load_sweep(args.sweep_dir)
        x, y = choose_axes(sweep, args.x, args.y)
        other = load_sweep(args.compare) if args.compare is not None else None
        print(_write_html(sweep, x, y, other, args.output))
        for path in write_grid_png(sweep, x, y, args.grid, args.cell) if args.grid else []:
            print(path)
    except ReportError as error:
        fail(str(error))
    return 0


CSS = """
:root { --cell: 128px; --ink: #1d1f23; --muted: #62666d; --line: #d9dce1; --bg: #f6f7f9; --accent: #2f6fdf; --bad: #b3261e; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink); background: var(--bg); }
header, main > section { padding: 12px 24px; }
header { background: #fff; border-bottom: 1px solid var(--line); }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 18px 0 8px; } h3 { font-size: 14px; margin: 14px 0 6px; }
.path, .note { color: var(--muted); margin: 4px 0; }
nav a { margin-right: 14px; color: var(--accent); text-decoration: none; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 10px 0 0; }
.facts dt { color: var(--muted); } .facts dd { margin: 0; }
table { border-collapse: collapse; background: #fff; margin: 4px 0 8px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left; vertical-align: top; }
thead th { background: #eef0f3; }
pre, code { font: 12px/1.4 ui-monospace, SFMono-Regular, Menlo, monospace; white-space: pre-wrap; word-break: break-word; margin: 0; }
.controls { display: flex; flex-wrap: wrap; gap: 6px 14px; align-items: center; margin-bottom: 6px; }
.controls label { color: var(--muted); } .controls select { margin-left: 4px; max-width: 260px; }
.pager { display: flex; gap: 8px; align-items: center; margin: 6px 0; }
.pager:empty { display: none; }
.block { margin: 10px 0 18px; } .block h3 { margin: 0 0 4px; } .block h3 .part { color: var(--muted); font-weight: normal; }
.scroll { overflow-x: auto; }
table.grid th, table.grid td { padding: 2px; text-align: center; vertical-align: middle; }
table.grid th.xlabel { max-width: var(--cell); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; font-weight: 600; }
table.grid th.ylabel { max-width: 220px; overflow-wrap: anywhere; font-weight: 600; }
table.grid th.corner { font-weight: normal; color: var(--muted); font-size: 12px; }
table.grid th.corner span { display: block; }
table.grid td.empty { background: repeating-linear-gradient(45deg, #fff, #fff 6px, #f1f2f4 6px, #f1f2f4 12px); }
.tile { display: inline-flex; flex-direction: column; align-items: center; justify-content: center; width: var(--cell); height: var(--cell);
  padding: 0; margin: 1px; border: 0; background: #eceef1; cursor: zoom-in; overflow: hidden; vertical-align: middle; font: inherit; }
.tile img { width: 100%; height: 100%; object-fit: contain; display: block; }
.tile:focus-visible { outline: 3px solid var(--accent); }
.tile.error, .tile.missing, .tile.broken { background: #fbe9e7; color: var(--bad); padding: 6px; }
.tile .msg { font-size: 11px; color: var(--ink); overflow: hidden; max-height: 70%; overflow-wrap: anywhere; }
.axes { display: flex; flex-wrap: wrap; gap: 8px 32px; }
.axis table { min-width: 320px; }
svg.chart { display: block; font: 12px system-ui, sans-serif; fill: var(--ink); margin-bottom: 8px; }
svg.chart rect { fill: var(--accent); }
table.pairs td { vertical-align: middle; }
#lightbox { position: fixed; inset: 0; background: rgba(10, 12, 16, .82); z-index: 10; display: flex; align-items: center; justify-content: center; }
#lightbox[hidden] { display: none; }
#lightbox .box { background: #fff; max-width: 96vw; max-height: 94vh; display: flex; flex-direction: column; border-radius: 6px; overflow: hidden; }
#lightbox .bar { display: flex; gap: 6px; align-items: center; padding: 6px 8px; border-bottom: 1px solid var(--line); }
#lightbox .bar button { font-size: 18px; min-width: 34px; cursor: pointer; }
#lightbox .bar .where { flex: 1; color: var(--muted); }
#lightbox .content { display: flex; gap: 12px; padding: 10px; overflow: auto; }
#lightbox .figure img { width: min(70vw, 82vh, 1024px); height: auto; max-height: 82vh; object-fit: contain; display: block; }
#lightbox .figure pre { max-width: 50vw; color: var(--bad); }
#lightbox table.params { font-size: 12px; align-self: flex-start; }
#lightbox table.params td { max-width: 360px; overflow-wrap: anywhere; }
#lightbox table.params tr.null td { color: var(--muted); }
"""

JS = r"""
"use strict";
(() => {
const D = JSON.parse(document.getElementById("report-data").textContent);

function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "text") node.textContent = value;
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}

class Sweep {
  constructor(data, index) {
    Object.assign(this, data);
    this.index = index;
    this.at = new Map(data.columns.map((name, i) => [name, i]));
    this.rank = new Map(Object.entries(data.values).map(([name, labels]) => [name, new Map(labels.map((v, i) => [v, i]))]));
  }
  get size() { return this.rows.length; }
  value(i, name) { return this.at.has(name) ? this.rows[i][this.at.get(name)] : this.constants[name]; }
  href(path) { return this.base + path.split("/").map(encodeURIComponent).join("/"); }
  full(i) { return this.href(this.value(i, "path")); }
  thumb(i) { return this.state[i] === "ok" ? this.href(this.thumbs + this.value(i, "image_id") + this.ext) : this.full(i); }
  sorter(name) {
    const rank = this.rank.get(name);
    return rank ? (a, b) => rank.get(a) - rank.get(b) : (a, b) => (a < b ? -1 : a > b ? 1 : 0);
  }
  describe(i) { return this.swept.map((name) => `${name}=${this.value(i, name)}`).join(", "); }
  shortLabel(name, v) { return (name && this.short[name] && this.short[name][v]) || v; }
}
const sweeps = D.sweeps.map((data, i) => new Sweep(data, i));
const main = sweeps[0];

function tile(sweep, i) {
  const state = sweep.state[i];
  const node = el("button", {type: "button", class: `tile ${state}`, "data-s": sweep.index, "data-i": i, title: sweep.describe(i)});
  if (state === "error") {
    const message = sweep.value(i, "error");
    node.append(el("span", {class: "note", text: "error"}), el("span", {class: "msg", text: message === "null" ? "" : message}));
  } else if (state === "missing") {
    node.append(el("span", {class: "note", text: "missing file"}));
  } else {
    const img = el("img", {loading: "lazy", decoding: "async", alt: sweep.describe(i), src: sweep.thumb(i)});
    img.addEventListener("error", () => {
      node.classList.add("broken");
      img.replaceWith(el("span", {class: "note", text: "image not found"}));
    }, {once: true});
    node.append(img);
  }
  return node;
}

function pager(hosts, count, current, go) {
  for (const host of hosts) {
    host.replaceChildren();
    if (count <= 1) continue;
    const prev = el("button", {type: "button", class: "prev", text: "‹ previous"});
    const next = el("button", {type: "button", class: "next", text: "next ›"});
    const pick = el("select", {"aria-label": "page"},
      ...Array.from({length: count}, (_, n) => el("option", {value: n, text: `page ${n + 1} of ${count}`})));
    prev.disabled = current === 0;
    next.disabled = current === count - 1;
    pick.value = String(current);
    prev.addEventListener("click", () => go(current - 1));
    next.addEventListener("click", () => go(current + 1));
    pick.addEventListener("change", () => go(Number(pick.value)));
    host.append(prev, pick, next);
  }
}

// View state lives in the URL hash, so a view can be shared or reloaded.
const params = new URLSearchParams(location.hash.slice(1));
const view = {
  x: params.has("x") && D.axes.includes(params.get("x")) ? params.get("x") : D.x,
  y: params.has("y") && D.axes.includes(params.get("y")) ? params.get("y") : D.y,
  filters: {},
  page: Math.max(0, Number(params.get("page")) - 1 || 0),
  pairPage: Math.max(0, Number(params.get("pairs")) - 1 || 0),
};
if (params.get("x") === "") view.x = "";
if (params.get("y") === "") view.y = "";
for (const name of main.swept) {
  const value = params.get(`f.${name}`);
  if (value !== null && main.rank.get(name).has(value)) view.filters[name] = value;
}

function saveHash(image) {
  const out = new URLSearchParams();
  out.set("x", view.x);
  out.set("y", view.y);
  for (const [name, value] of Object.entries(view.filters)) out.set(`f.${name}`, value);
  if (view.page) out.set("page", view.page + 1);
  if (view.pairPage) out.set("pairs", view.pairPage + 1);
  if (image) out.set("img", image);
  history.replaceState(null, "", `#${out}`);
}

function select(text, value, options, change) {
  const node = el("select", {}, ...options.map(([v, t]) => el("option", {value: v, text: t})));
  node.value = value;
  node.addEventListener("change", () => change(node.value));
  return el("label", {text}, node);
}

function controls() {
  const axes = [["", "(none)"], ...D.axes.map((name) => [name, name])];
  const setAxis = (axis, other) => (value) => {
    if (value && value === view[other]) view[other] = view[axis];
    view[axis] = value;
    view.page = 0;
    renderGrid();
  };
  const host = document.getElementById("grid-controls");
  host.replaceChildren(select("x (columns)", view.x, axes, setAxis("x", "y")), select("y (rows)", view.y, axes, setAxis("y", "x")));
  for (const name of main.swept) {
    const options = [["\u0000", "all"], ...main.values[name].map((v) => [v, v])];
    host.append(select(name, view.filters[name] ?? "\u0000", options, (value) => {
      if (value === "\u0000") delete view.filters[name];
      else view.filters[name] = value;
      view.page = 0;
      renderGrid();
    }));
  }
}

function gridBlocks() {
  const {x, y, filters} = view;
  const keys = main.swept.filter((name) => name !== x && name !== y && !(name in filters));
  const sections = new Map();
  let shown = 0;
  for (let i = 0; i < main.size; i++) {
    if (!Object.entries(filters).every(([name, value]) => main.value(i, name) === value)) continue;
    const key = keys.map((name) => main.value(i, name));
    const id = JSON.stringify(key);
    if (!sections.has(id)) sections.set(id, {key, rows: []});
    sections.get(id).rows.push(i);
    shown++;
  }
  const orders = keys.map((name) => main.sorter(name));
  const ordered = [...sections.values()].sort((a, b) => {
    for (let n = 0; n < keys.length; n++) {
      const d = orders[n](a.key[n], b.key[n]);
      if (d) return d;
    }
    return 0;
  });
  const blocks = [];
  for (const section of ordered) {
    const along = (name) => (name ? [...new Set(section.rows.map((i) => main.value(i, name)))].sort(main.sorter(name)) : [""]);
    const xs = along(x), ys = along(y);
    const cells = new Map();
    for (const i of section.rows) {
      const at = `${y ? main.value(i, y) : ""}\u0000${x ? main.value(i, x) : ""}`;
      if (!cells.has(at)) cells.set(at, []);
      cells.get(at).push(i);
    }
    const title = keys.map((name, n) => `${name} = ${section.key[n]}`).join(" · ");
    const colStep = Math.min(xs.length, D.maxCols);
    const rowStep = Math.max(1, Math.floor(D.pageCells / colStep));
    for (let r = 0; r < ys.length; r += rowStep) {
      for (let c = 0; c < xs.length; c += colStep) {
        const split = xs.length > colStep || ys.length > rowStep;
        const rowsPart = `rows ${r + 1}–${Math.min(r + rowStep, ys.length)} of ${ys.length}`;
        const part = split ? `${rowsPart}, columns ${c + 1}–${Math.min(c + colStep, xs.length)} of ${xs.length}` : "";
        blocks.push({title, part, xs: xs.slice(c, c + colStep), ys: ys.slice(r, r + rowStep), cells});
      }
    }
  }
  return {blocks, sections: ordered.length, shown};
}

function paginate(blocks) {
  const pages = [];
  let size = 0;
  for (const block of blocks) {
    const cells = block.xs.length * block.ys.length;
    if (!pages.length || size + cells > D.pageCells) {
      pages.push([]);
      size = 0;
    }
    pages[pages.length - 1].push(block);
    size += cells;
  }
  return pages;
}

function blockNode(block) {
  const {x, y} = view;
  const corner = el("th", {class: "corner"}, el("span", {class: "axis-x", text: x ? `${x} →` : ""}), el("span", {class: "axis-y", text: y ? `${y} ↓` : ""}));
  const head = el("tr", {}, corner, ...block.xs.map((v) => el("th", {class: "xlabel", scope: "col", title: x ? `${x} = ${v}` : "", text: main.shortLabel(x, v)})));
  const body = block.ys.map((yv) => el("tr", {},
    el("th", {class: "ylabel", scope: "row", title: y ? `${y} = ${yv}` : "", text: main.shortLabel(y, yv)}),
    ...block.xs.map((xv) => {
      const rows = block.cells.get(`${yv}\u0000${xv}`);
      return rows ? el("td", {class: "cell"}, ...rows.map((i) => tile(main, i))) : el("td", {class: "empty"});
    })));
  const heading = el("h3", {}, block.title, block.part ? el("span", {class: "part", text: ` (${block.part})`}) : null);
  return el("div", {class: "block"}, block.title || block.part ? heading : null,
    el("div", {class: "scroll"}, el("table", {class: "grid"}, el("thead", {}, head), el("tbody", {}, ...body))));
}

let laidOut = {key: null};  // the grid's pages for the current axes and filters: paging only draws

function renderGrid() {
  const key = JSON.stringify([view.x, view.y, view.filters]);
  if (laidOut.key !== key) {
    const {blocks, sections, shown} = gridBlocks();
    laidOut = {key, sections, shown, pages: paginate(blocks)};
  }
  const {pages, sections, shown} = laidOut;
  view.page = Math.min(view.page, Math.max(0, pages.length - 1));
  document.getElementById("grid-blocks").replaceChildren(...(pages[view.page] || []).map(blockNode));
  document.getElementById("grid-status").textContent =
    `${shown} of ${main.size} images in ${sections} grid${sections === 1 ? "" : "s"}` + (pages.length > 1 ? `, ${pages.length} pages` : "");
  const go = (page) => { view.page = page; renderGrid(); document.getElementById("grid").scrollIntoView(); };
  pager([document.getElementById("grid-pager"), document.getElementById("grid-pager-bottom")], pages.length, view.page, go);
  controls();
  saveHash();
}

function renderCompare() {
  if (!D.compare) return;
  const [a, b] = sweeps;
  const {shown, pairs} = D.compare;
  const count = Math.ceil(pairs.length / D.pagePairs);
  view.pairPage = Math.min(view.pairPage, Math.max(0, count - 1));
  const start = view.pairPage * D.pagePairs;
  const head = el("tr", {}, ...shown.map((name) => el("th", {scope: "col", text: name})),
    el("th", {scope: "col", text: `A: ${a.name}`}), el("th", {scope: "col", text: `B: ${b.name}`}));
  const rows = pairs.slice(start, start + D.pagePairs).map(([inA, inB]) => el("tr", {class: "pair"},
    ...shown.map((name) => el("td", {text: a.value(inA[0], name)})),
    el("td", {class: "cell side-a"}, ...inA.map((i) => tile(a, i))),
    el("td", {class: "cell side-b"}, ...inB.map((i) => tile(b, i)))));
  const host = document.getElementById("compare-pairs");
  host.replaceChildren(pairs.length
    ? el("div", {class: "scroll"}, el("table", {class: "pairs"}, el("thead", {}, head), el("tbody", {}, ...rows)))
    : el("p", {class: "note", text: "No image of A has a match in B."}));
  pager([document.getElementById("compare-pager")], count, view.pairPage, (page) => { view.pairPage = page; renderCompare(); saveHash(); });
}

// Lightbox: the full image and every column of its manifest row.
const box = document.getElementById("lightbox");
let boxTiles = [];
let boxAt = -1;

function show(s, i) {
  const sweep = sweeps[s];
  const figure = box.querySelector(".figure");
  if (sweep.state[i] === "error") figure.replaceChildren(el("pre", {text: `error: ${sweep.value(i, "error")}`}));
  else if (sweep.state[i] === "missing") figure.replaceChildren(el("pre", {text: `missing file: ${sweep.value(i, "path")}`}));
  else figure.replaceChildren(el("a", {href: sweep.full(i), target: "_blank"}, el("img", {src: sweep.full(i), alt: sweep.describe(i)})));
  box.querySelector(".params").replaceChildren(el("tbody", {}, ...sweep.order.map((name) => {
    const value = sweep.value(i, name);
    return el("tr", {class: value === "null" ? "null" : ""}, el("th", {scope: "row", text: name}), el("td", {text: value}));
  })));
  const where = boxTiles.length > 1 ? `${boxAt + 1} of ${boxTiles.length} · ` : "";
  box.querySelector(".where").textContent = `${where}${D.sweeps.length > 1 ? (s ? "B: " : "A: ") : ""}${sweep.name}`;
  box.hidden = false;
  saveHash(`${s}:${sweep.value(i, "image_id")}`);
}

function open(node) {
  const scope = node.closest("[data-scope]") || document;
  boxTiles = [...scope.querySelectorAll(".tile")];
  boxAt = boxTiles.indexOf(node);
  show(Number(node.dataset.s), Number(node.dataset.i));
}

function step(by) {
  if (boxAt < 0 || !boxTiles.length) return;
  boxAt = (boxAt + by + boxTiles.length) % boxTiles.length;
  const node = boxTiles[boxAt];
  show(Number(node.dataset.s), Number(node.dataset.i));
}

function close() {
  box.hidden = true;
  saveHash();
}

document.addEventListener("click", (event) => {
  const node = event.target.closest(".tile");
  if (node) open(node);
});
box.addEventListener("click", (event) => {
  const go = event.target.closest("[data-go]");
  if (go) step(Number(go.dataset.go));
  else if (event.target === box || event.target.closest(".close")) close();
});
document.addEventListener("keydown", (event) => {
  if (box.hidden) return;
  if (event.key === "Escape") close();
  else if (event.key === "ArrowLeft") step(-1);
  else if (event.key === "ArrowRight") step(1);
});

renderGrid();
renderCompare();
// Milliseconds from the start of loading to the first page of grids drawn (benchmarks read it).
document.documentElement.dataset.readyMs = Math.round(performance.now());
const wanted = (params.get("img") || "").split(":");
const shared = sweeps[Number(wanted[0])];
if (shared && wanted.length === 2) {
  const i = Array.from({length: shared.size}, (_, n) => n).find((n) => shared.value(n, "image_id") === wanted[1]);
  const node = document.querySelector(`.tile[data-s="${shared.index}"][data-i="${i}"]`);
  if (node) open(node);
  else if (i !== undefined) show(shared.index, i);
}
})();
"""


if __name__ == "__main__":
    sys.exit(main())
