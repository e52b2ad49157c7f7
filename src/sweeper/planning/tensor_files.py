"""Weight files a config names (VAEs, textual-inversion embeddings): bounded, hashed, their shapes read.

No torch here: a `.safetensors` file's tensor names and shapes are in its JSON
header, read without loading a weight; content hashes are kept per process
by path, size and time, so planning a sweep hashes each file once.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

MAX_HEADER_BYTES = 100_000_000  # what the safetensors library itself reads of a header

_HASHES: dict[tuple, str] = {}
_HASHES_LOCK = threading.Lock()


def sha256(path: Path) -> str:
    """The file's sha256 (64 hex digits); A1111's short hashes are its first 10 or 12."""
    info = os.stat(path)
    key = (str(path), info.st_size, info.st_mtime_ns)
    with _HASHES_LOCK:
        if key not in _HASHES:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            _HASHES[key] = digest.hexdigest()
        return _HASHES[key]


def shapes(path: Path) -> dict[str, list[int]] | None:
    """Tensor name -> shape from a `.safetensors` header; None where the header is not one."""
    size = os.stat(path).st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else 0
        if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
            return None
        try:
            header = json.loads(handle.read(length))
        except (ValueError, RecursionError):
            return None
    if not isinstance(header, dict):
        return None
    found = {}
    for name, info in header.items():
        shape = info.get("shape") if isinstance(info, dict) else None
        if name != "__metadata__" and isinstance(shape, list) and all(isinstance(n, int) and not isinstance(n, bool) for n in shape):
            found[name] = shape
    return found


def regular_file(value: str, key: str, suffixes: tuple[str, ...], max_bytes: int) -> Path:
    """The absolute path of the file `value` names, if it is a regular file of one of `suffixes`
    and at most `max_bytes`; PlanError (one line) otherwise."""
    from sweeper.errors import invalid

    path = Path(value).expanduser()
    if not path.is_file():  # is_file: a regular file (after links), never a FIFO or a device
        raise invalid(key, value, "no such file" if not path.exists() else "not a regular file")
    if path.suffix.lower() not in suffixes:
        raise invalid(key, value, f"not a {' / '.join(suffixes)} file")
    if path.stat().st_size > max_bytes:
        raise invalid(key, value, f"over {max_bytes >> 20} MB (a bound against a wrong file)")
    return path.absolute()
