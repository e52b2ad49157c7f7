"""Small inline SVG charts of scores: a mean per axis value with its 95% interval as a bar."""

from __future__ import annotations

from sweeper.report.markup import esc
from sweeper.report.stats import Mean

MAX_ROWS = 40  # longer charts are cut, with a note


def number(value: float | None) -> str:
    """A score as the report prints it."""
    return "—" if value is None else f"{value:.4g}"


def means_chart(title: str, labels: list[str], means: list[Mean], scorer: str) -> str:
    """One row per label: a dot at the mean, a line across the interval, the mean written beside.
    The scale spans the lowest to the highest interval end (or mean); the scorer is named below."""
    labels, means = labels[:MAX_ROWS], means[:MAX_ROWS]
    row, gap, value_width = 18, 6, 64
    width = max(460, 12 + 7 * len(f"scorer: {scorer}"))  # the scorer's whole name fits below
    label_width = min(170, 12 + 7 * max((len(text) for text in labels), default=1))
    ends = [value for mean in means for value in (mean.low, mean.mean, mean.high) if value is not None]
    low, high = (min(ends), max(ends)) if ends else (0.0, 1.0)
    if high == low:
        low, high = low - 1, high + 1
    span = width - label_width - value_width - 8

    def at(value: float) -> float:
        return label_width + 4 + (value - low) / (high - low) * span

    top = gap
    height = top + len(labels) * (row + gap) + 30
    parts = [
        f'<svg class="chart scores" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'xmlns="http://www.w3.org/2000/svg"><title>{esc(title)}</title>'
    ]
    for n, (text, mean) in enumerate(zip(labels, means)):
        y = top + n * (row + gap)
        middle = y + row / 2
        short = text if len(text) <= 24 else text[:23] + "…"
        parts.append(f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end"><title>{esc(text)}</title>{esc(short)}</text>')
        if mean.mean is None:
            continue
        if mean.low is not None and mean.high is not None:
            parts.append(f'<line class="interval" x1="{at(mean.low):.1f}" x2="{at(mean.high):.1f}" y1="{middle}" y2="{middle}"/>')
        parts.append(f'<circle cx="{at(mean.mean):.1f}" cy="{middle}" r="4"/>')
        note = "" if mean.low is not None else f" (n={mean.n})"
        parts.append(f'<text x="{width - value_width + 4}" y="{y + 13}">{number(mean.mean)}{note}</text>')
    base = top + len(labels) * (row + gap) + 4
    parts.append(f'<line class="axis" x1="{at(low):.1f}" x2="{at(high):.1f}" y1="{base}" y2="{base}"/>')
    parts.append(f'<text x="{at(low):.1f}" y="{base + 12}" text-anchor="start">{number(low)}</text>')
    parts.append(f'<text x="{at(high):.1f}" y="{base + 12}" text-anchor="end">{number(high)}</text>')
    parts.append(f'<text class="scorer" x="4" y="{base + 24}">scorer: {esc(scorer)}</text>')
    parts.append("</svg>")
    return "".join(parts)
