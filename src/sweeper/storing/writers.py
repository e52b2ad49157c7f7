"""Many writers, one sweep dir.

Jobs of any Hydra launcher (joblib, submitit), ranks, SLURM array tasks, two
runs of one command: any number of processes, on one host or several sharing
a filesystem (NFS included), may render into one sweep dir at once. No lock
covers the dir while they render; what keeps them apart:

- names: every temp file and part file has a random name of its own
  (files.write_atomic, write_part), so no writer touches another's;
- claims: before rendering a batch, a writer claims its images with an atomic
  create (`.claims/<image_id>`) and leaves out images claimed by another or
  already stored, so two runs of one command at once render each image once.
  A claim goes when its image is stored; one left by a writer that died is
  taken over once its process is gone (same host) or it is CLAIM_STALE_SECONDS
  old by our clock (or dated in the future: planted), and one on an image
  that is stored goes at the next merge;
- the merge: folding part files into manifest.parquet (or scores.parquet)
  happens under a short lock file, made with an atomic create, so merges
  never interleave and whoever merges last leaves one complete file;
- cleanup: a temp file goes when it is older than TEMP_STALE_SECONDS (a live
  writer's temp lives for the length of one write), or at once when its name
  says that its writer was on this host and is gone (files.temp_name).

Others sharing the dir may swap a folder for a link at any moment: claims,
locks and temps are made, renamed and removed through descriptors of their
folders (files.folder), never by a path looked up again after a check.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import io
import os
import socket
import stat
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from sweeper import faults
from sweeper.errors import StorageError, UnsafePath
from sweeper.storing.files import check_not_link, folder, made_by_a_gone_writer, temp_name, write_atomic

CLAIMS_DIR = ".claims"
IMAGES_DIR = "images"
CLAIM_STALE_SECONDS = 30 * 60  # a claim this old was left by a writer on another host that died
TEMP_STALE_SECONDS = 15 * 60
MERGE_LOCK = ".manifest.merging"
MERGE_STALE_SECONDS = 10 * 60  # a merge takes seconds: a lock this old was left by a writer that died
CLOCK_SKEW_SECONDS = 60  # a claim or lock dated further ahead than this was not made by a live writer


def _me() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _create(dir_fd: int, name: str, text: str) -> bool:
    """Create `name` in the folder `dir_fd` with `text` if nothing is there; False if something is. Written
    aside and linked into place (atomic, also on NFS), so a writer killed midway leaves no empty claim."""
    temp = temp_name(name)
    _write_new(dir_fd, temp, text)
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileExistsError:
        return False
    except OSError as error:
        if error.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        try:  # a filesystem without hard links (some FUSE and SMB mounts): an exclusive create
            _write_new(dir_fd, name, text)
        except FileExistsError:
            return False
        return True
    finally:
        os.unlink(temp, dir_fd=dir_fd)


def _write_new(dir_fd: int, name: str, text: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dir_fd)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def _read_claim(dir_fd: int, name: str) -> tuple[str, os.stat_result] | None:
    """The text of a claim or lock in the folder `dir_fd` and its times, read without following a link
    or waiting on a FIFO; "" for the text of anything but a regular file (planted); None if nothing is there."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError:  # a planted link (ELOOP), or unreadable
        return "", os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            return "", info
        return handle.read(200).decode("utf-8", errors="replace"), info


def _left_by_the_dead(dir_fd: int, name: str, stale_seconds: float) -> str | None:
    """The text of a claim or lock whose writer is gone, else None.

    Gone: its process on this host ended, or by our clock its lease is over
    (older than `stale_seconds`), or it is dated in the future by more than
    CLOCK_SKEW_SECONDS (no live writer made it then; planted, it would hold
    for ever). Another host's writer keeps its claim until the lease is over.
    Planted links, FIFOs and torn files count as gone.
    """
    try:
        found = _read_claim(dir_fd, name)
    except OSError:
        return None  # released meanwhile: the next create decides
    if found is None:
        return None
    text, info = found
    try:
        host, pid = text.split()[:2]
    except ValueError:
        return text
    age = time.time() - info.st_mtime
    if age > stale_seconds or -age > CLOCK_SKEW_SECONDS:
        return text
    if host != socket.gethostname():
        return None  # no pid checks across hosts
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return text
    except (PermissionError, ValueError, OverflowError):
        return None
    return None


