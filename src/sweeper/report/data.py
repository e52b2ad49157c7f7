"""The page's data: what the browser gets as JSON to draw the grids, the pairs and the lightbox."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sweeper.report.compare import Comparison
from sweeper.report.layout import Layout, layout
from sweeper.report.sweep import Sweep
from sweeper.store import THUMB_EXT, THUMBS_DIR

PAGE_CELLS = 200  # grid cells per page in the browser
MAX_COLS = 16  # wider grids are cut into blocks of columns
PAGE_PAIRS = 50  # compared pairs per page


def page_data(
    sweep: Sweep, states: list[str], x: str | None, y: str | None, out_dir: Path,
    other: tuple[Sweep, list[str], Comparison] | None = None,
) -> dict[str, Any]:
    """Everything the page's script reads; `other`: the compared sweep, its image states and the pairs."""
    axes = list(dict.fromkeys([*sweep.swept, *(name for name in (x, y) if name)]))
    data: dict[str, Any] = {
        "sweeps": [sweep_data(sweep, states, out_dir, axes)],
        "x": x or "",
        "y": y or "",
        "axes": axes,
        "layouts": layouts_data(sweep, axes),
        "pageCells": PAGE_CELLS,
        "maxCols": MAX_COLS,
        "pagePairs": PAGE_PAIRS,
        "compare": None,
    }
    if other is not None:
        other_sweep, other_states, comparison = other
        data["sweeps"].append(sweep_data(other_sweep, other_states, out_dir, []))
        data["compare"] = {"shown": comparison.shown, "pairs": comparison.pairs}
    return data


def sweep_data(sweep: Sweep, states: list[str], out_dir: Path, axes: list[str]) -> dict[str, Any]:
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



def layouts_data(sweep: Sweep, axes: list[str]) -> dict[str, dict[str, Any]]:
    """The layout of every choice of axes the page offers, by x then y ('' for no axis). Only one of
    (x, y) and (y, x) is here: the page turns it around for the other."""
    index = {name: {text: n for n, text in enumerate(sweep.labels(name))} for name in axes}
    choices = ["", *axes]
    layouts: dict[str, dict[str, Any]] = {}
    for x, y in [("", ""), *((x, y) for n, x in enumerate(choices) for y in choices[n + 1 :])]:
        layouts.setdefault(x, {})[y] = _layout_data(layout(sweep, x or None, y or None), index)
    return layouts


def _layout_data(found: Layout, index: dict[str, dict[str, int]]) -> dict[str, Any]:
    """Sections as [key, xs, ys, cells]: labels as indices into the axes' values, cells row by row,
    each null (empty), a row index, or a list of them."""
    sections = []
    for section in found.sections:
        cells: list[int | list[int] | None] = [None] * (len(section.xs) * len(section.ys))
        for (row, column), rows in section.cells.items():
            cells[row * len(section.xs) + column] = rows[0] if len(rows) == 1 else rows
        key = [index[name][text] for name, text in zip(found.keys, section.key)]
        xs = [index[found.x][text] for text in section.xs] if found.x else [0]
        ys = [index[found.y][text] for text in section.ys] if found.y else [0]
        sections.append([key, xs, ys, cells])
    return {"keys": found.keys, "sections": sections}

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

