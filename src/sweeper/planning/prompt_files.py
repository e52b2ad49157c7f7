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

from sweeper.storing.bounds import read_regular
from sweeper.errors import PlanError, invalid, one_line, show
from sweeper.planning.templates import MAX_PROMPT_CHARS

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


# Bounds checked before any work: a prompt file may come from someone else.
MAX_PROMPT_FILE_BYTES = 64 * 2**20
MAX_PROMPT_FILE_LINES = 1_000_000  # blank and comment lines included


def _read(path: Path, prompt_file: Any, encoding: str) -> str:
    try:
        text = read_regular(path, MAX_PROMPT_FILE_BYTES, "a prompt file").decode(encoding)
    except UnicodeDecodeError as exc:
        raise invalid("prompt_file", prompt_file, f"not UTF-8 text ({one_line(exc.reason)} at byte {exc.start})") from None
    except (OSError, ValueError) as error:
        raise invalid("prompt_file", prompt_file, one_line(error)) from None
    lines = text.count("\n") + text.count("\r") - text.count("\r\n")
    if lines > MAX_PROMPT_FILE_LINES:
        raise invalid("prompt_file", prompt_file, f"{lines} lines, over the limit of {MAX_PROMPT_FILE_LINES}")
    return text


def _check_length(text: str, where: str, fail: Callable[[str], Exception]) -> None:
    if len(text) > MAX_PROMPT_CHARS:
        raise fail(f"{where} is {len(text)} characters long, over the limit of {MAX_PROMPT_CHARS} for a prompt")


def read_text(path: Path, prompt_file: Any, limit: int) -> list[tuple[str, Mapping[str, Any], str]]:
    """One prompt per line; blank lines and `# comments` skipped. More than `limit` prompts are refused."""

    def fail(why: str) -> Exception:
        return invalid("prompt_file", prompt_file, why)

    sources: list[tuple[str, Mapping[str, Any], str]] = []
    for number, line in enumerate(_read(path, prompt_file, "utf-8").splitlines(), start=1):
        _check_length(line, f"line {number}", fail)
        if line.strip() and not line.lstrip().startswith("#"):
            sources.append((line.strip(), {}, f"line {number}"))
            _check_count(sources, limit, fail)
    if not sources:
        raise fail("the file holds no prompt (one per line)")
    return sources


def _check_count(sources: list, limit: int, fail: Callable[[str], Exception]) -> None:
    if len(sources) > limit:
        raise fail(f"the file holds more than {limit} prompts, over the max_images budget; raise max_images or split the file")


def read_csv(path: Path, prompt_file: Any, limit: int) -> list[tuple[str, Mapping[str, Any], str]]:
    """A header row with a `prompt` column, then one prompt per row; other columns are CSV_PARAMS.
    More than `limit` rows are refused."""
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
            _check_count(sources, limit, fail)
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
        _check_length(cell, f"{where}: cell {position + 1}", fail)
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
