"""Thumbnails of a sweep's images, cached in `<sweep>/.thumbs/` and made once."""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from sweeper.errors import UnsafePath
from sweeper.storing.files import is_regular_inside, open_image, write_atomic
from sweeper.report.sweep import Sweep
from sweeper.storing.store import IMAGES_DIR, THUMB_EXT, THUMBS_DIR, needs_thumbnail, thumbnail_bytes, thumbnail_path


def _regular_files(folder: Path, root: Path) -> dict[str, int]:
    """Name -> mtime of the regular files (no links) of a folder of the sweep dir; {} if it is not one."""
    if folder.is_symlink() or not is_regular_inside(folder / ".", root) and not folder.is_dir():
        return {}
    found = {}
    try:
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_file(follow_symlinks=False):
                    found[entry.name] = entry.stat(follow_symlinks=False).st_mtime_ns
    except OSError:
        return {}
    return found


def _make_thumb(source: Path, thumb: Path, root: Path) -> str:
    """'ok' once the thumbnail is written, 'full' when the browser must show the image itself,
    'missing' when `source` is no image of the sweep (a link, a bomb, not a PNG: said on stderr)."""
    try:
        with open_image(source, root) as image:
            data = thumbnail_bytes(image)
    except ValueError as error:
        print(f"sweeper: warning: skipping {error}", file=sys.stderr, flush=True)
        return "missing"
    except OSError:  # a truncated image: the browser gets the full file
        return "full"
    try:
        write_atomic(thumb, data, durable=False, root=root)  # a cache: whole for a viewer, not fsynced
        return "ok"
    except (OSError, UnsafePath):  # read-only sweep dir: the browser gets the full image
        return "full"


def image_states(sweep: Sweep) -> list[str]:
    """Per row: 'ok' (thumbnail made or cached), 'full', 'missing' (no file) or 'error' (failed render)."""
    images = _regular_files(sweep.dir / IMAGES_DIR, sweep.dir)  # one listing, not a stat per image
    thumbs = _regular_files(sweep.dir / THUMBS_DIR, sweep.dir)
    states, todo = [], []
    for row in sweep.rows:
        if row["status"] != "ok":
            states.append("error")
            continue
        name = f"{row['image_id']}.png"
        if name not in images:
            states.append("missing")
        elif not needs_thumbnail(row["width"], row["height"]):
            states.append("full")
        elif thumbs.get(f"{row['image_id']}{THUMB_EXT}", -1) >= images[name]:
            states.append("ok")
        else:
            states.append("")
            todo.append((len(states) - 1, (sweep.dir / row["path"], sweep.dir / thumbnail_path(row["image_id"]))))
    if todo:
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
            for (index, _), state in zip(todo, pool.map(lambda item: _make_thumb(*item[1], sweep.dir), todo)):
                states[index] = state
    return states
