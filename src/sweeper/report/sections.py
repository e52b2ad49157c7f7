"""The report's sections drawn in Python: overview, per-axis tables, errors, overrides, versions, comparison.

Each returns safe HTML; the grids and the side-by-side pairs are drawn by the page's script.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from sweeper.storing import commands
from sweeper.report.compare import Comparison
from sweeper.report.markup import Raw, bar_chart, esc, seconds_text, table
from sweeper.report.sweep import ENVIRONMENT, Sweep, label, sort_key, sweep_command

MAX_TABLE_ROWS = 200  # longer tables (errors, jobs, axis values) are cut, with a note


def overview(sweep: Sweep, states: list[str]) -> str:
    counts = Counter(states)
    ok = counts["ok"] + counts["full"]
    starts = [row["started_at"] for row in sweep.rows if row["started_at"] is not None]
    ends = [row["finished_at"] for row in sweep.rows if row["finished_at"] is not None]
    total = sum(row["seconds"] or 0 for row in sweep.rows)
    calls = [row for row in sweep.rows if row["batch_index"] in (0, None)]  # a call's load and warm-up are on each of its rows
    loads, warmups = (sum(row[name] or 0 for row in calls) for name in ("load_seconds", "warmup_seconds"))
    facts = [("images", f"{len(sweep.rows)} ({ok} ok, {counts['error']} failed, {counts['missing']} files missing)")]
    if sweep.still_to_do:
        facts.append(("still to do", f"{sweep.still_to_do} of {len(sweep.planned)} planned images: run the same command to render them"))
    facts += [
        ("swept", " × ".join(f"{name} ({len(sweep.values(name))})" for name in sweep.swept) or "nothing varies"),
        ("render time", f"{seconds_text(total)} in all, {seconds_text(sweep.mean_seconds(range(len(sweep.rows))))} per image"
                        f"; model loads ({seconds_text(loads)}) and warm-up calls ({seconds_text(warmups)}) apart"),
    ]
    if starts and ends:
        facts.append(("wall clock", f"{label(min(starts))} → {label(max(ends))} ({seconds_text((max(ends) - min(starts)).total_seconds())})"))
    items = "".join(f"<dt>{esc(key)}</dt><dd>{esc(value)}</dd>" for key, value in facts)
    return f'<dl class="facts">{items}</dl>'


def axes_section(sweep: Sweep) -> str:
    if not sweep.swept:
        return '<section id="axes"><h2>Per axis</h2><p class="note">Nothing varies in this sweep.</p></section>'
    blocks = []
    for name in sweep.swept:
        groups = sweep.by_value(name)
        means = {text: sweep.mean_seconds(rows) for text, rows in groups.items()}
        rows = [
            [text, len(rows), sum(sweep.rows[i]["status"] == "ok" for i in rows), sum(sweep.rows[i]["status"] != "ok" for i in rows), seconds_text(means[text])]
            for text, rows in list(groups.items())[:MAX_TABLE_ROWS]
        ]
        chart = ""
        if len(groups) <= 40:
            chart = bar_chart(f"mean seconds per image by {name}", list(means), list(means.values()))
        blocks.append(
            f'<div class="axis"><h3>{esc(name)}</h3>'
            + table([name, "images", "ok", "failed", "s / image"], rows, "counts", total=len(groups))
            + chart
            + "</div>"
        )
    return '<section id="axes"><h2>Per axis: counts and time per image</h2><div class="axes">' + "".join(blocks) + "</div></section>"


def errors_section(sweep: Sweep) -> str:
    failed = [index for index, row in enumerate(sweep.rows) if row["status"] != "ok"]
    if not failed:
        return '<section id="errors"><h2>Errors</h2><p class="note">No failed images.</p></section>'
    messages = Counter(sweep.rows[i]["error"] or "(no message)" for i in failed)
    summary = table(["error", "images"], messages.most_common(MAX_TABLE_ROWS), "errors", total=len(messages))
    keys = sweep.swept
    rows = [
        [sweep.rows[i]["image_id"], *(sweep.text[i][name] for name in keys), Raw(f"<pre>{esc(sweep.rows[i]['error'] or '')}</pre>")]
        for i in failed[:MAX_TABLE_ROWS]
    ]
    detail = table(["image_id", *keys, "error"], rows, "errors", total=len(failed))
    return f'<section id="errors"><h2>Errors ({len(failed)})</h2>{summary}<details><summary>Failed images</summary>{detail}</details></section>'


def overrides_section(sweep: Sweep) -> str:
    return (
        '<section id="overrides"><h2>Overrides</h2>'
        + commands_block(sweep)
        + jobs_block(sweep)
        + "</section>"
    )


def commands_block(sweep: Sweep) -> str:
    """Every command that wrote the dir (commands.jsonl), or the one Hydra recorded last."""
    recorded = commands.read(sweep.dir)
    if not recorded:
        last = sweep_command(sweep.dir)
        return "<h3>Sweep (Hydra)</h3>" + (f"<pre>{esc(last)}</pre>" if last else '<p class="note">No multirun.yaml in the sweep dir.</p>')
    rows = [
        [entry["at"].replace("T", " "), Raw(f"<code>{esc(commands.command_line(entry['overrides']))}</code>"),
         _job_range(entry["first_job"], entry["jobs"]), entry["images"], entry["to_render"]]
        for entry in recorded[-MAX_TABLE_ROWS:]
    ]
    return f"<h3>Commands ({len(recorded)})</h3>" + table(["when (UTC)", "command", "jobs", "images", "to render"], rows, "commands", total=len(recorded))


def _job_range(first: int, count: int) -> str:
    return str(first) if count == 1 else f"{first}–{first + count - 1}"


def jobs_block(sweep: Sweep) -> str:
    jobs: dict[tuple[Any, str], int] = Counter((row["job_num"], row["overrides"] or "") for row in sweep.rows)
    ordered = sorted(jobs.items(), key=lambda item: sort_key(item[0][0]))
    rows = [[label(job), Raw(f"<code>{esc(overrides)}</code>"), count] for (job, overrides), count in ordered[:MAX_TABLE_ROWS]]
    return f"<details><summary>Jobs ({len(jobs)})</summary>" + table(["job", "overrides", "images"], rows, "jobs", total=len(jobs)) + "</details>"


def environment_section(sweep: Sweep) -> str:
    rows = []
    for name in ENVIRONMENT:
        counts = Counter(text[name] for text in sweep.text)
        rows.append([name, ", ".join(f"{value} ({count})" if len(counts) > 1 else value for value, count in counts.most_common())])
    return '<section id="environment"><h2>Versions and devices</h2>' + table(["column", "values (images)"], rows, "env") + "</section>"


def compare_section(a: Sweep, b: Sweep, comparison: Comparison) -> str:
    differ = (
        table(["column", f"A: {a.name}", f"B: {b.name}"], [list(row) for row in comparison.differ], "differ")
        if comparison.differ
        else '<p class="note">No column is constant in both sweeps with different values.</p>'
    )
    swept_a, swept_b = ", ".join(a.swept) or "nothing", ", ".join(b.swept) or "nothing"
    summary = (
        f"<p>A: <code>{esc(a.dir)}</code> ({len(a.rows)} images, sweeps {esc(swept_a)})<br>"
        f"B: <code>{esc(b.dir)}</code> ({len(b.rows)} images, sweeps {esc(swept_b)})</p>"
        f'<p class="compare-counts">{len(comparison.pairs)} matched pairs; {comparison.only_a} images only in A, '
        f"{comparison.only_b} only in B. Matched on equal {esc(', '.join(comparison.shown) or 'spec columns')}.</p>"
    )
    return (
        f'<section id="compare"><h2>Compare with {esc(b.name)}</h2>{summary}'
        f"<h3>Parameters that differ</h3>{differ}"
        '<h3>Side by side</h3><div class="pager" id="compare-pager"></div><div id="compare-pairs" data-scope></div>'
        "</section>"
    )

