"""Prompts: the prompt keys of a composed job config -> a list of prompt rows.

    conf/ -> plan (prompt_rows here) -> schedule -> render -> store -> report

Pure and quick, no torch: it runs at planning time, on every rank.

- `prompt` (a string or a list of strings) or `prompt_file` (replaces it):
  a text file holds one prompt per line (blank lines skipped); a `.csv` file
  has a header row with a `prompt` column, and every other column is a
  per-row config value (`CSV_PARAMS`), an empty cell meaning "not set here".
- Every prompt that uses template syntax is expanded with the combinatorial
  generator of the `dynamicprompts` library: `a {red|blue} car` is two rows,
  `a __colors__ car` one row per line of `colors.txt` in the `wildcards` dir.
  dynamicprompts is imported only when some prompt holds `{` or a `__name__`.

Expansion order is defined, so every rank plans the same rows: prompts in
their order (list position, file line, CSV row); a template's expansions in
the combinatorial generator's order, the leftmost choice varying slowest
(`{a|b} {x|y}` -> a x, a y, b x, b y); a wildcard's values in file order
(duplicates dropped), files matched by a glob in sorted name order; the random
forms (`{~a|b}`, `__~name__`) drawn from a generator seeded by the template's
text, so they pick the same on every run.

Errors raise `sweeper.plan.PlanError` with one line naming the key, the value
and what is allowed (imported lazily: plan.py imports this module).
"""

from __future__ import annotations

import csv
import ctypes
import hashlib
import io
import json
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

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
DEFAULT_LIMIT = 100_000  # the default max_images; plan.py passes its budget

_INT = re.compile(r"^[+-]?[0-9]+$")
# What makes a prompt a template: a `{` (variants, ${variables}, %{wraps}) or a
# `__name__` wildcard. Anything else is taken as it is, without dynamicprompts.
_WILDCARD_HINT = re.compile(r"__[^_].*?__", re.S)
_CACHE_ENTRIES = 256


@dataclass(frozen=True)
class PromptRow:
    """One prompt to render, with the config values its row sets."""

    prompt: str
    # The dynamicprompts template this prompt came from; None when the prompt had no template syntax.
    template: str | None = None
    # Per-row config values (from a CSV row), e.g. {"seed": 3, "guidance": 7.5}; empty for plain
    # prompts. A plain dict of its own (JSON-ready), in the CSV's column order.
    params: Mapping[str, Any] = field(default_factory=dict)
    # Position (0-based) of the prompt it came from: in the `prompt` list, or
    # among the prompt file's prompts (non-blank lines / CSV data rows).
    # Rows expanded from one template share it (to zip per-prompt lists).
    source: int = 0

    def __hash__(self) -> int:
        return hash((self.prompt, self.template, tuple(self.params.items()), self.source))


def prompt_rows(c: Mapping[str, Any], limit: int = DEFAULT_LIMIT) -> tuple[list[PromptRow], str | None]:
    """Rows, and the prompt_file label (str(prompt_file) or None).

    Templates may expand to `limit` rows in all (with the rows before them);
    one asking for more is refused, naming the template.
    """
    prompt_file = c.get("prompt_file")
    if prompt_file is not None:
        label = str(prompt_file)
        path = Path(label).expanduser()
        if not path.is_file():
            raise _fail("prompt_file", prompt_file, "no such file")
        if path.suffix.lower() == ".csv":
            sources = _read_csv(path, prompt_file)
        else:
            sources = _read_text(path, prompt_file)
    else:
        label = None
        value = c.get("prompt")
        prompts = [value] if isinstance(value, str) else value
        if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
            raise _fail("prompt", value, "must be a string or a list of strings")
        if not prompts:
            raise _fail("prompt", value, "needs at least one prompt")
        sources = [(p, {}, None) for p in prompts]

    rows: list[PromptRow] = []
    # A wildcards dir is checked whenever it is set; dynamicprompts loads only for a template.
    expander = _Expander(c["wildcards"]) if c.get("wildcards") is not None else None
    for index, (prompt, params, where) in enumerate(sources):
        if not _is_template(prompt):
            rows.append(PromptRow(prompt, None, dict(params), index))
            continue
        if expander is None:
            expander = _Expander(c.get("wildcards"))
        if where is None:
            fail = lambda why, p=prompt: _fail("prompt", p, why)  # noqa: E731
        else:
            fail = lambda why, p=prompt, w=where: _fail("prompt_file", prompt_file, f"{w}, prompt {_show(p)}: {why}")  # noqa: E731
        expanded = expander.expand(prompt, max(limit - len(rows), 0), limit, fail)
        if expanded == [prompt]:
            rows.append(PromptRow(prompt, None, dict(params), index))
        else:
            rows.extend(PromptRow(p, prompt, dict(params), index) for p in expanded)
    return rows, label


