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


def render_html(sweep: Sweep, x: str | None, y: str | None, out_dir: Path, other: Sweep | None = None) -> str:
    """The whole report page as a string (makes the thumbnails it needs)."""
    states = image_states(sweep)
    nav = [("grid", "Grid"), ("axes", "Per axis"), ("errors", "Errors"), ("overrides", "Overrides"), ("environment", "Versions")]
    compared, compare_html = None, ""
    if other is not None:
        comparison = compare(sweep, other)
        compared = (other, image_states(other), comparison)
        compare_html = compare_section(sweep, other, comparison)
        nav.insert(1, ("compare", "Compare"))
    return _template().render(
        name=sweep.name,
        path=sweep.dir.resolve(),
        generated=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        nav=nav,
        # Safe as they are: the sections escape what they show, and json_script leaves no '<' in the JSON.
        overview=Markup(overview(sweep, states)),
        compare=Markup(compare_html),
        sections=[Markup(section(sweep)) for section in (axes_section, errors_section, overrides_section, environment_section)],
        data=Markup(json_script(page_data(sweep, states, x, y, out_dir, compared))),
        css=Markup(_asset("report.css")),
        script=Markup(_asset("report.js")),
    )
