"""Files in a sweep dir, which others may share: no write follows a link, reads have bounds.

A sweep dir can live on a shared filesystem, and sweeps are passed around,
so what lies in one is data, not a place to be trusted:

- writes go to a temp file with a random name (O_EXCL), then rename into
  place; a rename replaces a link planted at the target instead of writing
  through it, and the folders written into must not be links themselves;
- a folder of a sweep dir is opened step by step from the sweep dir down,
  each step with O_NOFOLLOW in the one before (`folder`), and files in it are
  made, renamed and removed through that descriptor: a folder swapped for a
  link after a check cannot redirect what is done next;
- files read from a sweep dir must be regular files inside it (a link to
  someone's private image is not an image of the sweep), of bounded size;
- image files given to render from (init images, masks) must be regular
  files of bounded size: not a FIFO that blocks, not /dev/zero.

Errors a user can fix raise `UnsafePath` with one line.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import stat
from pathlib import Path
from typing import Iterator

from sweeper import faults
from sweeper.errors import UnsafePath

_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]  # in temps' names (temp_name)

# The process's umask, read once (reading it means setting it, which threads must not race).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
MAX_IMAGE_BYTES = 256 * 2**20  # an init image, a mask, a PNG of a sweep
MAX_IMAGE_PIXELS = 8192 * 8192  # what an image file may declare before it is decoded


def check_not_link(path: Path) -> None:
    """Refuse a symbolic link where sweeper writes or reads its own files."""
    if Path(path).is_symlink():
        raise UnsafePath(
            f"{path} is a symbolic link (to {os.readlink(path)}); sweeper never writes or reads through links "
            "inside a sweep dir: remove it"
        )


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@contextlib.contextmanager
def folder(root: Path, *names: str, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder `root/names[0]/names[1]/...`, with no link followed at `root` or below it.

    Each step is opened in the one before it with O_NOFOLLOW, so what is checked
    is what is used: pass the descriptor as `dir_fd=` to open, stat, rename,
    unlink. Above `root` the path is the user's own (links there are theirs).
    `create` makes missing folders. Raises UnsafePath where a step is a link,
    OSError (FileNotFoundError, NotADirectoryError) as os.open does.
    """
    root = Path(root)
    if create:
        root.parent.mkdir(parents=True, exist_ok=True)
    fd = _open_step(os.fspath(root), None, create, root)
    try:
        shown = root
        for name in names:
            shown = shown / name
            step = _open_step(name, fd, create, shown)
            os.close(fd)
            fd = step
        yield fd
    finally:
        os.close(fd)


def _open_step(name: str, dir_fd: int | None, create: bool, shown: Path) -> int:
    if create:
        with contextlib.suppress(FileExistsError):
            os.mkdir(name, dir_fd=dir_fd)  # makes no folder through a link: a link there exists
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except NotADirectoryError:  # also what O_DIRECTORY | O_NOFOLLOW says of a link
        if stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode):
            check_not_link(shown)
        raise


def temp_name(name: str, kind: str = "") -> str:
    """`.<name>.<host hash>-<pid>.<random><kind>.tmp`: a temp's name of its own, that says whose it is."""
    return f".{name}.{_HOST}-{os.getpid()}.{secrets.token_hex(6)}{kind}.tmp"


