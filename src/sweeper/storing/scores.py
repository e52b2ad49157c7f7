"""Scores: one Parquet row per (image, metric, scorer), kept crash-safe like the manifest.

Rows are written as part files (temp, fsync, rename; writers.write_part) per
batch and rank under `<dir>/.scores-parts/`, and merged into
`<dir>/scores.parquet` under the sweep dir's merge lock (writers.merging), so
any number of writers may score into one sweep dir at once.

Long format, one row per score:

    image_id         the manifest's image id
    metric           "clip", "aesthetic", "pickscore"
    value            float64
    scorer           the scorer's model as the user named it (the aesthetic head: "<head> on <clip>")
    scorer_revision  the hash or revision of its weights
    scored_at        when (UTC)

A score is known by (image_id, metric, scorer, scorer_revision): scoring
again with the same scorer adds nothing, another scorer adds rows beside.

    read_scores(dir)  -> DataFrame   every score once (merged file and unmerged parts)
    scores_wide(dir)  -> DataFrame   one row per image_id, one column per metric (+ scorer): joins the manifest
"""

from __future__ import annotations

import datetime as dt
import io
import sys
from pathlib import Path
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sweeper.errors import UnsafePath
from sweeper.storing import writers
from sweeper.storing.bounds import read_table
from sweeper.storing.files import check_not_link, write_atomic
from sweeper.storing.manifest import IMAGE_ID_PATTERN

