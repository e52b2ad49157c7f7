"""Prompt files: one prompt per line, or a CSV file whose rows set config values too.

A text file holds one prompt per line (blank lines and `# comments`
skipped); a `.csv` file has a header row with a `prompt` column, and every
other column is a per-row config value (`CSV_PARAMS`), an empty cell meaning
"not set here". Each prompt comes with where it was found, for error messages.
"""

from __future__ import annotations

import csv
import io
import math
import re
from pathlib import Path
from typing import Any, Callable, Mapping

from sweeper.errors import PlanError, invalid, one_line, show

# Per-row parameter columns a CSV prompt file may have, besides `prompt`.
CSV_PARAMS: tuple[str, ...] = (
    "negative_prompt",
    "prompt_2",
    "negative_prompt_2",
    "seed",
    "guidance",
    "steps",
    "width",
    "height",
    "strength",
    "init_image",
    "mask_image",
)


# How a CSV cell is read, by column; a column not named here stays the cell's text.
CSV_TYPES: dict[str, type] = {
    "seed": int,
    "steps": int,
    "width": int,
    "height": int,
    "guidance": float,
    "strength": float,
}


_INT = re.compile(r"^[+-]?[0-9]+$")


def _read(path: Path, prompt_file: Any, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise invalid("prompt_file", prompt_file, f"not UTF-8 text ({one_line(exc.reason)} at byte {exc.start})") from None


def read_text(path: Path, prompt_file: Any) -> list[tuple[str, Mapping[str, Any], str]]:
    """One prompt per line; blank lines and `# comments` skipped."""
    sources = [
        (line.strip(), {}, f"line {number}")
        for number, line in enumerate(_read(path, prompt_file, "utf-8").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not sources:
        raise invalid("prompt_file", prompt_file, "the file holds no prompt (one per line)")
    return sources


def read_csv(path: Path, prompt_file: Any) -> list[tuple[str, Mapping[str, Any], str]]:
    """A header row with a `prompt` column, then one prompt per row; other columns are CSV_PARAMS."""
    text = _read(path, prompt_file, "utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the header

    def fail(why: str) -> Exception:
        return invalid("prompt_file", prompt_file, why)

    reader = csv.reader(io.StringIO(text, newline=""))  # rows end at \n, \r\n or \r only, as csv wants
    header: list[str] | None = None
    sources: list[tuple[str, Mapping[str, Any], str]] = []
    line = 1
    try:
        for cells in reader:
            start, line = line, reader.line_num + 1
            if not any(cell.strip() for cell in cells):
                continue  # blank line
            if header is None:
                header = [name.strip() for name in cells]
                _check_header(header, fail)
                continue
            where = f"row {len(sources) + 1} (line {start})"
            sources.append(_csv_row(header, cells, where, prompt_file, fail))
    except csv.Error as exc:
        raise fail(f"line {reader.line_num}: not valid CSV ({one_line(exc)})") from None
    if header is None or not sources:
        raise fail("the file holds no prompt (a header row with a prompt column, then one prompt per row)")
    return sources


def _check_header(header: list[str], fail: Callable[[str], Exception]) -> None:
    if "prompt" not in header:
        raise fail(f"a CSV prompt file needs a 'prompt' column in its header row; it has {', '.join(map(repr, header))}")
    allowed = ", ".join(("prompt", *CSV_PARAMS))
    seen: set[str] = set()
    for name in header:
        if name and name not in CSV_PARAMS and name != "prompt":
            raise fail(f"unknown column {name!r}; allowed columns: {allowed}")
        if name and name in seen:
            raise fail(f"column {name!r} appears twice in the header row")
        seen.add(name)


def _csv_row(header: list[str], cells: list[str], where: str, prompt_file: Any, fail: Callable[[str], Exception]) -> tuple[str, Mapping[str, Any], str]:
    params: dict[str, Any] = {}
    prompt = ""
    for position, cell in enumerate(cells):
        name = header[position] if position < len(header) else ""
        if not name:  # past the header, or a column without a name (a trailing comma): must stay empty
            if cell.strip():
                raise fail(f"{where}: cell {position + 1} ({show(cell)}) is in no named column of the header row")
            continue
        if name == "prompt":
            prompt = cell
        elif cell.strip():
            params[name] = _csv_value(name, cell, where, prompt_file)
    if not prompt.strip():
        raise fail(f"{where}: the prompt cell is empty")
    return prompt, params, where


def _csv_value(name: str, cell: str, where: str, prompt_file: Any) -> Any:
    kind = CSV_TYPES.get(name, str)
    if kind is str:
        return cell  # as written: no YAML coercion, "yes" stays "yes"
    text = cell.strip()
    if kind is int:
        if _INT.match(text):
            return int(text)
        what = "an integer"
    elif kind is float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if math.isfinite(value) and "_" not in text:
            return value
        what = "a finite number"
    else:  # a type someone added to CSV_TYPES
        try:
            return kind(text)
        except (TypeError, ValueError):
            what = f"a {kind.__name__}"
    raise PlanError(f"invalid {name}={show(cell)} in prompt_file={show(prompt_file)} {where}: must be {what}")
