"""Manifest: one Parquet row per image, kept crash-safe and resumable.

Rows are written as part files (temp, fsync, rename) per batch and rank under
`<dir>/.manifest-parts/`, and merged into `<dir>/manifest.parquet` at the
end of a run or multirun, whatever launcher ran the jobs. An image is done
when its row says `ok` and its file exists; a re-run skips exactly those.
"""

from __future__ import annotations

import datetime as dt
import io
import os
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from sweeper.planning import lora_files
from sweeper.rendering import families
from sweeper.storing.bounds import loads_json, read_table
from sweeper.errors import PlanError, UnsafePath
from sweeper.storing.files import check_not_link, open_image, write_atomic
from sweeper.planning.spec import FIELDS, SPARSE_FIELDS, public_model_name
from sweeper.storing import writers
from sweeper.storing.writers import forget_stored, merging
from sweeper.storing.store import IMAGES_DIR

MANIFEST = "manifest.parquet"
IMAGE_ID_PATTERN = "^[0-9a-f]{20}$"  # spec.py's ids: 20 hex digits of a sha256
PARTS_DIR = ".manifest-parts"

_TYPES = {
    "string": pa.string(), "int64": pa.int64(), "float64": pa.float64(), "bool": pa.bool_(), "pair": pa.list_(pa.int64()),
    "strings": pa.list_(pa.string()), "floats": pa.list_(pa.float64()), "ints": pa.list_(pa.int64()),
}
# How each image's rendering went; the spec's own columns come from its field table (spec.py).
_RUN_HEAD = [("image_id", pa.string()), ("path", pa.string()), ("status", pa.string()), ("error", pa.string()), ("warning", pa.string())]
# Spec columns written as scalars, so a groupby or a join on them works: one adapter's name,
# weight and A1111 hash (several: joined with ", "); whether the UNet was compiled.
_SCALAR_TYPES = {"lora": pa.string(), "lora_scale": pa.float64(), "lora_sha": pa.string(), "compile": pa.bool_()}
# Run facts that sit beside a spec column, where manifests have always had them.
_RUN_AFTER = {
    "compile": [("compile_mode", pa.string())],  # the torch.compile mode when compiled
    "vae_tiling": [("nsfw", pa.bool_())],
    "dtype": [
        ("device", pa.string()),  # the one used (cuda:1), not the spec's device type
        ("rank", pa.int64()),
        ("world_size", pa.int64()),
        ("batch_size", pa.int64()),  # of the image's pipeline call
        ("batch_index", pa.int64()),
    ],
}
_RUN_TAIL = [
    ("base_steps", pa.int64()),
    ("refiner_steps", pa.int64()),
    ("hires_pass_steps", pa.int64()),  # the steps the hires fix's second pass really ran: hires_steps, as in A1111
    ("seconds", pa.float64()),
    ("load_seconds", pa.float64()),
    ("warmup_seconds", pa.float64()),  # a throwaway warm-up call before the image's call (new pipeline or size)
    ("started_at", pa.timestamp("us", tz="UTC")),
    ("finished_at", pa.timestamp("us", tz="UTC")),
    ("host", pa.string()),
    ("sweeper", pa.string()),
    ("diffusers", pa.string()),
    ("torch", pa.string()),
]
SPEC_COLUMNS = [f.name for f in FIELDS if f.column is not None]
SCHEMA = pa.schema(
    _RUN_HEAD
    + [
        column
        for f in FIELDS
        if f.column is not None
        for column in [(f.name, _SCALAR_TYPES.get(f.name, _TYPES[f.column])), *_RUN_AFTER.get(f.name, [])]
    ]
    + _RUN_TAIL
)
RUN_COLUMNS = {name for name in SCHEMA.names if name not in SPEC_COLUMNS}
# Columns left out of rows, PNGs and the manifest file while unset: keys of some families or features only.
SPARSE_COLUMNS = (*sorted(SPARSE_FIELDS), "hires_pass_steps")