# -- errors -----------------------------------------------------------------


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _error(message: str) -> Exception:
    from sweeper.plan import PlanError  # here, not at the top: plan.py imports this module

    return PlanError(message)


def _fail(key: str, value: Any, allowed: str) -> Exception:
    """The same line as plan.py's `_fail`: invalid {key}={value}: {allowed}."""
    return _error(f"invalid {key}={_show(value)}: {allowed}")


def _count(n: int) -> str:
    return f"{n} prompt" if n == 1 else f"{n} prompts"


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# -- prompt files -----------------------------------------------------------


def _read(path: Path, prompt_file: Any, encoding: str) -> str:
    try:
        return path.read_text(encoding=encoding)
    except UnicodeDecodeError as exc:
        raise _fail("prompt_file", prompt_file, f"not UTF-8 text ({_one_line(exc.reason)} at byte {exc.start})") from None


def _read_text(path: Path, prompt_file: Any) -> list[tuple[str, Mapping[str, Any], str]]:
    """One prompt per line; blank lines and `# comments` skipped."""
    sources = [
        (line.strip(), {}, f"line {number}")
        for number, line in enumerate(_read(path, prompt_file, "utf-8").splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not sources:
        raise _fail("prompt_file", prompt_file, "the file holds no prompt (one per line)")
    return sources


def _read_csv(path: Path, prompt_file: Any) -> list[tuple[str, Mapping[str, Any], str]]:
    """A header row with a `prompt` column, then one prompt per row; other columns are CSV_PARAMS."""
    text = _read(path, prompt_file, "utf-8-sig")  # -sig: a spreadsheet's byte-order mark is not part of the header

    def fail(why: str) -> Exception:
        return _fail("prompt_file", prompt_file, why)

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
        raise fail(f"line {reader.line_num}: not valid CSV ({_one_line(exc)})") from None
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
                raise fail(f"{where}: cell {position + 1} ({_show(cell)}) is in no named column of the header row")
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
    raise _error(f"invalid {name}={_show(cell)} in prompt_file={_show(prompt_file)} {where}: must be {what}")


# -- templates --------------------------------------------------------------


def _is_template(prompt: str) -> bool:
    return "{" in prompt or ("__" in prompt and _WILDCARD_HINT.search(prompt) is not None)


# (template, wildcards dir, fingerprint of its files) -> every prompt the template expands to.
# Planning composes one config per job, and a sweep plans every job with the same
# templates: parsing one costs milliseconds, a look-up nothing.
_EXPANSIONS: dict[tuple[str, str | None, tuple], tuple[str, ...]] = {}


# Bounds on expanding one template: a few hundred characters of variables that
# double each other ask for more prompts, time and memory than any machine has.
MAX_PROMPT_CHARS = 20_000  # one prompt or template (CLIP reads 77 tokens of it)
MAX_EXPANSION_CHARS = 50_000_000  # all the prompts of one template
EXPANSION_SECONDS = 1.0  # to parse and make the first prompt ...
SECONDS_PER_PROMPT = 0.002  # ... and then per prompt made (a real template needs ~40 us)


class _OverBudget(BaseException):  # not Exception: a library's `except Exception` must not swallow it
    pass


class _Budget:
    """Stops a template's expansion that takes too long or makes too much text.

    A watchdog thread raises `_OverBudget` in the expanding thread once the
    time is up (CPython's PyThreadState_SetAsyncExc, checked between bytecodes),
    so a generator that never yields is stopped as surely as a slow one, at no
    cost to a template that expands in time.
    """

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.count = 0
        self.chars = 0
        self.reason = ""
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._active = False

    def __enter__(self) -> _Budget:
        self._target = threading.get_ident()
        self._active = True
        self._done.clear()
        self._watchdog = threading.Thread(target=self._watch, name="sweeper-template-budget", daemon=True)
        self._watchdog.start()
        return self

    def __exit__(self, exc_type: Any, *exc: object) -> None:
        with self._lock:
            self._active = False
        self._done.set()
        self._watchdog.join()
        if self.reason == "time" and exc_type is None:  # fired as the expansion ended: take it back
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), None)

    def _watch(self) -> None:
        while not self._done.wait(0.05):
            if time.perf_counter() > self.start + EXPANSION_SECONDS + SECONDS_PER_PROMPT * self.count:
                with self._lock:
                    if self._active:
                        self.reason = "time"
                        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._target), ctypes.py_object(_OverBudget))
                return

    def produced(self, prompt: str) -> None:
        self.count += 1
        self.chars += len(prompt)
        if len(prompt) > MAX_PROMPT_CHARS:
            self.reason = "prompt"
            raise _OverBudget()
        if self.chars > MAX_EXPANSION_CHARS:
            self.reason = "chars"
            raise _OverBudget()

    def why(self) -> str:
        if self.reason == "prompt":
            return f"the template makes a prompt of more than {MAX_PROMPT_CHARS} characters (variables or wildcards that multiply); narrow it"
        if self.reason == "chars":
            return f"the template makes more than {MAX_EXPANSION_CHARS} characters of prompts; narrow it"
        return (
            f"the template takes too long to expand ({self.count} prompts in {time.perf_counter() - self.start:.1f} s): "
            "variables or wildcards that include each other multiply; narrow it"
        )


