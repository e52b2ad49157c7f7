"""The grid layout, the one place that decides which image goes in which cell.

Each axis numbers its values in display order (`codes`: an image's code on an
axis is its value's place in `Sweep.labels`). For axes x and y the images are
grouped into sections by their codes on the other swept keys, sections in
code order key by key; a section's columns and rows are the x and y codes that
occur in it, in order; a cell holds its images in manifest order.

The page gets the codes of every axis it offers (grows with axes x images, not
with pairs of axes) and its script follows these rules for whichever axes and
filters are picked (`gridBlocks` in assets/report.js, checked against
`layout` by tests/test_report_layout.py); the PNG grids are drawn from `layout`.
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


def codes(sweep: Sweep, axis: str) -> list[int]:
    """Per image, the place of its value among the axis' values in display order."""
    place = {text: n for n, text in enumerate(sweep.labels(axis))}
    return [place[text[axis]] for text in sweep.text]


def layout(sweep: Sweep, x: str | None, y: str | None) -> Layout:
    """The sweep's grids along x and y, sections in the order of their keys' values."""
    keys = [name for name in sweep.swept if name not in (x, y)]
    count = len(sweep.text)
    key_codes = list(zip(*(codes(sweep, name) for name in keys))) if keys else [()] * count
    x_codes = codes(sweep, x) if x else [0] * count
    y_codes = codes(sweep, y) if y else [0] * count
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for index, key in enumerate(key_codes):
        groups[key].append(index)
    labels = {name: sweep.labels(name) for name in (*keys, *(axis for axis in (x, y) if axis))}
    sections = []
    for key in sorted(groups):
        indices = groups[key]
        xs, ys = sorted({x_codes[i] for i in indices}), sorted({y_codes[i] for i in indices})
        column, row = {code: n for n, code in enumerate(xs)}, {code: n for n, code in enumerate(ys)}
        cells: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i in indices:
            cells[(row[y_codes[i]], column[x_codes[i]])].append(i)
        sections.append(Section(
            tuple(labels[name][code] for name, code in zip(keys, key)),
            [labels[x][code] for code in xs] if x else [""],
            [labels[y][code] for code in ys] if y else [""],
            dict(cells),
        ))
    return Layout(x, y, keys, sections)
