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
import stat
from pathlib import Path
from typing import Any, Callable, Iterator

from sweeper.errors import UnsafePath, one_line
from sweeper.storing.files import folder

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
    """(name, where it lies, size, mtime) of the folder's wildcard files, each where it lies inside it.

    Folders are listed, and what a link leads to is looked at, through
    descriptors opened from the root down without following links
    (files.folder): a folder swapped for a link while it is walked is refused,
    never followed out of the folder.
    """
    real_root = root.resolve()
    walked = {real_root}
    found: list[tuple[str, Path, int, int]] = []
    total = 0
    stack = [(real_root, "")]
    while stack:
        real_folder, prefix = stack.pop()
        try:
            with folder(real_root, *real_folder.relative_to(real_root).parts) as dir_fd:
                entries = [(name, os.stat(name, dir_fd=dir_fd, follow_symlinks=False)) for name in sorted(os.listdir(dir_fd)) if not name.startswith(".")]
        except UnsafePath:
            raise fail(f"{prefix or '.'} changed into a link while it was read") from None
        except OSError as error:
            raise fail(f"cannot read {root / prefix}: {error.strerror}") from None
        for entry, info in entries:
            name, real = prefix + entry, real_folder / entry
            if stat.S_ISLNK(info.st_mode):
                real = Path(os.path.realpath(real))
                if real != real_root and real_root not in real.parents:
                    raise fail(f"{name} leads outside the folder (to {real}); wildcard files must lie inside it")
                info = _lstat_inside(real_root, real, name, fail)
            if stat.S_ISDIR(info.st_mode):
                if real in walked:
                    raise fail(f"{name} leads back to a folder already read (to {real}): a link loop")
                walked.add(real)
                stack.append((real, name + "/"))
            elif real.suffix in WILDCARD_SUFFIXES and stat.S_ISREG(info.st_mode):
                if info.st_size > WILDCARD_FILE_BYTES:
                    raise fail(f"{name} is {info.st_size} bytes, over the limit of {WILDCARD_FILE_BYTES} for a wildcard file")
                found.append((name, real, info.st_size, info.st_mtime_ns))
                total += info.st_size
                if len(found) > WILDCARD_FILES:
                    raise fail(f"more than {WILDCARD_FILES} wildcard files")
                if total > WILDCARD_TOTAL_BYTES:
                    raise fail(f"its wildcard files hold more than {WILDCARD_TOTAL_BYTES} bytes in all")
    return found


def _lstat_inside(root: Path, path: Path, name: str, fail: Callable[[str], Exception]) -> os.stat_result:
    """What lies at `path` inside `root`, looked at without following a link on the way (files.folder)."""
    relative = path.relative_to(root)
    try:
        if not relative.parts:
            with folder(root) as dir_fd:
                return os.fstat(dir_fd)
        with folder(root, *relative.parent.parts) as dir_fd:
            return os.stat(relative.name, dir_fd=dir_fd, follow_symlinks=False)
    except UnsafePath:
        raise fail(f"{name} changed into a link while it was read") from None
    except OSError as error:
        raise fail(f"cannot read {name}: {error.strerror}") from None


def read_wildcards(root: Path, files: list[tuple[str, Path, int, int]], fail: Callable[[str], Exception]) -> dict[str, Any]:
    """{wildcard name: values} as dynamicprompts would read the files, with bounds (files.py).

    Each file is opened where wildcard_files found it inside `root`, without
    following a link on the way (files.read_inside), and read from that.
    """
    from dynamicprompts.wildcards.collection.list import ListWildcardCollection
    from dynamicprompts.wildcards.collection.structured import _parse_structured_file_dict

    from sweeper.storing.files import load_yaml, read_inside

    real_root = root.resolve()
    wildcards: dict[str, Any] = {}
    for name, path, _, _ in files:
        stem, suffix = name.rsplit(".", 1)
        try:
            text = read_inside(real_root, path, WILDCARD_FILE_BYTES).decode("utf-8", errors="ignore")
            if suffix == "txt":
                lines = (line.strip() for line in text.splitlines())
                wildcards[stem] = [line for line in lines if line and not line.startswith("#")]
                continue
            data = load_yaml(text) if suffix == "yaml" else json.loads(text)
        except UnsafePath:
            raise fail(f"{name} changed into a link while it was read") from None
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