def row(spec, path: str, status: str, error: str | None, **run_facts: Any) -> dict[str, Any]:
    """One manifest row: the spec's columns, where the image is, how it went.

    A key left unset is written as the value that ran, so two sweeps' rows join on their
    columns (in SQL a null equals nothing, not even a null): no negative prompt under CFG is ""
    (an SDXL model with force_zeros_for_empty_prompt runs a zero embedding for it), an unset
    prompt_2 (prompt_3) is the prompt, negative_prompt_2 (_3) the negative prompt, where the family takes them.
    """
    values = {name: getattr(spec, name) for name in SPEC_COLUMNS}
    for name, value in values.items():
        if isinstance(value, tuple):
            values[name] = list(value)
    cfg = families.uses_cfg(spec)
    if cfg and values["negative_prompt"] is None:
        values["negative_prompt"] = ""
    taken = families.get(spec.family).keys
    for n in ("2", "3"):  # the other text encoders' prompts, where the family has them
        if f"prompt_{n}" in taken:
            values[f"prompt_{n}"] = spec.prompt if getattr(spec, f"prompt_{n}") is None else getattr(spec, f"prompt_{n}")
            if cfg and getattr(spec, f"negative_prompt_{n}") is None:
                values[f"negative_prompt_{n}"] = values["negative_prompt"]
    values.update(compile=spec.compile is not None, compile_mode=spec.compile, **lora_columns(spec))
    if spec.vae is not None:  # by name, as grids and PNGs show them (plan.parquet keeps where they are)
        values["vae"] = public_model_name(spec.vae)
    if spec.embeddings is not None:
        values["embeddings"] = [Path(value).name for value in spec.embeddings]
    for name in SPARSE_FIELDS:  # other families' keys: not in this row (nor in its PNG)
        if values[name] is None:
            del values[name]
    return {"image_id": spec.image_id, "path": path, "status": status, "error": error, **values, **run_facts}


def lora_columns(spec) -> dict[str, Any]:
    """The adapters by name as grids and PNGs show them (plan.parquet keeps where they are), the
    hashes A1111 writes in the PNG text, and their weight. Several adapters: names and hashes joined
    with ", "; lora_scale when they share one weight, else null with each weight in `lora` (name:weight)."""
    if not spec.lora:
        return {"lora": None, "lora_scale": None, "lora_sha": None}
    names = [public_model_name(value) for value in spec.lora]
    shared = len(set(spec.lora_scale)) == 1
    if not shared:
        names = [f"{name}:{weight:g}" for name, weight in zip(names, spec.lora_scale)]
    try:
        hashes = ", ".join(lora_files.file_hashes(lora_files.weights_file(value))[1] for value in spec.lora)
    except (OSError, PlanError):  # gone since planning: the PNG text leaves its hashes out too
        hashes = None
    return {"lora": ", ".join(names), "lora_scale": spec.lora_scale[0] if shared else None, "lora_sha": hashes}


def write_part(out_dir: Path, rows: list[dict[str, Any]]) -> Path:
    """Write rows as a new part file, atomically; merge() folds it in later."""
    return writers.write_part(out_dir, PARTS_DIR, pa.Table.from_pylist(rows, schema=SCHEMA))


