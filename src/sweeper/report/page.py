"""The report page: the sections and the data filled into `assets/page.html.j2`, stylesheet and script inlined."""

from __future__ import annotations

from datetime import datetime, timezone
from functools import cache
from importlib.resources import files
from pathlib import Path

import jinja2
from markupsafe import Markup

from sweeper.report.compare import compare
from sweeper.report.data import json_script, page_data
from sweeper.report.scored import check_choice, compare_scores_section, load_series, page_scores, scores_section, set_distances
from sweeper.report.sections import axes_section, compare_section, environment_section, errors_section, overrides_section, overview
from sweeper.report.sweep import Sweep
from sweeper.report.thumbs import image_states

ASSETS = files("sweeper.report") / "assets"


@cache
def _template() -> jinja2.Template:
    environment = jinja2.Environment(autoescape=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return environment.from_string(_asset("page.html.j2"))


@cache
def _asset(name: str) -> str:
    return (ASSETS / name).read_text(encoding="utf-8")


def render_html(
    sweep: Sweep, x: str | None, y: str | None, out_dir: Path, other: Sweep | None = None,
    sort_by: str | None = None, tint: str | None = None,
) -> str:
    """The whole report page as a string (makes the thumbnails it needs). `sort_by`, `tint`: a score
    that orders the grids' columns and rows (best first) or tints their images at first (ReportError if none such)."""
    series = load_series(sweep)
    check_choice("--sort-by", sort_by, series)
    check_choice("--tint", tint, series)
    states = image_states(sweep)
    nav = [("grid", "Grid"), ("axes", "Per axis"), ("errors", "Errors"), ("overrides", "Overrides"), ("environment", "Versions")]
    sections = [section(sweep) for section in (axes_section, errors_section, overrides_section, environment_section)]
    sets = set_distances(sweep)
    if series or sets:
        sections.insert(0, scores_section(sweep, series, sets))
        nav.insert(1, ("scores", "Scores"))
    compared, compare_html = None, ""
    if other is not None:
        comparison = compare(sweep, other)
        compared = (other, image_states(other), comparison)
        compare_html = compare_section(sweep, other, comparison)
        nav.insert(1, ("compare", "Compare"))
        other_series = load_series(other)
        if series or other_series:
            compare_html += compare_scores_section(sweep, series, other, other_series, comparison)
    data = page_data(sweep, states, x, y, out_dir, compared)
    data.update(page_scores(series, sort_by, tint))
    return _template().render(
        name=sweep.name,
        path=sweep.dir.resolve(),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        nav=nav,
        # Safe as they are: the sections escape what they show, and json_script leaves no '<' in the JSON.
        overview=Markup(overview(sweep, states)),
        compare=Markup(compare_html),
        sections=[Markup(section) for section in sections],
        data=Markup(json_script(data)),
        css=Markup(_asset("report.css")),
        script=Markup(_asset("report.js")),
    )