def made_by_a_gone_writer(name: str) -> bool:
    """A temp named by temp_name in a process of this host that has ended (a kill -9 between its create
    and its rename); another host's pids are not ours to check."""
    match = re.fullmatch(r"\..+\.([0-9a-f]{8})-(\d{1,10})\.[0-9a-f]{12}(?:\.[a-z]+)?\.tmp", name)
    if match is None or match[1] != _HOST:
        return False
    try:
        os.kill(int(match[2]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError):  # alive under another user, or no such pid at all
        return False
    return False


def write_atomic(path: Path, data: bytes, durable: bool = True, root: Path | None = None) -> None:
    """Write `data` to `path` so that `path` is either absent or whole, never through a link.

    Its folders from `root` (a sweep dir; by default the file's own folder) down
    are opened without following links (`folder`), and the temp file is made and
    renamed into place inside the last one. `durable` fsyncs before the rename
    (images, manifest); caches (thumbnails) skip it.
    """
    path = Path(path)
    root = path.parent if root is None else Path(root)
    with folder(root, *path.parent.relative_to(root).parts, create=True) as dir_fd:
        tmp = temp_name(path.name)  # made with O_EXCL
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o666 & ~_UMASK)  # the modes any program's file would get
            with os.fdopen(fd, "wb") as handle:
                faults.event("write")
                handle.write(data)
                handle.flush()
                if durable:
                    os.fsync(handle.fileno())
            faults.event("temp")
            os.replace(tmp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise


def is_regular_inside(path: Path, root: Path) -> bool:
    """True for a regular file (not a link) that lies inside `root`."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISREG(info.st_mode):
        return False
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
    except ValueError:
        return False
    return True


def read_image_file(path: Path, limit: int = MAX_IMAGE_BYTES) -> bytes:
    """The bytes of an image file to render from: a regular file of at most `limit` bytes.

    Opened non-blocking, so a FIFO is refused instead of waiting for a writer.
    Raises ValueError (one line) otherwise.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        raise ValueError(f"{path}: {error.strerror}") from None
    return read_bounded(fd, path, limit)


def read_inside(root: Path, path: Path, limit: int, what: str = "an image") -> bytes:
    """Like read_image_file, for a file at `path` inside `root` opened with no link followed
    at `root` or below it (`folder`); UnsafePath where one is."""
    relative = Path(path).relative_to(root)
    with folder(root, *relative.parent.parts) as dir_fd:
        try:
            fd = os.open(relative.name, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        except OSError as error:
            if error.errno == errno.ELOOP:
                check_not_link(Path(path))
            raise ValueError(f"{path}: {error.strerror}") from None
    return read_bounded(fd, path, limit, what)


def read_bounded(fd: int, path: Path, limit: int, what: str = "an image") -> bytes:
    """The bytes of the open file `fd` (closed here): a regular file of at most `limit` bytes, else ValueError."""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path}: {info.st_size} bytes, over the limit of {limit} for {what}")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: over the limit of {limit} bytes for {what}")
    return data


# Folders of a sweep dir that hold only files sweeper names itself (each checked as it is used).
_BULK_DIRS = ("images", ".thumbs", ".manifest-parts")


def check_sweep_dir(out_dir: Path, depth: int = 3) -> None:
    """Refuse a sweep or run dir with a link planted where sweeper or Hydra write.

    Hydra writes `.hydra/*.yaml` and a job log into run dirs and, with other
    launchers, into the job subdirs of a sweep dir (callbacks.py makes it
    write without following links; a link found here is refused before it runs).
    The bulk folders are not walked: their files are checked as they are used.
    """
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return
    check_not_link(out_dir)
    stack = [(out_dir, 0)]
    while stack:
        folder, level = stack.pop()
        with os.scandir(folder) as entries:
            for entry in entries:
                if entry.is_symlink():
                    check_not_link(Path(entry.path))
                if entry.is_dir(follow_symlinks=False) and level + 1 < depth and not (level == 0 and entry.name in _BULK_DIRS):
                    stack.append((Path(entry.path), level + 1))


def open_image(path: Path, root: Path | None = None, limit: int = MAX_IMAGE_BYTES):
    """A PIL image from a regular file (inside `root`, if given, and not a link there), not yet decoded.

    Refuses a file over `limit` bytes or declaring more than MAX_IMAGE_PIXELS
    pixels (a small file can declare 15000x15000) with ValueError (one line);
    decode it with `.load()` / `.convert()` as usual.
    """
    import io

    from PIL import Image

    if root is not None and not is_regular_inside(path, root):
        raise ValueError(f"{path}: not a regular file inside {root}")
    data = read_image_file(path, limit)
    try:
        image = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise ValueError(f"{path}: declares more than {MAX_IMAGE_PIXELS} pixels (a decompression bomb?)") from None
    except (OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable image ({type(error).__name__}: {error})") from None
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ValueError(f"{path}: declares {width}x{height}, more than {MAX_IMAGE_PIXELS} pixels")
    return image


def load_yaml(text: str, max_nodes: int = 200_000):
    """yaml.safe_load with a bound on the document's size once its aliases are expanded.

    A few hundred bytes of nested aliases (`b: [*a, *a, ...]`) stand for
    billions of nodes; whoever walks the loaded data would hang. Raises
    ValueError for such a document, or one whose aliases loop.
    """
    import yaml

    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, RecursionError) as error:
        raise ValueError(f"not valid YAML ({' '.join(str(error).split())[:200]})") from None
    if root is None:
        return None
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _yaml_children(node)
        if children_done:
            on_path.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(child)] for child in children)
            if sizes[id(node)] > max_nodes:
                raise ValueError(f"the YAML expands to more than {max_nodes} values (nested aliases)")
            continue
        if id(node) in on_path:
            raise ValueError("the YAML refers to itself (an alias loop)")
        on_path.add(id(node))
        stack.append((node, True))
        for child in children:
            if id(child) in on_path:
                raise ValueError("the YAML refers to itself (an alias loop)")
            stack.append((child, False))
    return yaml.safe_load(text)


def _yaml_children(node) -> list:
    import yaml

    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    return []
