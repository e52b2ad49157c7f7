"""The grid layout: which image goes in which cell, the axes and the sections' order (the page and the PNG grids share it)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from sweeper import manifest
from sweeper.report.data import layouts_data
from sweeper.report.grid_png import grids
from sweeper.report.layout import layout
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
    assert found.keys == ["prompt", "seed", "guidance"]
    assert [section.key for section in found.sections] == [
        ("b", "2", "3"), ("b", "2", "7.5"), ("b", "10", "3"), ("a", "2", "7.5"), ("a", "10", "7.5"),
    ]
    assert found.sections[3].cells == {(0, 0): [3, 5]} and found.sections[3].xs == found.sections[3].ys == [""]
    by_host = layout(sweep, "host", None)  # a constant column as an axis: one column
    assert by_host.sections[3].xs == ["h"] and by_host.sections[3].cells == {(0, 0): [3, 5]}


def test_the_page_gets_each_pair_of_axes_once_as_indices_into_the_values(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    data = layouts_data(sweep, sweep.swept)
    assert sweep.swept == ["prompt", "seed", "guidance"]
    assert {x: sorted(ys) for x, ys in data.items()} == {
        "": ["", "guidance", "prompt", "seed"], "prompt": ["guidance", "seed"], "seed": ["guidance"],
    }
    found = data["seed"]["guidance"]
    assert found["keys"] == ["prompt"]
    # [key, xs, ys, cells]: labels as places in sweep.labels(name); cells row by row, null where no image
    assert found["sections"][0] == [[0], [0, 1], [0, 1], [1, 0, 2, None]]
    assert sweep.labels("prompt") == ["b", "a"] and sweep.labels("seed") == ["2", "10"]


def test_png_grids_have_the_same_cells_and_titles(tmp_path):
    sweep = sweep_of(ROWS, tmp_path)
    b, a = grids(sweep, "seed", "guidance")
    assert b.title == "prompt = b — x: seed, y: guidance" and (b.x_labels, b.y_labels) == (["2", "10"], ["3", "7.5"])
    assert set(b.cells) == {(0, 1), (0, 0), (1, 0)} and all(cell.note == "missing file" for cell in b.cells.values())
    assert a.title == "prompt = a — x: seed, y: guidance" and set(a.cells) == {(0, 0), (0, 1)}