SCORES = "scores.parquet"
PARTS_DIR = ".scores-parts"
SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("metric", pa.string()),
        ("value", pa.float64()),
        ("scorer", pa.string()),
        ("scorer_revision", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
KEY = ("image_id", "metric", "scorer", "scorer_revision")


def row(image_id: str, metric: str, value: float, scorer: str, scorer_revision: str) -> dict[str, Any]:
    return {
        "image_id": image_id, "metric": metric, "value": float(value), "scorer": scorer, "scorer_revision": scorer_revision,
        "scored_at": dt.datetime.now(dt.timezone.utc),
    }


def write_part(sweep_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write score rows as a new part file, atomically; merge() folds it in later."""
    return writers.write_part(sweep_dir, PARTS_DIR, pa.Table.from_pylist(rows, schema=SCHEMA))


class PartWriter(writers.PartWriter):
    """Score rows of many batches in few part files; rows lost to a crash are scored again by the next run."""

    def __init__(self, sweep_dir: Path) -> None:
        super().__init__(sweep_dir, write_part)


def read(sweep_dir: Path, files: dict[Path, pa.Table | None] | None = None) -> pa.Table:
    """Every score of the dir once (the merged file and unmerged parts), as a pyarrow Table.

    A sweep dir may come from someone else: files are read bounded (bounds.read_table),
    damaged ones and rows whose image_id is not an id are skipped with a warning.
    `files`, if given, gets each file read (None for a damaged one).
    """
    sweep_dir = Path(sweep_dir)
    files = {} if files is None else files
    tables = []
    for path in [sweep_dir / SCORES, *writers.part_files(sweep_dir, PARTS_DIR)]:
        if path.exists() or path.is_symlink():
            files[path] = table = _read_table(path)
            if table is not None:
                tables.append(table)
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    return _first_per_key(table)


def _read_table(path: Path) -> pa.Table | None:
    try:
        check_not_link(path)
        table = read_table(path, SCHEMA.names)  # bounded: a planted part may be a Parquet bomb
        table = table.select(SCHEMA.names).cast(SCHEMA)
    except FileNotFoundError:
        return None  # merged (and removed) by another writer since it was listed
    except (pa.ArrowException, OSError, UnsafePath, KeyError) as error:
        _warn(f"skipping damaged scores file {path}: {' '.join(str(error).split())[:200]}")
        return None
    except ValueError as error:  # over a bound: the message names the file
        _warn(f"skipping scores file {error}")
        return None
    own = pc.fill_null(pc.match_substring_regex(table.column("image_id"), IMAGE_ID_PATTERN), False)
    for name in ("metric", "scorer", "scorer_revision", "value"):
        own = pc.and_(own, pc.is_valid(table.column(name)))
    kept = table.filter(own)
    if kept.num_rows < table.num_rows:
        _warn(f"skipping {table.num_rows - kept.num_rows} row(s) of {path} without an image id, metric, scorer or value")
    return kept


def _first_per_key(table: pa.Table) -> pa.Table:
    """One row per (image, metric, scorer, revision): the earliest scored (two writers may score one image at once)."""
    if table.num_rows == 0:
        return table
    table = table.sort_by([("scored_at", "ascending")])
    seen: set[tuple] = set()
    keep = []
    for index, key in enumerate(zip(*(table.column(name).to_pylist() for name in KEY))):
        if key not in seen:
            seen.add(key)
            keep.append(index)
    return table.take(keep).sort_by([(name, "ascending") for name in KEY])


def scored(sweep_dir: Path, metric: str, scorer: str, scorer_revision: str) -> set[str]:
    """The image ids that hold a score of `metric` by this scorer."""
    table = read(sweep_dir)
    mask = pc.and_(
        pc.and_(pc.equal(table.column("metric"), metric), pc.equal(table.column("scorer"), scorer)),
        pc.equal(table.column("scorer_revision"), scorer_revision),
    )
    return set(table.filter(mask).column("image_id").to_pylist())


def merge(sweep_dir: Path) -> pa.Table:
    """Fold part files into scores.parquet, atomically, then drop the merged parts (damaged
    ones move to `.scores-parts/damaged/`). Returns every score; nothing written when nothing is new."""
    sweep_dir = Path(sweep_dir)
    with writers.merging(sweep_dir):  # the sweep dir's merge lock: merges never interleave
        parts = writers.part_files(sweep_dir, PARTS_DIR)
        tables: dict[Path, pa.Table | None] = {}
        table = read(sweep_dir, tables)
        if not parts:
            return table
        if table.num_rows:
            buffer = io.BytesIO()
            pq.write_table(table, buffer)
            write_atomic(sweep_dir / SCORES, buffer.getvalue())
        writers.drop_parts(sweep_dir, PARTS_DIR, parts, [part for part in parts if tables.get(part) is None])
    return table


def read_scores(sweep_dir: Path):
    """Every score of the sweep dir once, as a pandas DataFrame in the long format (SCHEMA)."""
    return read(sweep_dir).to_pandas()


def column_names(pairs: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The wide view's column of each (metric, scorer): the metric's name when one scorer gave it
    (`clip`), else `<metric>[<scorer>]` for each (`clip[openai/clip-vit-large-patch14]`)."""
    pairs = sorted(set(pairs))
    scorers: dict[str, int] = {}
    for metric, _ in pairs:
        scorers[metric] = scorers.get(metric, 0) + 1
    return {(metric, scorer): metric if scorers[metric] == 1 else f"{metric}[{scorer}]" for metric, scorer in pairs}


def scores_wide(sweep_dir: Path):
    """One row per image_id (a column, not the index: `manifest_frame.merge(scores_wide(d), on="image_id")`
    works), one column per metric: `clip`, `aesthetic`; where several scorers gave one metric, one
    column each, named `<metric>[<scorer>]` (column_names). Two revisions of one scorer: the latest scored."""
    import pandas as pd

    table = read(sweep_dir)
    if table.num_rows == 0:
        return pd.DataFrame(columns=["image_id"])
    frame = table.to_pandas().sort_values("scored_at")
    names = column_names(zip(frame["metric"], frame["scorer"]))
    frame["column"] = [names[pair] for pair in zip(frame["metric"], frame["scorer"])]
    wide = frame.pivot_table(index="image_id", columns="column", values="value", aggfunc="last")
    wide.columns.name = None
    return wide[sorted(wide.columns)].reset_index()


def _warn(message: str) -> None:
    print(f"sweeper: warning: {message}", file=sys.stderr, flush=True)