class PartWriter(writers.PartWriter):
    """Manifest rows of many pipeline calls in few part files (writers.PartWriter). Rows not yet in
    a part are not lost to a crash: each PNG carries its row (read() rebuilds it); only error rows,
    which have no PNG, render again."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir, write_part)


def _part_files(out_dir: Path) -> list[Path]:
    return writers.part_files(out_dir, PARTS_DIR)


def read(out_dir: Path, files: dict[Path, pa.Table | None] | None = None) -> pa.Table:
    """Every image of the dir once, best row per image: the manifest, unmerged parts,
    and rows rebuilt from PNGs that have none (killed before their part was written).

    A sweep dir may come from someone else: rows whose id or path is not one of
    the dir's own images (`images/<id>.png`) are skipped with a warning.
    `files`, if given, gets each file read (None for a damaged one).
    """
    out_dir = Path(out_dir)
    files = {} if files is None else files
    tables = []
    for path in [out_dir / MANIFEST, *_part_files(out_dir)]:
        if path.exists() or path.is_symlink():
            files[path] = table = _read_table(path)
            if table is not None:
                tables.append(_own_rows(table, path))
    table = pa.concat_tables(tables) if tables else SCHEMA.empty_table()
    orphans = _rows_from_orphan_pngs(out_dir, set(table.column("image_id").to_pylist()))
    if orphans:
        table = pa.concat_tables([table, pa.Table.from_pylist(orphans, schema=SCHEMA)])
    return _best_row_per_image(table) if table.num_rows else table


def _read_table(path: Path) -> pa.Table | None:
    """A manifest or part file in today's schema; None (and a warning) if it is damaged."""
    try:
        check_not_link(path)
        table = read_table(path, SCHEMA.names)  # bounded: a planted part may be a Parquet bomb
        missing = [name for name in SCHEMA.names if name not in table.column_names]
        for name in missing:  # written by an older sweeper
            table = table.append_column(name, pa.nulls(table.num_rows, SCHEMA.field(name).type))
        return _scalars(table.select(SCHEMA.names)).cast(SCHEMA)
    except FileNotFoundError:
        return None  # merged (and removed) by another writer since it was listed
    except (pa.ArrowException, OSError, UnsafePath) as error:
        _warn(f"skipping damaged manifest file {path}: {error}")
        return None
    except ValueError as error:  # over a bound (bounds.read_table): the message names the file
        _warn(f"skipping manifest file {error}")
        return None


def _scalars(table: pa.Table) -> pa.Table:
    """The list-typed lora columns and the text `compile` of manifests written before they were scalars."""
    for name, kind in _SCALAR_TYPES.items():
        column = table.column(name)
        if column.type == kind:
            continue
        values = [old_scalar(name, value) for value in column.to_pylist()]
        table = table.set_column(table.column_names.index(name), name, pa.array(values, kind))
    return table


def old_scalar(name: str, value: Any) -> Any:
    """A value of an older manifest in its column's scalar form: lists joined (one weight kept
    when they share it), compile's mode text ("false" or a mode) as a boolean."""
    if name == "compile" and isinstance(value, str):
        return value != "false"
    if not isinstance(value, list):
        return value
    if name == "lora_scale":
        return value[0] if len(set(value)) == 1 else None
    return ", ".join(value)


def _own_rows(table: pa.Table, source: Path) -> pa.Table:
    """The rows whose image_id is an id and whose path is `images/<image_id>.png`."""
    ids = table.column("image_id")
    own = pc.and_(
        pc.fill_null(pc.match_substring_regex(ids, IMAGE_ID_PATTERN), False),
        pc.fill_null(pc.equal(table.column("path"), pc.binary_join_element_wise(f"{IMAGES_DIR}/", ids, ".png", "")), False),
    )
    kept = table.filter(own)
    if kept.num_rows < table.num_rows:
        _warn(f"skipping {table.num_rows - kept.num_rows} row(s) of {source} whose image_id or path is not an image of this sweep dir")
    return kept


def _warn(message: str) -> None:
    print(f"sweeper: warning: {message}", file=sys.stderr, flush=True)


def _pngs(out_dir: Path) -> dict[str, bool]:
    """The `*.png` names in the dir's images/ (one listing, no stat per file), each with whether
    it is a regular file (not a link, not a folder)."""
    images = Path(out_dir) / IMAGES_DIR
    if not images.is_dir() or images.is_symlink():
        return {}
    with os.scandir(images) as entries:
        return {entry.name: entry.is_file(follow_symlinks=False) for entry in entries if entry.name.endswith(".png")}


def _rows_from_orphan_pngs(out_dir: Path, known: set[str]) -> list[dict[str, Any]]:
    rows = []
    for name in _pngs(out_dir):
        if name[: -len(".png")] in known:
            continue
        png = out_dir / IMAGES_DIR / name
        try:
            rows.append(_embedded_row(png, out_dir))
        except (ValueError, KeyError, TypeError, AttributeError, pa.ArrowException) as error:
            # not one of ours, or from before rows were embedded: it renders again
            _warn(f"skipping {png}: no valid manifest row in it ({type(error).__name__}: {str(error)[:200]})")
    return rows