class _MissingWildcard(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _WildcardLoop(LookupError):
    def __init__(self, chain: tuple[str, ...]) -> None:
        super().__init__(chain)
        self.chain = chain


# A `__name__` (or `__~name__`, `__name(var=value)__`) inside a wildcard file's values.
_WILDCARD_REF = re.compile(r"__[~@]?((?:(?!__)[^(){}$#\s])(?:(?!__)[^(){}$#])*?)(?:\([^)]*\))?__")


class _Expander:
    """Expands templates for one prompt_rows call (one wildcards dir)."""

    def __init__(self, wildcards: Any) -> None:
        if wildcards is None:
            self.dir = None
        else:
            if not isinstance(wildcards, (str, os.PathLike)) or not str(wildcards):
                raise _fail("wildcards", wildcards, "must be null or the path of a folder of wildcard files (name.txt, one value per line)")
            self.dir = Path(wildcards).expanduser()
            if not self.dir.is_dir():
                raise _fail("wildcards", wildcards, "no such directory (a folder of wildcard files: name.txt, one value per line)")
        self.shown = None if wildcards is None else str(wildcards)
        self._files: list[tuple[str, Path, int, int]] | None = None
        self._fingerprint: tuple | None = None
        self._manager = None

    def fingerprint(self) -> tuple:
        """The wildcard files' names, sizes and times: an edited file is read again."""
        if self._fingerprint is None:
            self._fingerprint = tuple((name, size, mtime) for name, _, size, mtime in self.files())
        return self._fingerprint

    def files(self) -> list[tuple[str, Path, int, int]]:
        """(name, path, size, mtime) of the folder's wildcard files, found without leaving it.

        A received folder is data: a link that leads outside it, or back into a
        folder already walked (`a -> .`), is refused, and so are too many or too large files.
        """
        if self._files is None:
            self._files = [] if self.dir is None else _wildcard_files(self.dir, self._fail_dir)
        return self._files

    def _fail_dir(self, why: str) -> Exception:
        return _fail("wildcards", self.shown, why)

    def expand(self, template: str, cap: int, limit: int, fail: Callable[[str], Exception]) -> list[str]:
        """The template's prompts, at most `cap` of them, in the generator's order (duplicates dropped)."""
        uses_wildcards = "__" in template
        key = (template, str(self.dir.resolve()) if uses_wildcards and self.dir else None, self.fingerprint() if uses_wildcards else ())
        prompts = _EXPANSIONS.get(key)
        if prompts is None:
            prompts = self._generate(template, cap + 1, fail)
            if len(prompts) <= cap:  # complete: keep it
                if len(_EXPANSIONS) >= _CACHE_ENTRIES:
                    _EXPANSIONS.clear()
                _EXPANSIONS[key] = prompts
        if len(prompts) > cap:
            if cap == limit:
                raise fail(f"the template expands to more than {limit} prompts, over the max_images budget; raise max_images or narrow the template")
            raise fail(
                f"the template expands to more than {cap} prompts, which with the {_count(limit - cap)} before it "
                f"is over the max_images budget of {limit}; raise max_images or narrow the templates"
            )
        if not prompts:
            raise fail("the template expands to no prompt")
        return list(prompts)

    def _generate(self, template: str, count: int, fail: Callable[[str], Exception]) -> tuple[str, ...]:
        from itertools import islice
        from random import Random

        from dynamicprompts.commands import SequenceCommand
        from dynamicprompts.enums import SamplingMethod
        from dynamicprompts.parser.parse import parse
        from dynamicprompts.sampling_context import SamplingContext
        from pyparsing import ParseBaseException

        if len(template) > MAX_PROMPT_CHARS:
            raise fail(f"the template is {len(template)} characters long, over the limit of {MAX_PROMPT_CHARS}")
        budget = _Budget()
        try:
            with budget:
                command = parse(template)
        except ParseBaseException as exc:
            raise fail(f"syntax error in the template: {_one_line(exc.msg)} at char {exc.loc}") from None
        except _OverBudget:
            raise fail(budget.why()) from None
        # In a sequence a random or cyclical part ({~a|b}, __~name__) gives one value per
        # combination; at the top it would go on for ever.
        command = SequenceCommand(tokens=[command])
        seed = int.from_bytes(hashlib.sha256(template.encode("utf-8")).digest()[:8], "big")
        context = SamplingContext(
            default_sampling_method=SamplingMethod.COMBINATORIAL,
            wildcard_manager=self.manager(),
            rand=Random(seed),
        )
        prompts: dict[str, None] = {}
        try:
            # Duplicates are dropped as they come; a generator that only repeats itself
            # (as a few do) still stops, at `guard` results.
            guard = 4 * count + 1000
            produced = 0
            with budget:
                for result in islice(context.sample_prompts(command), guard):
                    produced += 1
                    prompt = str(result).strip()
                    budget.produced(prompt)
                    prompts[prompt] = None
                    if len(prompts) >= count:
                        break
                else:
                    if produced == guard:
                        raise fail(f"the template gives the same {len(prompts)} prompts over and over")
        except _OverBudget:
            raise fail(budget.why()) from None
        except _MissingWildcard as exc:
            raise fail(self._missing(exc.name)) from None
        except _WildcardLoop as exc:
            chain = " -> ".join(f"__{name}__" for name in exc.chain)
            raise fail(f"a wildcard includes itself ({chain}), so the template never ends") from None
        except RecursionError:
            raise fail("the template refers to itself (a wildcard or variable that includes itself)") from None
        except Exception as exc:  # a library error: still one line, naming the template
            reason = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
            raise fail(f"cannot expand the template: {_one_line(reason)}") from None
        return tuple(prompts)

    def _missing(self, name: str) -> str:
        wildcard = f"__{name}__"
        if self.dir is None:
            return f"wildcard {wildcard} needs a wildcards dir, but wildcards is null; set wildcards=DIR, a folder holding {name}.txt"
        return f"wildcard {wildcard} not found in the wildcards dir {self.shown!r} (no {name}.txt, or it is empty)"

    def manager(self):
        if self._manager is None:
            self._manager = _manager_class()(_read_wildcards(self.files(), self._fail_dir))
        return self._manager


WILDCARD_FILES = 10_000  # files in a wildcards folder
WILDCARD_FILE_BYTES = 16 * 2**20  # one wildcard file
WILDCARD_SUFFIXES = (".txt", ".yaml", ".json")  # what dynamicprompts reads


def _wildcard_files(root: Path, fail: Callable[[str], Exception]) -> list[tuple[str, Path, int, int]]:
    real_root = root.resolve()
    walked = {real_root}
    found: list[tuple[str, Path, int, int]] = []
    stack = [(root, "")]
    while stack:
        folder, prefix = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda entry: entry.name)
        except OSError as error:
            raise fail(f"cannot read {folder}: {error.strerror}") from None
        for entry in entries:
            if entry.name.startswith("."):
                continue
            name, path = prefix + entry.name, Path(entry.path)
            real = path.resolve()
            if real != real_root and real_root not in real.parents:
                raise fail(f"{name} leads outside the folder (to {real}); wildcard files must lie inside it")
            if real.is_dir():
                if real in walked:
                    raise fail(f"{name} leads back to a folder already read (to {real}): a link loop")
                walked.add(real)
                stack.append((path, name + "/"))
            elif real.suffix in WILDCARD_SUFFIXES and real.is_file():
                info = real.stat()
                if info.st_size > WILDCARD_FILE_BYTES:
                    raise fail(f"{name} is {info.st_size} bytes, over the limit of {WILDCARD_FILE_BYTES} for a wildcard file")
                found.append((name, real, info.st_size, info.st_mtime_ns))
                if len(found) > WILDCARD_FILES:
                    raise fail(f"more than {WILDCARD_FILES} wildcard files")
    return found


