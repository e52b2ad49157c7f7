"""Export: a sweep's images under readable names, as A1111 names its files (`00012-1234567-a fox in snow.png`).

    python -m sweeper.export outputs/sweeps/<name> readable/ --pattern '{index:05}-{seed}-{prompt:.40}'
    python -m sweeper.export outputs/sweeps/<name> readable/ --pattern '{seed}-{guidance}-{prompt:.40}'

Each ok image of the manifest gets a file in the out dir, named by the
pattern: Python's format syntax over the manifest's columns (`{seed}`,
`{guidance}`, `{prompt:.40}` for the first 40 characters) and `{index}`, the
image's number in the order the sweep rendered them (finish time, then id).
The file is a hard link to the sweep's PNG where the filesystem allows (no
space taken; it is the same file), else a copy. Nothing is overwritten: a
name already taken by another file gets `-2`, `-3`, ... before `.png`, and a
file already there with the image's content counts as done, so running the
export again adds only what is new.

Names are made safe: no path separators, control characters or `..`, no
leading dot, at most MAX_NAME_BYTES bytes. The sweep dir may come from
someone else: its manifest is read as every reader of one does (bounded, only
rows of its own images, `images/<image_id>.png`, others skipped with a
warning), and each image must be a regular file there. An unknown field, or a
pattern that cannot format a row, is refused in one line (exit 2) before
anything is written.
"""

from __future__ import annotations

import argparse
import errno
import os
import re
import secrets
import stat
import string
import sys
import unicodedata
from pathlib import Path
from typing import Any, Iterator

from sweeper.errors import UnsafePath
from sweeper.storing.files import MAX_IMAGE_BYTES, folder, read_inside
from sweeper.storing.store import IMAGES_DIR

DEFAULT_PATTERN = "{index:05}-{seed}-{prompt:.40}"
MAX_NAME_BYTES = 160  # a name before its suffix and `.png`: far under the 255 bytes filesystems allow
INDEX = "index"
_UNSAFE = re.compile(r'[<>:"/\\|?*]')  # separators, and what Windows refuses in names (as A1111 replaces them)


class ExportError(ValueError):
    """What the user must fix: one line, exit 2, nothing written."""


def safe_name(text: str) -> str:
    """`text` as one file name: separators and control characters replaced by `_`, no `..`,
    no leading dot or space, at most MAX_NAME_BYTES bytes of UTF-8 (never a character cut)."""
    text = "".join("_" if unicodedata.category(char).startswith("C") else char for char in text)
    text = re.sub(r"\.{2,}", ".", _UNSAFE.sub("_", text))
    text = text.encode("utf-8")[:MAX_NAME_BYTES].decode("utf-8", errors="ignore")
    return text.strip(" .") or "_"


class _Fields(string.Formatter):
    """Formats a row's columns; an unset value (null) is empty, whatever its format spec."""

    def format_field(self, value: Any, format_spec: str) -> str:
        return "" if value is None else super().format_field(value, format_spec)


def check_pattern(pattern: str, columns: list[str]) -> None:
    """Refuse a field that is not a column (or `index`), or one that reaches into a value (`{a.b}`, `{a[0]}`)."""
    known = {*columns, INDEX}
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(pattern) if field is not None]
    except ValueError as error:
        raise ExportError(f"invalid --pattern {pattern!r}: {error}") from None
    for field in fields:
        if field not in known:
            shown = ", ".join(sorted(known))
            raise ExportError(f"invalid --pattern {pattern!r}: no field {{{field}}}; fields: {shown}")


def names(pattern: str, rows: list[dict[str, Any]]) -> list[str]:
    """Each row's file name stem, made safe (rows in index order)."""
    formatter = _Fields()
    found = []
    for index, row in enumerate(rows):
        try:
            text = formatter.format(pattern, **{**row, INDEX: index})
        except (ValueError, TypeError) as error:
            raise ExportError(f"invalid --pattern {pattern!r}: {error} (image {row['image_id']})") from None
        found.append(safe_name(text))
    return found


