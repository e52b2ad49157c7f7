"""A sweep's scores as the report shows them: one series per metric and scorer, the Scores section,
the score differences of a comparison, and what the page's script gets to sort and tint the grids.

The scores come from `storing.scores` (scores.parquet and its unmerged parts); each number shown is
labelled with the scorer (model id and revision) that made it. A sweep without scores shows nothing.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from sweeper.report.charts import means_chart, number
from sweeper.report.compare import Comparison
from sweeper.report.markup import esc, table
from sweeper.report.stats import MIN_INTERVAL, RESAMPLES, Mean, WinRate, by_value, mean_interval, paired, win_rates, within_of
from sweeper.errors import UnsafePath
from sweeper.report.sweep import ReportError, Sweep
from sweeper.scoring.sets import SCHEMA as SET_SCHEMA, SET_SCORES
from sweeper.storing.bounds import read_table
from sweeper.storing.files import is_regular_inside
from sweeper.storing.scores import read_scores

MAX_ROWS = 200  # rows of a means table; longer ones are cut, with a note
MAX_MATRIX = 12  # axis values in a win-rate matrix


@dataclass
class Series:
    """The scores of one metric by one scorer (model id and revision), per row of the sweep (NaN: none)."""

    id: str  # the name the CLI and the page use: the metric, or `metric[scorer]` when several scorers gave it
    metric: str
    scorer: str
    revision: str
    values: np.ndarray

    @property
    def made_by(self) -> str:
        return f"{self.scorer} (revision {self.revision})" if self.revision else self.scorer

    @property
    def key(self) -> tuple[str, str, str]:
        return self.metric, self.scorer, self.revision


def load_series(sweep: Sweep) -> list[Series]:
    """The sweep's scores of its ok images, one series per (metric, scorer, revision), by metric name."""
    frame = read_scores(sweep.dir)
    place = {row["image_id"]: index for index, row in enumerate(sweep.rows) if row["status"] == "ok"}
    frame = frame[frame["image_id"].isin(place)]
    keys = sorted(set(zip(frame["metric"], frame["scorer"], frame["scorer_revision"])))
    series = []
    for metric, scorer, revision in keys:
        rows = frame[(frame["metric"] == metric) & (frame["scorer"] == scorer) & (frame["scorer_revision"] == revision)]
        values = np.full(len(sweep.rows), np.nan)
        values[[place[image_id] for image_id in rows["image_id"]]] = rows["value"].to_numpy(dtype=float)
        same_metric = [key for key in keys if key[0] == metric]
        same_scorer = [key for key in same_metric if key[1] == scorer]
        name = metric if len(same_metric) == 1 else f"{metric}[{scorer}]" if len(same_scorer) == 1 else f"{metric}[{scorer}@{revision}]"
        series.append(Series(name, metric, scorer, revision, values))
    return series


def check_choice(flag: str, choice: str | None, series: list[Series]) -> None:
    """--sort-by / --tint must name a score of the sweep."""
    if choice is not None and choice not in [one.id for one in series]:
        scored = ", ".join(one.id for one in series) or "nothing (python -m sweeper.score SWEEP_DIR --metric clip scores it)"
        raise ReportError(f"{flag}: no score {choice!r} in this sweep; scored here: {scored}")


def page_scores(series: list[Series], sort_by: str | None, tint: str | None) -> dict[str, Any]:
    """The page's score data: per series its values by row (null: none) and range; the initial sort and tint."""
    return {
        "scores": [
            {
                "id": one.id, "metric": one.metric, "by": one.made_by,
                "values": [None if np.isnan(value) else round(float(value), 6) for value in one.values],
                "low": float(np.nanmin(one.values)), "high": float(np.nanmax(one.values)),
            }
            for one in series
        ],
        "sortBy": sort_by or "",
        "tint": tint or "",
    }


def _frame(sweep: Sweep, one: Series) -> pd.DataFrame:
    """One row per scored image: its swept keys' labels and `value`."""
    scored = [index for index in range(len(sweep.rows)) if not np.isnan(one.values[index])]
    frame = pd.DataFrame({name: [sweep.text[index][name] for index in scored] for name in sweep.swept})
    frame["value"] = one.values[scored]
    return frame


def _interval(mean: Mean) -> str:
    if mean.low is None:
        return f"— (under {MIN_INTERVAL} images)" if mean.n else "—"
    return f"{number(mean.low)} – {number(mean.high)}"


def _rate(won: WinRate | None) -> str:
    return "—" if won is None or not won.n else f"{won.rate:.0%} ({number(won.wins)} of {won.n})"


def set_distances(sweep: Sweep) -> list[dict[str, Any]]:
    """The rows of the sweep's set_scores.parquet (python -m sweeper.score --fid), read bounded; [] if none
    (a damaged file is skipped with a warning)."""
    path = sweep.dir / SET_SCORES
    if not is_regular_inside(path, sweep.dir):
        return []
    try:
        rows = read_table(path, SET_SCHEMA.names).cast(SET_SCHEMA).to_pylist()
    except (OSError, ValueError, KeyError, pa.ArrowException, UnsafePath) as error:
        print(f"sweeper: warning: skipping {path}: {' '.join(str(error).split())[:200]}", file=sys.stderr, flush=True)
        return []
    order = {name: n for n, name in enumerate(sweep.swept)}
    return sorted(rows, key=lambda row: (
        order.get(row["axis"], len(order)), row["axis"], row["metric"], row["reference"],
        sweep.rank(row["axis"], row["axis_value"]) if row["axis"] in sweep.columns else 0, row["axis_value"],
    ))


