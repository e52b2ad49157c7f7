"""Bounds on reading what others made: files, JSON and Parquet tables that stay small once read.

A few bytes can stand for gigabytes once read: a FIFO or a link to /dev/zero
where a file was, JSON of 100,000 nested `[` (Python's parser recurses), a
Parquet file of 11 KB whose dictionary-encoded 5 MB value repeats 2,000 times.
Each reader here refuses such input with ValueError (one line) before it
reads it whole:

    read_regular(path, limit, what)    a regular file of at most `limit` bytes
    loads_json(text)                   JSON nested at most MAX_JSON_DEPTH deep
    load_plain_yaml(text)              YAML without aliases, nested as deep
    read_table(path), parse_table(data)   a Parquet table bounded in rows, columns and bytes
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

from sweeper.storing.files import read_bounded

MAX_JSON_DEPTH = 32  # sweeper's own JSON (a PNG's chunk, scheduler kwargs) nests 4 deep
MAX_TABLE_FILE_BYTES = 512 * 2**20  # a manifest, part or plan file on disk (100,000 images: ~20 MB)
MAX_TABLE_ROWS = 10_000_000
MAX_TABLE_COLUMNS = 1_000  # a manifest has ~80
MAX_TABLE_BYTES = 2 * 2**30  # the columns read, once decoded (100,000 images: ~200 MB)

# A string (to its end, closed or not: one pass, never a rescan from each quote) or a bracket.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"?|[\[\]{}]', re.S)


def read_regular(path: Path, limit: int, what: str, follow_links: bool = True) -> bytes:
    """The bytes of a regular file of at most `limit` bytes (`what` names it in errors).

    Opened non-blocking, so a FIFO is refused instead of waiting for a writer;
    without `follow_links` a link (to /dev/zero, to someone's file) is refused too.
    A missing file raises FileNotFoundError, as open() would.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if follow_links else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise
    except OSError as error:
        reason = "a symbolic link" if not follow_links and os.path.islink(path) else error.strerror
        raise ValueError(f"{path}: {reason}") from None
    return read_bounded(fd, path, limit, what)


def loads_json(text: str | bytes, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """json.loads, refusing (ValueError) a document nested deeper than `max_depth`:
    the parser recurses, and `[` x 100,000 ends in RecursionError."""
    if isinstance(text, bytes):
        text = text.decode("utf-8")
    depth = 0
    for match in _JSON_TOKEN.finditer(text):  # strings skipped whole: a `[` in one is text
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > max_depth:
                raise ValueError(f"JSON nested more than {max_depth} deep")
        elif token in "]}":
            depth -= 1
    return json.loads(text)


def load_plain_yaml(text: str, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """yaml.safe_load of a document without aliases, nested at most `max_depth` deep; ValueError otherwise.

    For YAML that sweeper or Hydra wrote (they write no aliases): a few hundred
    bytes of nested aliases expand to gigabytes once printed.
    """
    import yaml

    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                raise ValueError("it uses YAML aliases (*name), which sweeper and Hydra never write")
            if isinstance(event, (yaml.SequenceStartEvent, yaml.MappingStartEvent)):
                depth += 1
                if depth > max_depth:
                    raise ValueError(f"YAML nested more than {max_depth} deep")
            elif isinstance(event, (yaml.SequenceEndEvent, yaml.MappingEndEvent)):
                depth -= 1
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"not valid YAML ({' '.join(str(error).split())[:200]})") from None


def read_table(path: Path, columns: Sequence[str] | None = None, follow_links: bool = False):
    """The Parquet file's `columns` (those of them it has; all if None) as a pyarrow Table,
    from a regular file of at most MAX_TABLE_FILE_BYTES (not a link, unless `follow_links`),
    bounded as parse_table says."""
    return parse_table(read_regular(path, MAX_TABLE_FILE_BYTES, "a Parquet table", follow_links), path, columns)


def parse_table(data: bytes, where: Any, columns: Sequence[str] | None = None):
    """Parquet bytes (`where` names them in errors) -> their `columns` as a pyarrow Table.

    Refused with ValueError (one line), before anything is decoded whole: more
    than MAX_TABLE_ROWS rows or MAX_TABLE_COLUMNS columns, or columns that
    would take more than MAX_TABLE_BYTES once decoded. Text columns are read
    dictionary-encoded first, so a repeated value is counted as often as it
    repeats but held once. pyarrow's errors (a damaged file) are raised as they are.
    """
    import io

    import pyarrow.parquet as pq

    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    if meta.num_rows > MAX_TABLE_ROWS:
        raise ValueError(f"{where}: {meta.num_rows} rows, over the limit of {MAX_TABLE_ROWS}")
    if meta.num_columns > MAX_TABLE_COLUMNS:
        raise ValueError(f"{where}: {meta.num_columns} columns, over the limit of {MAX_TABLE_COLUMNS}")
    schema = meta.schema
    names = schema.to_arrow_schema().names
    wanted = names if columns is None else [name for name in columns if name in names]
    chunks = [meta.row_group(g).column(i) for g in range(meta.num_row_groups) for i in range(meta.num_columns)]
    stored = sum(chunk.total_uncompressed_size for chunk in chunks if chunk.path_in_schema.split(".")[0] in wanted)
    if stored > MAX_TABLE_BYTES:
        raise ValueError(f"{where}: {stored} bytes once uncompressed, over the limit of {MAX_TABLE_BYTES}")
    leaves = [schema.column(i) for i in range(len(schema))]
    texts = [leaf.path for leaf in leaves if leaf.physical_type == "BYTE_ARRAY" and leaf.path.split(".")[0] in wanted]
    table = pq.ParquetFile(io.BytesIO(data), read_dictionary=texts).read(columns=wanted)
    size = sum(_decoded_bytes(chunk) for column in table.columns for chunk in column.chunks)
    if size > MAX_TABLE_BYTES:
        raise ValueError(f"{where}: {size} bytes once decoded (repeated values), over the limit of {MAX_TABLE_BYTES}")
    return table.cast(_plain_schema(table.schema))


def _decoded_bytes(array) -> int:
    """About what `array` takes once its dictionaries are decoded."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if pa.types.is_dictionary(array.type):
        lengths = pc.take(pc.binary_length(array.dictionary), array.indices)
        return int(pc.sum(lengths).as_py() or 0) + 8 * len(array)
    if pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
        return _decoded_bytes(array.flatten()) + 8 * len(array)
    return array.nbytes


def _plain_type(kind):
    import pyarrow as pa

    if pa.types.is_dictionary(kind):
        return kind.value_type
    if pa.types.is_list(kind):
        return pa.list_(_plain_type(kind.value_type))
    if pa.types.is_large_list(kind):
        return pa.large_list(_plain_type(kind.value_type))
    return kind


def _plain_schema(schema):
    import pyarrow as pa

    return pa.schema([field.with_type(_plain_type(field.type)) for field in schema], metadata=schema.metadata)
