"""Wildcards: a folder of wildcard files -> the values dynamicprompts picks from.

A received folder is data: its files are found without leaving it (links that
lead outside or loop are refused), bounded in number and size, read in a
defined order, and a wildcard that is missing or includes itself is refused
rather than expanded for ever.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from sweeper.errors import one_line

class MissingWildcard(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class WildcardLoop(LookupError):
    def __init__(self, chain: tuple[str, ...]) -> None:
        super().__init__(chain)
        self.chain = chain


# A `__name__` (or `__~name__`, `__name(var=value)__`) inside a wildcard file's values.
_WILDCARD_REF = re.compile(r"__[~@]?((?:(?!__)[^(){}$#\s])(?:(?!__)[^(){}$#])*?)(?:\([^)]*\))?__")
WILDCARD_FILES = 10_000  # files in a wildcards folder
WILDCARD_FILE_BYTES = 16 * 2**20  # one wildcard file
WILDCARD_TOTAL_BYTES = 256 * 2**20  # all of them: they are read whole once any template uses one
WILDCARD_SUFFIXES = (".txt", ".yaml", ".json")  # what dynamicprompts reads


def wildcard_files(root: Path, fail: Callable[[str], Exception]) -> list[tuple[str, Path, int, int]]:
    real_root = root.resolve()
    walked = {real_root}
    found: list[tuple[str, Path, int, int]] = []
    total = 0
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
                total += info.st_size
                if len(found) > WILDCARD_FILES:
                    raise fail(f"more than {WILDCARD_FILES} wildcard files")
                if total > WILDCARD_TOTAL_BYTES:
                    raise fail(f"its wildcard files hold more than {WILDCARD_TOTAL_BYTES} bytes in all")
    return found


def read_wildcards(files: list[tuple[str, Path, int, int]], fail: Callable[[str], Exception]) -> dict[str, Any]:
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
            raise fail(f"{name}: {one_line(error)}") from None
        prefix = stem.rpartition("/")[0]
        prefix = prefix + "/" if prefix else ""
        if isinstance(data, dict):
            for key, collection in _parse_structured_file_dict(data, file_path=path):
                wildcards[prefix + key] = collection
        elif isinstance(data, list) and any(isinstance(entry, str) for entry in data):
            wildcards[stem] = ListWildcardCollection([entry for entry in data if isinstance(entry, str)])
    return wildcards


_MANAGER_CLASS = None


def manager_class():
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
                raise MissingWildcard(name)
            self._check_loops(name, ())
            return values

        def _check_loops(self, name: str, chain: tuple[str, ...]) -> None:
            """Refuse a wildcard whose values lead back to it: combinatorial expansion
            visits every value, so it would recurse until Python's limit (seconds)."""
            checked = self.__dict__.setdefault("_loop_free", set())
            if name in chain:
                raise WildcardLoop((*chain[chain.index(name):], name))
            if name in checked:
                return
            values = super().get_values(name)
            for value in values.iterate_string_values_weighted():
                for ref in _WILDCARD_REF.findall(value):
                    self._check_loops(clean_wildcard(ref, wildcard_wrap=self.wildcard_wrap), (*chain, name))
            checked.add(name)

    _MANAGER_CLASS = Manager
    return Manager
