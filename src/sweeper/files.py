"""Files in a sweep dir, which others may share: no write follows a link, reads have bounds.

A sweep dir can live on a shared filesystem, and sweeps are passed around,
so what lies in one is data, not a place to be trusted:

- writes go to a temp file with a random name (O_EXCL), then rename into
  place; a rename replaces a link planted at the target instead of writing
  through it, and the folders written into must not be links themselves;
- files read from a sweep dir must be regular files inside it (a link to
  someone's private image is not an image of the sweep), of bounded size;
- image files given to render from (init images, masks) must be regular
  files of bounded size: not a FIFO that blocks, not /dev/zero.

Errors a user can fix raise `UnsafePath` with one line.
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

from sweeper import faults
from sweeper.errors import UnsafePath

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


def ensure_dir(path: Path) -> Path:
    """Make `path` (and its parents) a directory; refuse if it or a missing-until-now parent is a link."""
    path = Path(path)
    if not path.is_dir() or path.is_symlink():
        check_not_link(path)
        path.mkdir(parents=True, exist_ok=True)
    return path


def write_atomic(path: Path, data: bytes, durable: bool = True) -> None:
    """Write `data` to `path` so that `path` is either absent or whole, never through a link.

    `durable` fsyncs before the rename (images, manifest); caches (thumbnails) skip it.
    """
    path = Path(path)
    ensure_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)  # O_EXCL, random name
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes it 0600; the file gets the modes any program's would
        with os.fdopen(fd, "wb") as handle:
            faults.event("write")
            handle.write(data)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        faults.event("temp")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
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
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ValueError(f"{path}: not a regular file")
        if info.st_size > limit:
            raise ValueError(f"{path}: {info.st_size} bytes, over the limit of {limit} for an image")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path}: over the limit of {limit} bytes for an image")
    return data


# Folders of a sweep dir that hold only files sweeper names itself (each checked as it is used).
_BULK_DIRS = ("images", ".thumbs", ".manifest-parts")


def check_sweep_dir(out_dir: Path, depth: int = 3) -> None:
    """Refuse a sweep or run dir with a link planted where sweeper or Hydra write.

    Hydra writes `.hydra/*.yaml` and a job log into run dirs and, with other
    launchers, into the job subdirs of a sweep dir; it would follow a link.
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


def read_text_file(path: Path, limit: int) -> str:
    """A regular file of at most `limit` bytes as UTF-8 text (undecodable bytes dropped). ValueError otherwise."""
    return read_image_file(path, limit).decode("utf-8", errors="ignore")


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
