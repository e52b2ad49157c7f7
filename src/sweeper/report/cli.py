"""`python -m sweeper.report` and the functions the runner calls: write a sweep's report (and PNG grids)."""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import NoReturn

import pyarrow as pa

from sweeper.storing import commands, manifest, scores
from sweeper.errors import UnsafePath
from sweeper.storing.files import write_atomic
from sweeper.report.grid_png import GRID_CELL, write_grid_png
from sweeper.report.page import render_html
from sweeper.report.sweep import ReportError, Sweep, choose_axes, load_sweep
from sweeper.launching.run import PLAN_FILE
from sweeper.scoring.sets import SET_SCORES

REPORT = "report.html"


def _write_html(
    sweep: Sweep, x: str | None, y: str | None, other: Sweep | None, output: Path | None,
    sort_by: str | None = None, tint: str | None = None,
) -> Path:
    # A path the user gave is theirs to route through links; inside the sweep dir none is followed.
    if output is None:  # a comparison does not replace the sweep's own report
        output = sweep.dir / (REPORT if other is None else f"compare-{re.sub(r'[^A-Za-z0-9._-]+', '_', other.name)}.html")
    else:
        output = Path(output).resolve()
    try:
        page = render_html(sweep, x, y, output.parent, other, sort_by, tint)  # a refused --sort-by/--tint leaves no folder
        output.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(output, page.encode("utf-8"), durable=False)
    except (OSError, UnsafePath) as error:
        raise ReportError(f"cannot write {output}: {error}") from None
    return output


def is_stale(sweep_dir: Path) -> bool:
    """True unless report.html is newer than the manifest, the plan and the commands it shows."""
    try:
        written = (Path(sweep_dir) / REPORT).stat().st_mtime_ns
    except OSError:
        return True
    sources = [Path(sweep_dir) / name for name in (manifest.MANIFEST, PLAN_FILE, commands.COMMANDS_FILE, scores.SCORES, SET_SCORES)]
    return any(source.exists() and source.stat().st_mtime_ns >= written for source in sources)


def write_report(
    sweep_dir: Path,
    x: str | None = None,
    y: str | None = None,
    compare: Path | None = None,
    output: Path | None = None,
    table: pa.Table | None = None,
    sort_by: str | None = None,
    tint: str | None = None,
) -> Path:
    """Write the HTML report of a sweep dir (default `<sweep_dir>/report.html`); returns its path.

    `table`: its manifest rows, if just merged. `sort_by`, `tint`: a score the grids start
    sorted or tinted by. Raises ReportError for a dir without a manifest, an unknown column or score.
    """
    sweep = load_sweep(sweep_dir, table)
    x, y = choose_axes(sweep, x, y)
    other = load_sweep(compare) if compare is not None else None
    return _write_html(sweep, x, y, other, output, sort_by, tint)


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
    parser.add_argument("--cell", type=int, metavar="PX",
                        help=f"cell size of --grid in pixels, images scaled up or down to it (default: the images' size, at most {GRID_CELL})")
    parser.add_argument("--sort-by", metavar="SCORE",
                        help="the page's grids start with their columns and rows ordered by mean SCORE, best first (clip, aesthetic...)")
    parser.add_argument("--tint", metavar="SCORE", help="the page's grids start with each image tinted by its SCORE, low red to high green")
    args = parser.parse_args(argv)
    if args.cell is not None and not 16 <= args.cell <= 2048:
        fail(f"--cell must be between 16 and 2048 pixels, not {args.cell}")
    try:
        if (args.sweep_dir / manifest.PARTS_DIR).is_dir():  # rows that workers wrote (a SLURM array's, say): one manifest first
            manifest.merge(args.sweep_dir)
        sweep = load_sweep(args.sweep_dir)
        x, y = choose_axes(sweep, args.x, args.y)
        other = load_sweep(args.compare) if args.compare is not None else None
        print(_write_html(sweep, x, y, other, args.output, args.sort_by, args.tint))
        for path in write_grid_png(sweep, x, y, args.grid, args.cell) if args.grid else []:
            print(path)
    except ReportError as error:
        fail(str(error))
    return 0
