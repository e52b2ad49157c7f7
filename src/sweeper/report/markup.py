"""Small HTML builders: escaped text, tables and inline SVG bar charts."""

from __future__ import annotations

import html
from collections.abc import Iterable
from typing import Any


class Raw(str):
    """Markup that is already safe HTML; every other cell is escaped."""


def esc(value: Any) -> str:
    return value if isinstance(value, Raw) else html.escape(str(value))


def table(head: list[str], rows: Iterable[list[Any]], cls: str = "", total: int | None = None) -> str:
    """An HTML table; cells are escaped unless Raw. `total` notes rows left out."""
    rows = list(rows)
    body = "".join("<tr>" + "".join(f"<td>{esc(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    note = ""
    if total is not None and total > len(rows):
        note = f'<p class="note">{len(rows)} of {total} shown.</p>'
    header = "".join(f'<th scope="col">{esc(cell)}</th>' for cell in head)
    return f'<table class="{cls}"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>{note}'


def seconds_text(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds:.3g} s" if seconds < 100 else f"{seconds:,.0f} s"


def bar_chart(title: str, labels: list[str], values: list[float | None], unit: str = "s") -> str:
    """A horizontal bar chart as inline SVG, one bar per label."""
    bar, gap, width, value_width = 18, 6, 460, 70
    label_width = min(170, 12 + 7 * max(len(text) for text in labels))
    top = max((value for value in values if value is not None), default=0) or 1
    scale = (width - label_width - value_width) / top
    height = len(labels) * (bar + gap) + gap
    parts = [
        f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>'
    ]
    for n, (text, value) in enumerate(zip(labels, values)):
        y = gap + n * (bar + gap)
        short = text if len(text) <= 24 else text[:23] + "…"
        parts.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end"><title>{esc(text)}</title>{esc(short)}</text>'
        )
        if value is not None:
            length = max(1.0, value * scale)
            parts.append(f'<rect x="{label_width}" y="{y}" width="{length:.1f}" height="{bar}" rx="2"/>')
            parts.append(f'<text x="{label_width + length + 4:.1f}" y="{y + 13}">{value:.3g} {unit}</text>')
        else:
            parts.append(f'<text x="{label_width + 4}" y="{y + 13}">no timing</text>')
    parts.append("</svg>")
    return "".join(parts)