def read_rows(sweep: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """The manifest's columns, and its ok images in the order they were rendered (finish time).

    manifest.read bounds what it reads and keeps only rows of the dir's own images
    (`images/<image_id>.png`), warning of any other; unmerged parts and rows kept in PNGs count too."""
    from sweeper.storing import manifest

    if not (sweep / IMAGES_DIR).is_dir():
        raise ExportError(f"{sweep}: no {IMAGES_DIR} folder; is it a sweep dir?")
    table = manifest.read(sweep)
    rows = [row for row in table.to_pylist() if row["status"] == "ok"]
    return table.column_names, sorted(rows, key=_rendered)


def _rendered(row: dict[str, Any]) -> tuple:
    """When an image was rendered: its call's finish time (none: first), its place in the call, its id."""
    finished = row["finished_at"]
    return (float("-inf") if finished is None else finished.timestamp(), row["batch_index"] or 0, row["image_id"])


def export(sweep: Path, out_dir: Path, pattern: str) -> dict[str, int]:
    """Link or copy each ok image of `sweep` into `out_dir` by `pattern`; how many were linked, copied, already there, missing."""
    sweep, out_dir = Path(sweep), Path(out_dir)
    if out_dir.resolve().is_relative_to((sweep / IMAGES_DIR).resolve()):
        raise ExportError(f"{out_dir}: inside the sweep's images folder; export to a folder of its own")
    columns, rows = read_rows(sweep)
    check_pattern(pattern, columns)
    stems = names(pattern, rows)
    sources = [_source(sweep, Path(row["path"])) for row in rows]  # all checked before anything is written
    counts = dict(linked=0, copied=0, present=0, missing=0)
    out_dir.mkdir(parents=True, exist_ok=True)
    for row, stem, info in zip(rows, stems, sources):
        counts["missing" if info is None else _place(sweep, Path(row["path"]), info, out_dir, stem)] += 1
    return counts


def _source(sweep: Path, relative: Path) -> os.stat_result | None:
    """The image file's status: a regular file inside the sweep (no link followed), or None where it is gone."""
    with folder(sweep, *relative.parent.parts) as source_dir:
        try:
            info = os.stat(relative.name, dir_fd=source_dir, follow_symlinks=False)
        except FileNotFoundError:
            return None
    if not stat.S_ISREG(info.st_mode):
        raise ExportError(f"{sweep / relative}: not a regular file")
    return info


def _place(sweep: Path, relative: Path, info: os.stat_result, out_dir: Path, stem: str) -> str:
    """The image at the first of stem.png, stem-2.png, ... that is free or already holds it: linked, copied or present."""
    linking, data = True, b""
    for candidate in _candidates(out_dir, stem, relative.suffix):
        if linking:
            try:
                with folder(sweep, *relative.parent.parts) as source_dir:
                    os.link(relative.name, candidate, src_dir_fd=source_dir, follow_symlinks=False)  # never replaces a file
                return "linked"
            except FileExistsError:
                pass
            except OSError as error:
                if error.errno not in _NO_LINK:
                    raise
                linking, data = False, read_inside(sweep, sweep / relative, MAX_IMAGE_BYTES)
        if not linking and _copy(data, candidate):
            return "copied"
        if _holds(candidate, info, sweep, relative):
            return "present"


# Why a hard link cannot be made, so a copy is: another filesystem, one without links, too many links.
_NO_LINK = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EACCES}


def _candidates(out_dir: Path, stem: str, suffix: str) -> Iterator[Path]:
    yield out_dir / f"{stem}{suffix}"
    number = 2
    while True:
        yield out_dir / f"{stem}-{number}{suffix}"
        number += 1


def _holds(candidate: Path, info: os.stat_result, sweep: Path, relative: Path) -> bool:
    """Whether the existing file `candidate` is the image: the same file, or a copy of it."""
    try:
        found = os.stat(candidate, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if (found.st_dev, found.st_ino) == (info.st_dev, info.st_ino):
        return True
    if not stat.S_ISREG(found.st_mode) or found.st_size != info.st_size:
        return False
    with open(candidate, "rb") as handle:
        return handle.read(info.st_size + 1) == read_inside(sweep, sweep / relative, MAX_IMAGE_BYTES)


def _copy(data: bytes, target: Path) -> bool:
    """Write `data` as `target`, whole or not at all; False if the name is taken."""
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, target)  # appears whole, and never over an existing file
        except FileExistsError:
            return False
        except OSError as error:
            if error.errno not in _NO_LINK:
                raise
            return _write_new(data, target)  # a filesystem without hard links
        return True
    finally:
        os.unlink(tmp)


def _write_new(data: bytes, target: Path) -> bool:
    try:
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", type=Path, help="a sweep dir (holding manifest.parquet)")
    parser.add_argument("out_dir", type=Path, help="where the named files go (made if missing)")
    parser.add_argument("--pattern", default=DEFAULT_PATTERN, help=f"the file name without .png, in Python's format syntax over the manifest's columns and {{index}} (default: {DEFAULT_PATTERN!r})")
    args = parser.parse_args(argv)
    try:
        counts = export(args.sweep, args.out_dir, args.pattern)
    except (ExportError, UnsafePath) as error:
        print(f"sweeper.export: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:  # the out dir cannot be written (full, read-only)
        print(f"sweeper.export: error: {error}", file=sys.stderr)
        return 1
    done = ", ".join(f"{count} {what}" for what, count in counts.items() if what != "missing")
    print(f"sweeper.export: {sum(counts.values()) - counts['missing']} images in {args.out_dir}: {done}")
    if counts["missing"]:
        print(f"sweeper.export: warning: {counts['missing']} ok images of the manifest have no file in {args.sweep}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
