"""The grid layout, the one place that decides which image goes in which cell.

For axes x and y, the images are grouped into sections by the other swept
keys; each section is one grid with the x values that occur in it as columns,
the y values as rows, and the images in each cell in manifest order. The
browser draws these layouts (it only leaves out cells that its filters hide)
and the PNG grids are drawn from them too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sweeper.report.sweep import Sweep


@dataclass(frozen=True)
class Section:
    """One grid: labels of its keys, columns (x) and rows (y); row indices of the sweep per (row, column)."""

    key: tuple[str, ...]
    xs: list[str]
    ys: list[str]
    cells: dict[tuple[int, int], list[int]]


@dataclass(frozen=True)
class Layout:
    """The sections of a sweep for one choice of axes (None: no axis, one column or row labelled '')."""

    x: str | None
    y: str | None
    keys: list[str]  # the swept keys that tell the sections apart
    sections: list[Section]


def layout(sweep: Sweep, x: str | None, y: str | None) -> Layout:
    """The sweep's grids along x and y, sections in the order of their keys' values."""
    keys = [name for name in sweep.swept if name not in (x, y)]
    groups: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for index, text in enumerate(sweep.text):
        groups[tuple([text[name] for name in keys])].append(index)
    key_ranks = [_ranks(sweep, name) for name in keys]
    ordered = sorted(groups.items(), key=lambda item: [ranks[text] for ranks, text in zip(key_ranks, item[0])])
    x_rank, y_rank = _ranks(sweep, x), _ranks(sweep, y)
    if not x and not y:  # a section per image, often: the general case below is 10 times slower
        return Layout(x, y, keys, [Section(key, [""], [""], {(0, 0): indices}) for key, indices in ordered])
    sections = []
    for key, indices in ordered:
        places = [(sweep.text[i][y] if y else "", sweep.text[i][x] if x else "") for i in indices]
        xs = sorted({place[1] for place in places}, key=x_rank.__getitem__)
        ys = sorted({place[0] for place in places}, key=y_rank.__getitem__)
        column, row = {text: n for n, text in enumerate(xs)}, {text: n for n, text in enumerate(ys)}
        cells: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, (y_text, x_text) in zip(indices, places):
            cells[(row[y_text], column[x_text])].append(i)
        sections.append(Section(key, xs, ys, dict(cells)))
    return Layout(x, y, keys, sections)


def _ranks(sweep: Sweep, axis: str | None) -> dict[str, int]:
    """Label -> place in display order of the axis' values; one '' without an axis."""
    return {text: n for n, text in enumerate(sweep.labels(axis))} if axis else {"": 0}