def _read_wildcards(files: list[tuple[str, Path, int, int]], fail: Callable[[str], Exception]) -> dict[str, Any]:
    """{wildcard name: values} as dynamicprompts would read the files, with bounds (files.py)."""
    from dynamicprompts.wildcards.collection.list import ListWildcardCollection
    from dynamicprompts.wildcards.collection.structured import _parse_structured_file_dict

    from sweeper.files import load_yaml, read_text_file

    wildcards: dict[str, Any] = {}
    for name, path, _, _ in files:
        stem, suffix = name.rsplit(".", 1)
        try:
            text = read_text_file(path, WILDCARD_FILE_BYTES)
            if suffix == "txt":
                lines = (line.strip() for line in text.splitlines())
                wildcards[stem] = [line for line in lines if line and not line.startswith("#")]
                continue
            data = load_yaml(text) if suffix == "yaml" else json.loads(text)
        except (ValueError, RecursionError) as error:
            raise fail(f"{name}: {_one_line(error)}") from None
        prefix = stem.rpartition("/")[0]
        prefix = prefix + "/" if prefix else ""
        if isinstance(data, dict):
            for key, collection in _parse_structured_file_dict(data, file_path=path):
                wildcards[prefix + key] = collection
        elif isinstance(data, list) and any(isinstance(entry, str) for entry in data):
            wildcards[stem] = ListWildcardCollection([entry for entry in data if isinstance(entry, str)])
    return wildcards


