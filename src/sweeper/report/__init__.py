"""HTML report of a sweep: X/Y image grids, per-axis tables, timing plots, comparison of two sweeps.

    python -m sweeper.report outputs/sweeps/<name>                  # -> <name>/report.html
    python -m sweeper.report SWEEP --x guidance --y seed --compare OTHER_SWEEP -o cmp.html
    python -m sweeper.report SWEEP --grid grid.png                  # + labelled PNG grid(s)
    python -m sweeper.report SWEEP --sort-by clip --tint aesthetic  # grids ordered and tinted by a score

The report is one static file: inline CSS, JS and SVG, nothing from the
network. It links the images by path relative to itself and shows small
thumbnails cached in `<sweep>/.thumbs/` (made once). The grids are drawn in
the browser, one page at a time, from the manifest embedded as JSON (each
axis' values as codes, see `layout`), so a sweep of 10,000 images opens as
fast as one of ten; axes, sections and filters can be changed there. This
package imports no torch: it runs at the end of every multirun.

Modules, data to page: `sweep` (manifest -> labelled rows), `thumbs`,
`compare`, `layout` (which image goes in which grid cell), `data` (the JSON
the page reads), `markup` and `sections` (HTML), `stats`, `charts` and
`scored` (the scores' statistics, their SVG charts and sections), `page` (fills
`assets/page.html.j2` with them and inlines `assets/report.css` and
`assets/report.js`), `grid_png` (the grids as PNG files), `cli`.
"""

from sweeper.report.cli import REPORT, is_stale, main, write_report
from sweeper.report.compare import Comparison, compare
from sweeper.report.data import MAX_COLS, PAGE_CELLS, PAGE_PAIRS, json_script, relative_url, short_labels
from sweeper.report.grid_png import GRID_CELL, grids, write_grid_png
from sweeper.report.layout import Layout, Section, layout
from sweeper.report.page import render_html
from sweeper.report.sweep import ReportError, Sweep, choose_axes, label, load_sweep, sort_key, sweep_command
from sweeper.report.thumbs import image_states
from sweeper.storing.store import THUMBS_DIR

__all__ = [
    "GRID_CELL", "MAX_COLS", "PAGE_CELLS", "PAGE_PAIRS", "REPORT", "THUMBS_DIR", "Comparison", "Layout", "ReportError",
    "Section", "Sweep", "choose_axes", "compare", "grids", "image_states", "is_stale", "json_script", "label", "layout",
    "load_sweep", "main", "relative_url", "render_html", "short_labels", "sort_key", "sweep_command", "write_grid_png",
    "write_report",
]
