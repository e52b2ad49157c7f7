"""The grid layout: which image goes in which cell, the axes and the sections' order (the page and the PNG grids share it)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl

import pyarrow as pa
import pytest
from test_report import base_row, browse, labels, write_manifest

from sweeper.storing import manifest
from sweeper import report
from sweeper.report.data import page_data
from sweeper.report.grid_png import grids
from sweeper.report.layout import codes, layout
from sweeper.report.sweep import Sweep


def sweep_of(rows: list[dict], tmp_path: Path) -> Sweep:
    full = []
    for n, values in enumerate(rows):
        row = dict.fromkeys(manifest.SCHEMA.names)
        row.update(status="ok", model="tiny", image_id=f"id{n}", path=f"images/id{n}.png", job_num=n, host="h")
        row.update(values)
        full.append(row)
    return Sweep.of(tmp_path, pa.Table.from_pylist(full, schema=manifest.SCHEMA), None)


# prompts in the sweep's order (b before a), numbers in numeric order; seed 10 with guidance 7.5 was never made
ROWS = [
    {"prompt": "b", "seed": 10, "guidance": 3.0},
    {"prompt": "b", "seed": 2, "guidance": 3.0},
    {"prompt": "b", "seed": 2, "guidance": 7.5},
    {"prompt": "a", "seed": 2, "guidance": 7.5},
    {"prompt": "a", "seed": 10, "guidance": 7.5},
]


def test_images_go_in_the_cell_of_their_values_one_section_per_other_key(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    found = layout(sweep, "seed", "guidance")
    assert found.keys == ["prompt"]
    b, a = found.sections
    assert (b.key, b.xs, b.ys) == (("b",), ["2", "10"], ["3", "7.5"])
    assert b.cells == {(0, 1): [0], (0, 0): [1], (1, 0): [2]}  # (row, column): no cell for seed 10 at 7.5
    assert (a.key, a.xs, a.ys) == (("a",), ["2", "10"], ["7.5"])  # only the values that occur in the section
    assert a.cells == {(0, 0): [3], (0, 1): [4]}


def test_without_axes_each_combination_is_a_section_and_a_cell_holds_all_its_images(tmp_path):
    sweep = sweep_of([*ROWS, {"prompt": "a", "seed": 2, "guidance": 7.5, "image_id": "again"}], tmp_path)
    found = layout(sweep, None, None)
    assert found.keys == ["prompt", "guidance", "seed"]  # in the start line's order
    assert [section.key for section in found.sections] == [
        ("b", "3", "2"), ("b", "3", "10"), ("b", "7.5", "2"), ("a", "7.5", "2"), ("a", "7.5", "10"),
    ]
    assert found.sections[3].cells == {(0, 0): [3, 5]} and found.sections[3].xs == found.sections[3].ys == [""]
    by_host = layout(sweep, "host", None)  # a constant column as an axis: one column
    assert by_host.sections[3].xs == ["h"] and by_host.sections[3].cells == {(0, 0): [3, 5]}


def test_codes_number_each_axis_values_in_display_order(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    assert sweep.labels("prompt") == ["b", "a"] and sweep.labels("seed") == ["2", "10"]
    assert codes(sweep, "prompt") == [0, 0, 0, 1, 1]
    assert codes(sweep, "seed") == [1, 0, 0, 0, 1]
    assert codes(sweep, "host") == [0] * 5


def test_the_page_gets_codes_for_the_axes_that_vary_and_labels_for_the_rest(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    data = page_data(sweep, ["ok"] * 5, "seed", "host", tmp_path)
    assert data["axes"] == ["prompt", "guidance", "seed", "host"]
    (page,) = data["sweeps"]
    assert page["codes"] == {name: codes(sweep, name) for name in ("prompt", "seed", "guidance")}  # host is constant
    assert page["values"]["guidance"] == ["3", "7.5"] and page["values"]["host"] == ["h"]
    assert page["columns"] == ["image_id", "path", "job_num"] and page["rows"][4] == ["id4", "images/id4.png", "4"]


@pytest.mark.parametrize("fragment", ["", "#x=guidance&y=prompt", "#x=&y=seed", "#x=prompt&y=seed&f.guidance=7.5"])
def test_the_page_places_images_as_the_layout_does(tmp_path, fragment):
    rows = [base_row(image_id=f"{n:020d}", path=f"images/{n:020d}.png", job_num=n, **values) for n, values in enumerate(ROWS)]
    write_manifest(tmp_path / "sweep", rows)
    page = browse(report.write_report(tmp_path / "sweep", x="seed", y="guidance"), tmp_path, fragment=fragment)
    assert page.console == []
    view = dict(parse_qsl(fragment[1:], keep_blank_values=True)) or {"x": "seed", "y": "guidance"}
    filters = {key[2:]: value for key, value in view.items() if key.startswith("f.")}
    sweep = report.load_sweep(tmp_path / "sweep")
    found = layout(sweep, view["x"] or None, view["y"] or None)
    expected = []
    for section in found.sections:  # less what the filters hide: images, then empty rows, columns and sections
        kept = [[[i for i in section.cells.get((r, c), []) if all(sweep.text[i][name] == value for name, value in filters.items())]
                 for c in range(len(section.xs))] for r in range(len(section.ys))]
        rows, columns = [r for r, row in enumerate(kept) if any(row)], [c for c in range(len(section.xs)) if any(row[c] for row in kept)]
        title = " · ".join(f"{name} = {value}" for name, value in zip(found.keys, section.key) if name not in filters)
        if rows:
            expected.append((title, [section.xs[c] for c in columns], [section.ys[r] for r in rows], [[kept[r][c] for c in columns] for r in rows]))
    shown = []
    for block in page.dom.by_id("grid-blocks").find_all("div", "block"):
        title = "".join(node.text() for node in block.find_all("h3"))
        cells = [[[int(tile.attrs["data-i"]) for tile in td.find_all("button")] for td in tr.find_all("td")] for tr in block.find_all("tr")[1:]]
        shown.append((title, labels(block, "xlabel"), labels(block, "ylabel"), cells))
    assert shown == expected


def test_png_grids_have_the_same_cells_and_titles(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    b, a = grids(sweep, "seed", "guidance")
    assert b.title == "prompt = b — x: seed, y: guidance" and (b.x_labels, b.y_labels) == (["2", "10"], ["3", "7.5"])
    assert set(b.cells) == {(0, 1), (0, 0), (1, 0)} and all(cell.note == "missing file" for cell in b.cells.values())
    assert a.title == "prompt = a — x: seed, y: guidance" and set(a.cells) == {(0, 0), (0, 1)}