_MANAGER_CLASS = None


def _manager_class():
    """A WildcardManager that refuses a missing wildcard and reads values in a defined order."""
    global _MANAGER_CLASS
    if _MANAGER_CLASS is not None:
        return _MANAGER_CLASS
    from fnmatch import fnmatch

    from dynamicprompts.wildcards import WildcardManager
    from dynamicprompts.wildcards.utils import clean_wildcard

    class Manager(WildcardManager):
        def __init__(self, wildcards: dict[str, Any]) -> None:
            super().__init__(root_map={"": [wildcards]})
            self.sort_wildcards = False  # a file's values in file order, not sorted
            self.dedup_wildcards = True

        def match_collections(self, wildcard: str) -> Iterator:
            # dynamicprompts walks the folder in the file system's order; sort by name instead.
            try:
                pattern = clean_wildcard(wildcard, wildcard_wrap=self.wildcard_wrap)
            except ValueError:
                return []
            return [coll for name, coll in sorted(self.tree.map.items()) if fnmatch(name, pattern)]

        def get_values(self, wildcard: str):
            values = super().get_values(wildcard)
            name = clean_wildcard(wildcard, wildcard_wrap=self.wildcard_wrap)
            if len(values) == 0:
                # dynamicprompts would log a warning and yield `__name__` for ever.
                raise _MissingWildcard(name)
            self._check_loops(name, ())
            return values

        def _check_loops(self, name: str, chain: tuple[str, ...]) -> None:
            """Refuse a wildcard whose values lead back to it: combinatorial expansion
            visits every value, so it would recurse until Python's limit (seconds)."""
            checked = self.__dict__.setdefault("_loop_free", set())
            if name in chain:
                raise _WildcardLoop((*chain[chain.index(name):], name))
            if name in checked:
                return
            values = super().get_values(name)
            for value in values.iterate_string_values_weighted():
                for ref in _WILDCARD_REF.findall(value):
                    self._check_loops(clean_wildcard(ref, wildcard_wrap=self.wildcard_wrap), (*chain, name))
            checked.add(name)

    _MANAGER_CLASS = Manager
    return Manager