def _take_over(dir_fd: int, name: str, dead: str) -> bool:
    """Replace a dead writer's claim or lock with ours; False if another writer got there first.

    The claim is moved aside (one rename wins) and compared with the one judged
    dead, so a live writer's fresh claim made meanwhile is put back, never lost.
    While it is aside a third writer may create the path; then two believe they
    hold it: that needs three writers at one dead claim within microseconds.
    """
    aside = temp_name(name, ".dead")
    try:
        os.rename(name, aside, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    try:
        found = (_read_claim(dir_fd, aside) or ("",))[0]
    except OSError:
        found = ""
    os.unlink(aside, dir_fd=dir_fd)
    if found != dead:
        _create(dir_fd, name, found)  # a live writer's: back where it was
        return False
    return _create(dir_fd, name, _me())


class Claims:
    """This writer's claims on images of a sweep dir."""

    def __init__(self, out_dir: Path) -> None:
        self._out_dir = Path(out_dir)

    def take(self, specs: Sequence) -> list:
        """The specs of `specs` this writer may render now: claimed here, not by another, not stored yet."""
        mine = []
        with folder(self._out_dir, CLAIMS_DIR, create=True) as claims, _images(self._out_dir) as images:
            for spec in specs:
                if _is_file(images, f"{spec.image_id}.png"):
                    continue  # stored by another writer since the sweep was planned
                if _create(claims, spec.image_id, _me()):
                    mine.append(spec)
                elif (dead := _left_by_the_dead(claims, spec.image_id, CLAIM_STALE_SECONDS)) is not None and _take_over(claims, spec.image_id, dead):
                    mine.append(spec)
        return mine

    def held_by_others(self, specs: Sequence) -> list[str]:
        """Who holds the claims ("host pid") on the images of `specs` that are not stored yet."""
        holders = []
        with folder(self._out_dir, CLAIMS_DIR, create=True) as claims, _images(self._out_dir) as images:
            for spec in specs:
                if not _is_file(images, f"{spec.image_id}.png"):
                    with contextlib.suppress(OSError):
                        found = _read_claim(claims, spec.image_id)
                        if found is not None:
                            holders.append(" ".join(found[0].split()[:2]) or "a planted file")
        return holders

    def release(self, specs: Sequence) -> None:
        with contextlib.suppress(FileNotFoundError), folder(self._out_dir, CLAIMS_DIR) as claims:
            for spec in specs:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(spec.image_id, dir_fd=claims)


def forget_stored(out_dir: Path) -> None:
    """Remove claims on images that are stored (a writer killed between storing and
    releasing leaves them; nobody needs a claim on a stored image)."""
    try:
        with folder(out_dir, CLAIMS_DIR) as claims, _images(out_dir) as images:
            for name in os.listdir(claims):
                if _is_file(images, f"{name}.png"):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(name, dir_fd=claims)
    except (OSError, UnsafePath):  # no claims folder, or a planted link in its place: nothing of ours to remove
        return


@contextlib.contextmanager
def _images(out_dir: Path) -> Iterator[int | None]:
    """A descriptor of the sweep dir's images/ (files.folder), None while it does not exist."""
    with contextlib.ExitStack() as stack:
        try:
            images = stack.enter_context(folder(out_dir, IMAGES_DIR))
        except FileNotFoundError:
            images = None
        yield images


def _is_file(dir_fd: int | None, name: str) -> bool:
    try:
        return dir_fd is not None and stat.S_ISREG(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


@contextlib.contextmanager
def merging(out_dir: Path, wait_seconds: float = MERGE_STALE_SECONDS) -> Iterator[None]:
    """Hold the sweep dir's merge lock: wait for another writer's merge to end, take over one left by the dead."""
    lock = Path(out_dir) / MERGE_LOCK
    deadline = time.monotonic() + wait_seconds
    with folder(out_dir) as dir_fd:
        while not _create(dir_fd, MERGE_LOCK, _me()):
            dead = _left_by_the_dead(dir_fd, MERGE_LOCK, MERGE_STALE_SECONDS)
            if dead is not None and _take_over(dir_fd, MERGE_LOCK, dead):
                break
            if time.monotonic() > deadline:
                raise StorageError(f"{lock} has been held for {wait_seconds:.0f} s; if no sweeper is merging into {out_dir}, remove it")
            time.sleep(0.1)
        try:
            yield
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(MERGE_LOCK, dir_fd=dir_fd)


def remove_stale_temps(out_dir: Path) -> None:
    """Temp files that a killed write left behind: old ones, and those of a writer on this
    host that is gone; never a live writer's."""
    cutoff = time.time() - TEMP_STALE_SECONDS
    for names in ((), *((name,) for name in (IMAGES_DIR, ".manifest-parts", ".scores-parts", ".thumbs", CLAIMS_DIR))):
        with contextlib.suppress(OSError, UnsafePath), folder(out_dir, *names) as dir_fd:
            for name in os.listdir(dir_fd):
                if fnmatch.fnmatchcase(name, ".*.tmp"):
                    with contextlib.suppress(OSError):
                        if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime < cutoff or (
                            made_by_a_gone_writer(name)
                        ):
                            os.unlink(name, dir_fd=dir_fd)


# Part files: rows of a table (the manifest, the scores) written apart by each writer, folded into one file at the merge.


def write_part(out_dir: Path, parts_dir: str, table: Any) -> Path:
    """Write a pyarrow table as a new part file `<out_dir>/<parts_dir>/part-<random>.parquet`,
    atomically (temp, fsync, rename): a name of its own, so no writer touches another's."""
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    path = Path(out_dir) / parts_dir / f"part-{uuid.uuid4().hex}.parquet"
    write_atomic(path, buffer.getvalue(), root=out_dir)
    return path


def part_files(out_dir: Path, parts_dir: str) -> list[Path]:
    check_not_link(Path(out_dir) / parts_dir)
    return sorted((Path(out_dir) / parts_dir).glob("part-*.parquet"))


def drop_parts(out_dir: Path, parts_dir: str, parts: Sequence[Path], damaged: Sequence[Path]) -> None:
    """After a merge: remove merged parts, move the `damaged` ones to `<parts_dir>/damaged/` for a look,
    then the parts folder if empty: through descriptors of the folders (files.folder), as another may swap them for links."""
    damaged_names = {part.name for part in damaged}
    with folder(out_dir, parts_dir) as parts_fd:
        for part in parts:
            if part.name in damaged_names and _exists(parts_fd, part.name):
                with folder(out_dir, parts_dir, "damaged", create=True) as damaged_fd:
                    os.rename(part.name, part.name, src_dir_fd=parts_fd, dst_dir_fd=damaged_fd)
            else:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(part.name, dir_fd=parts_fd)
    with folder(out_dir) as out_fd, contextlib.suppress(OSError):  # another rank wrote a part meanwhile, or damaged parts are kept
        os.rmdir(parts_dir, dir_fd=out_fd)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


class PartWriter:
    """Rows of many pipeline calls gathered into one part file (at most PART_ROWS rows or
    PART_SECONDS old), written by `write(out_dir, rows)`: a sweep of 100,000 images leaves
    ~100 parts to merge, not 6,000. Rows not yet written are lost to a crash: the manifest's
    come back from their PNGs, scores are scored again. Safe to use from the writer threads.
    """

    PART_ROWS = 1024
    PART_SECONDS = 10.0

    def __init__(self, out_dir: Path, write: Callable[[Path, list[dict[str, Any]]], Path]) -> None:
        self._out_dir = Path(out_dir)
        self._write = write
        self._rows: list[dict[str, Any]] = []
        self._since = 0.0
        self._lock = threading.Lock()

    def add(self, rows: list[dict[str, Any]]) -> None:
        with self._lock:
            if not self._rows:
                self._since = time.monotonic()
            self._rows.extend(rows)
            if len(self._rows) >= self.PART_ROWS or time.monotonic() - self._since >= self.PART_SECONDS:
                self._flush()

    def close(self) -> None:
        with self._lock:
            self._flush()

    def _flush(self) -> None:
        if self._rows:
            self._write(self._out_dir, self._rows)
            self._rows = []
            faults.event("part")