def _sets_block(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return ""
    shown = [
        [row["axis"], row["axis_value"], row["metric"], number(row["value"]), row["n_images"], row["n_reference"], row["reference"],
         f"{row['scorer']} (revision {row['scorer_revision']})" if row["scorer_revision"] else row["scorer"]]
        for row in rows[:MAX_ROWS]
    ]
    return (
        '<div class="score" data-score="sets"><h3>Set-level distances</h3>'
        '<p class="note">Each axis value\'s images against a folder of reference images (python -m sweeper.score --fid); lower is closer.</p>'
        + table(["axis", "value", "metric", "distance", "images", "reference images", "reference", "scorer"], shown, "set-scores", total=len(rows))
        + "</div>"
    )


def scores_section(sweep: Sweep, series: list[Series], sets: list[dict[str, Any]]) -> str:
    """Per score: all images, then per axis a table of means and intervals, a chart, a win-rate matrix;
    then the set-level distances."""
    blocks = [_series_block(sweep, one) for one in series] + [_sets_block(sets)]
    intro = (
        f'<p class="note">Per axis value: the mean score and its 95% bootstrap interval (percentile, '
        f"{RESAMPLES} resamples, seeded) over images that differ only in prompt and seed; no interval under {MIN_INTERVAL} images. "
        "Win rates compare images equal in every other swept key (prompt and seed included); ties count half. "
        "A key with one value per axis value (the negative prompt, unset at guidance 1) counts as part of the axis.</p>"
    )
    return '<section id="scores"><h2>Scores</h2>' + intro + "".join(blocks) + "</section>"


def _series_block(sweep: Sweep, one: Series) -> str:
    frame = _frame(sweep, one)
    overall = mean_interval(frame["value"].to_numpy())
    by = f'<span class="scorer">scorer: {esc(one.made_by)}</span>'
    head = (
        f'<h3 id="score-{esc(one.id)}">{esc(one.id)} {by}</h3>'
        f'<p class="score-all">all {overall.n} scored images: mean {number(overall.mean)}, 95% interval {esc(_interval(overall))}</p>'
    )
    axes = [_axis_block(sweep, one, frame, axis) for axis in sweep.swept if axis != "seed"]
    return f'<div class="score" data-score="{esc(one.id)}">{head}{"".join(axes)}</div>'


def _axis_block(sweep: Sweep, one: Series, frame: pd.DataFrame, axis: str) -> str:
    orders = {name: sweep.labels(name) for name in sweep.swept}
    within = within_of(frame, axis, sweep.swept)
    rows = by_value(frame, axis, sweep.swept, orders)
    caption = f'<p class="note">scorer: {esc(one.made_by)}</p>'
    means = table(
        [*within, axis, "images", f"mean {one.id}", "95% interval"],
        [[*key, value, mean.n, number(mean.mean), _interval(mean)] for key, value, mean in rows[:MAX_ROWS]],
        "score-means", total=len(rows),
    )
    labels = [" · ".join((*key, value)) for key, value, _ in rows]
    chart = means_chart(f"mean {one.id} by {axis}, scorer {one.made_by}", labels, [mean for _, _, mean in rows], one.made_by)
    present = set(frame[axis].unique())
    values = [text for text in orders[axis] if text in present]
    if len(values) > MAX_MATRIX:
        matrix = f'<p class="note">No win-rate matrix: {len(values)} values of {esc(axis)} (at most {MAX_MATRIX}).</p>'
    elif len(values) > 1:
        rates = win_rates(frame, axis, sweep.swept, values)
        matrix = (
            f'<p class="note">Win rate of the row\'s {esc(axis)} over the column\'s on otherwise identical images '
            f"({esc(one.id)}, scorer {esc(one.made_by)}):</p>"
            + table([f"{axis}: row beats column", *values], [[a, *("" if a == b else _rate(rates.get((a, b))) for b in values)] for a in values], "win-rates")
        )
    else:
        matrix = ""
    return f'<div class="score-axis" data-axis="{esc(axis)}"><h4>{esc(one.id)} by {esc(axis)}</h4>{caption}{means}{chart}{matrix}</div>'


def compare_scores_section(a: Sweep, a_series: list[Series], b: Sweep, b_series: list[Series], comparison: Comparison) -> str:
    """Score differences A - B on the compared pairs, per score that both sweeps have from the same scorer."""
    in_b = {one.key: one for one in b_series}
    rows = []
    for one in a_series:
        other = in_b.get(one.key)
        if other is None:
            continue
        side_a = np.array([np.nanmean(one.values[rows_a]) if np.isfinite(one.values[rows_a]).any() else np.nan for rows_a, _ in comparison.pairs])
        side_b = np.array([np.nanmean(other.values[rows_b]) if np.isfinite(other.values[rows_b]).any() else np.nan for _, rows_b in comparison.pairs])
        difference, won = paired(side_a, side_b)
        rows.append([one.id, one.made_by, difference.n, number(difference.mean), _interval(difference), _rate(won)])
    shared = {one.key for one in a_series} & set(in_b)
    alone = [f"{side}: {one.id} by {one.made_by}" for side, group in (("A", a_series), ("B", b_series)) for one in group if one.key not in shared]
    note = f'<p class="note">Not compared, scored in one sweep only: {esc("; ".join(alone))}.</p>' if alone else ""
    body = (
        table(["score", "scorer", "pairs", "mean A − B", "95% interval", "A wins"], rows, "score-diffs")
        if rows else '<p class="note">No score that both sweeps have from the same scorer.</p>'
    )
    return (
        '<section id="compare-scores"><h2>Scores: A − B on paired images</h2>'
        '<p class="note">Per pair of matched images scored by the same scorer in both sweeps: the mean difference '
        "with its 95% bootstrap interval, and how often A's image scored higher (ties count half).</p>"
        + body + note + "</section>"
    )
