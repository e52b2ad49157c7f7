"""The page's data: what the browser gets as JSON to draw the grids, the pairs and the lightbox."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import quote

from sweeper.report.compare import Comparison
from sweeper.report.layout import codes
from sweeper.report.sweep import Sweep
from sweeper.storing.store import THUMB_EXT, THUMB_SIDE, THUMBS_DIR

PAGE_CELLS = 200  # grid cells per page in the browser
MAX_COLS = 16  # wider grids are cut into blocks of columns
PAGE_PAIRS = 50  # compared pairs per page
TILE_SIZES = [64, 96, 128, 192, 256, 384, 512]
TILE_SIZE = 128


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
        "pageCells": PAGE_CELLS,
        "maxCols": MAX_COLS,
        "pagePairs": PAGE_PAIRS,
        "sizes": TILE_SIZES,  # the thumbnail sizes offered, in px
        "size": TILE_SIZE,
        "thumbSide": THUMB_SIDE,  # tiles larger than the thumbnails show the images themselves
        "compare": None,
    }
    if other is not None:
        other_sweep, other_states, comparison = other
        data["sweeps"].append(sweep_data(other_sweep, other_states, out_dir, []))
        data["compare"] = {"shown": comparison.shown, "pairs": comparison.pairs}
    return data


def sweep_data(sweep: Sweep, states: list[str], out_dir: Path, axes: list[str]) -> dict[str, Any]:
    """A sweep's rows for the page: the axes that vary as codes (layout.codes), the other columns
    that vary as labels row by row, the constant ones once."""
    varying = [name for name in sweep.columns if not sweep.constant(name)]
    coded = [name for name in axes if name in varying]
    plain = [name for name in varying if name not in coded]
    return {
        "name": sweep.name,
        "base": relative_url(sweep.dir, out_dir),
        "thumbs": f"{THUMBS_DIR}/",
        "ext": THUMB_EXT,
        "order": sweep.columns,
        "columns": plain,
        "rows": [[text[name] for name in plain] for text in sweep.text],
        "codes": {name: codes(sweep, name) for name in coded},
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