def _embedded_row(png: Path, out_dir: Path) -> dict[str, Any]:
    """The manifest row a PNG carries, checked like any row (it may have been planted)."""
    if not re.fullmatch(IMAGE_ID_PATTERN, png.stem):
        raise ValueError("its name is not an image id")
    with open_image(png, out_dir) as image:
        row = loads_json(image.info["sweeper"])["row"]  # a text chunk before the pixels: nothing decoded
    if row.get("image_id") != png.stem or row.get("path") != f"{IMAGES_DIR}/{png.name}":
        raise ValueError("its row names another image")
    for name in ("started_at", "finished_at"):
        row[name] = dt.datetime.fromisoformat(row[name]) if row.get(name) else None
    row = {name: old_scalar(name, row.get(name)) if name in _SCALAR_TYPES else row.get(name) for name in SCHEMA.names}
    pa.Table.from_pylist([row], schema=SCHEMA)  # raises if a value does not fit its column
    return row


def _best_row_per_image(table: pa.Table) -> pa.Table:
    if pc.count_distinct(table.column("image_id")).as_py() < table.num_rows:
        table = _dedupe(table)
    # Parts arrive in any order: list images by job, then in the order they were rendered.
    return table.sort_by([("job_num", "ascending"), ("started_at", "ascending"), ("batch_index", "ascending")])


def _dedupe(table: pa.Table) -> pa.Table:
    """One row per image: an ok row over an error row, then the latest; a row without a
    finish time (a lost worker's, a rebuilt one's) counts as older than any with one."""
    ids = table.column("image_id").to_pylist()
    ok = [status == "ok" for status in table.column("status").to_pylist()]
    finished = [float("-inf") if at is None else at.timestamp() for at in table.column("finished_at").to_pylist()]
    best: dict[str, int] = {}
    for index, image_id in enumerate(ids):
        current = best.get(image_id)
        if current is None or (ok[index], finished[index]) >= (ok[current], finished[current]):
            best[image_id] = index
    return table.take(sorted(best.values()))


def merge(out_dir: Path) -> pa.Table:
    """Fold part files (and orphan PNGs' rows) into manifest.parquet, atomically, then
    drop the merged parts; damaged parts move to `.manifest-parts/damaged/` for a look.
    Returns the merged rows (empty, and nothing written, when the dir holds none)."""
    out_dir = Path(out_dir)
    with merging(out_dir):  # other writers may merge into this dir too: one at a time
        forget_stored(out_dir)
        parts = _part_files(out_dir)
        tables: dict[Path, pa.Table | None] = {}
        table = read(out_dir, tables)
        merged = tables.get(out_dir / MANIFEST)
        if table.num_rows == 0 or (not parts and merged is not None and merged.num_rows == table.num_rows):
            return table  # nothing new: a re-run of a finished sweep leaves the manifest as it is
        buffer = io.BytesIO()
        pq.write_table(_stored_columns(table), buffer)
        write_atomic(out_dir / MANIFEST, buffer.getvalue())
        if parts:
            writers.drop_parts(out_dir, PARTS_DIR, parts, [part for part in parts if tables.get(part) is None])
    return table


def _stored_columns(table: pa.Table) -> pa.Table:
    """The manifest file's columns: a key of some families only is left out while no row has it,
    so a sweep of other families keeps the schema it always had (read() adds it back as nulls)."""
    unused = [name for name in SPARSE_COLUMNS if table.column(name).null_count == table.num_rows]
    return table.drop_columns(unused)


def done_ids(out_dir: Path) -> set[str]:
    """Images already rendered: an `ok` row and its file on disk (a regular file, not a link)."""
    table = read(out_dir)
    pngs = _pngs(out_dir)  # listed again after the rows: a row read means its PNG was written before it
    return {
        image_id
        for image_id, status in zip(*(table.column(name).to_pylist() for name in ("image_id", "status")))
        if status == "ok" and pngs.get(f"{image_id}.png")
    }


def failed(out_dir: Path, table: pa.Table | None = None) -> list[tuple[str, str]]:
    """(image_id, error) of every image whose best row is an error (of `table`, if read already)."""
    table = read(out_dir) if table is None else table
    return [
        (image_id, error)
        for image_id, status, error in zip(*(table.column(name).to_pylist() for name in ("image_id", "status", "error")))
        if status != "ok"
    ]

