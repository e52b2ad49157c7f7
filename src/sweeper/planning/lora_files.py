"""LoRA files: the adapters and weights of a job, found, checked and hashed at planning.

`lora` is null, one adapter or a list applied together; an adapter is a
`.safetensors` file, a folder holding one, or a hub id whose repo holds one.
`lora_scale` is one weight for all of them or a list as long. An adapter's
content hash, not its path, goes into the image id: an edited file renders
again, a moved one does not. No torch here.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import threading
from pathlib import Path
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid, one_line
from sweeper.planning import tensor_files
from sweeper.planning.tensor_files import MAX_HEADER_BYTES

SUFFIX = ".safetensors"  # pickled .pt/.ckpt LoRAs could run code when loaded
DIFFUSERS_NAME = "pytorch_lora_weights.safetensors"  # what save_lora_weights writes


def loras(c: Mapping[str, Any], model_width: int | None = None, model: str = "") -> dict[str, tuple | None]:
    """The spec fields of `lora` and `lora_scale`: paths (or hub ids), weights, content hashes.

    An adapter whose cross-attention takes text embeddings of another width than the
    model's (`model_width`, if known: model_text_width) is refused: made for another family."""
    value, scale = c.get("lora"), c.get("lora_scale", 1.0)
    if value is None or value == []:
        if isinstance(scale, (list, tuple)) and scale:
            raise invalid("lora_scale", list(scale), "a list of weights needs as many adapters in lora (it is null)")
        return {"lora": None, "lora_scale": None, "lora_sha": None}
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, (list, tuple)) or not all(isinstance(entry, str) and entry for entry in entries):
        raise invalid("lora", value, f"must be null, a LoRA file ({SUFFIX}), a folder or hub id holding one, or a list of them")
    found = [(entry, weights_file(entry)) for entry in entries]
    for entry, path in found:
        width = text_width(path)
        if model_width and width and width != model_width:
            raise invalid(
                "lora", entry, f"made for another model family: its cross-attention takes {_width_name(width)} text embeddings, "
                f"{model} takes {_width_name(model_width)}; use a LoRA made for {model}",
            )
    try:
        shas = tuple(file_hashes(path)[0] for _, path in found)
    except ValueError as error:
        raise invalid("lora", value, one_line(error)) from None
    if len(set(shas)) < len(shas):
        raise invalid("lora", value, "lists one adapter twice (the same file content); give it one weight instead")
    return {"lora": tuple(_located(entry) for entry, _ in found), "lora_scale": scales(scale, len(entries)), "lora_sha": shas}


def scales(value: Any, count: int) -> tuple[float, ...]:
    """One weight per adapter: a number for all of them, or a list of `count` numbers."""
    values = list(value) if isinstance(value, (list, tuple)) else [value] * count
    if len(values) != count or not all(_is_number(v) and math.isfinite(v) for v in values):
        raise invalid("lora_scale", value, f"must be a number, or a list of {count} numbers (one per adapter in lora)")
    return tuple(float(v) for v in values)


def weights_file(value: str) -> Path:
    """The `.safetensors` file an adapter's value names: the file, the one in a folder, or the one
    in a hub repo (from the local cache when offline). PlanError (one line) otherwise."""
    path = Path(value).expanduser()
    if path.is_dir():
        return _in_folder(value, path)
    if path.exists() or path.is_symlink() or value.endswith(SUFFIX) or value.startswith(("/", ".", "~")):
        if not path.is_file():  # is_file: a regular file (after links), never a FIFO or a device
            raise invalid("lora", value, "no such file" if not path.exists() else "not a regular file")
        if path.suffix != SUFFIX:
            raise invalid("lora", value, f"not a {SUFFIX} file (pickled .pt/.ckpt files are not loaded)")
        return path.absolute()
    return _in_folder(value, _hub_snapshot(value))


def _located(value: str) -> str:
    """A local adapter by its absolute path; a hub id as it is."""
    path = Path(value).expanduser()
    return str(path.absolute()) if path.exists() else value


def _in_folder(value: str, folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.name.endswith(SUFFIX) and p.is_file())
    if any(p.name == DIFFUSERS_NAME for p in files):
        return folder.absolute() / DIFFUSERS_NAME
    if len(files) != 1:
        what = "no" if not files else f"{len(files)}"
        raise invalid("lora", value, f"the folder holds {what} {SUFFIX} files; name the file")
    return files[0].absolute()


@functools.lru_cache(maxsize=64)  # asked again for every PNG's text: one hub request per process
def _hub_snapshot(value: str) -> Path:
    """The hub repo's LoRA files (only those), from the local cache when HF_HUB_OFFLINE is set."""
    from sweeper.hub import is_hub_or_tiny

    if not is_hub_or_tiny(value):
        raise invalid("lora", value, "no such file or folder, and not a hub id of the form org/name")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(value, allow_patterns=[f"*{SUFFIX}"]))
    except Exception as error:  # offline, no such repo: either way it cannot be had
        raise PlanError(f"invalid lora={value!r}: not in the local Hugging Face cache and not downloadable "
                        f"({one_line(error)[:120]}); download it first (hf download)") from None


_HASHES: dict[tuple, tuple[str, str]] = {}
_HASHES_LOCK = threading.Lock()


def file_hashes(path: Path) -> tuple[str, str]:
    """(content hash for the image id: 20 hex digits of the file's sha256, A1111's short hash), kept per
    process by path, size and time. A1111 (and civitai, which reads its PNGs) knows a LoRA by the first
    12 hex digits of the sha256 of its tensor data, after the safetensors header (kohya's "addnet" hash).
    ValueError (one line) for a header length that the file cannot hold (2**63 overflowed a read)."""
    info = os.stat(path)
    key = (str(path), info.st_size, info.st_mtime_ns)
    with _HASHES_LOCK:
        if key not in _HASHES:
            whole, data = hashlib.sha256(), hashlib.sha256()
            with open(path, "rb") as handle:
                head = handle.read(8)
                whole.update(head)
                length = int.from_bytes(head, "little") if len(head) == 8 else 0
                if length > min(MAX_HEADER_BYTES, info.st_size - 8):
                    raise ValueError(f"{path}: not a safetensors file (its header says {length} bytes; the file has {info.st_size})")
                header = handle.read(length)
                whole.update(header)
                for block in iter(lambda: handle.read(1 << 24), b""):
                    whole.update(block)
                    data.update(block)
            _HASHES[key] = (whole.hexdigest()[:20], data.hexdigest()[:12])
        return _HASHES[key]


# The text-embedding widths of the families people make LoRAs for.
_FAMILY_WIDTHS = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}
_DOWN = ("lora_A.", "lora_down.", "lora.down.")  # peft/diffusers, kohya, diffusers' older format


def _width_name(width: int) -> str:
    family = _FAMILY_WIDTHS.get(width)
    return f"{width}-wide ({family})" if family else f"{width}-wide"


@functools.lru_cache(maxsize=64)
def _header_width(path: str, size: int, mtime_ns: int) -> int | None:
    found = tensor_files.shapes(Path(path))  # None for a crafted header: no width to compare, hashing refuses it if it must
    widths = {shape[1] for key, shape in (found or {}).items() if "attn2" in key and "to_k" in key and any(mark in key for mark in _DOWN) and len(shape) == 2}
    return widths.pop() if len(widths) == 1 else None


def text_width(path: Path) -> int | None:
    """The width of the text embeddings a LoRA's cross-attention takes (the input of its `attn2.to_k`
    down weight), read from the safetensors header: 768 for SD 1.x, 2048 for SDXL; None if it has none."""
    info = os.stat(path)
    return _header_width(str(path), info.st_size, info.st_mtime_ns)


def model_text_width(model: Mapping[str, Any]) -> int | None:
    """The width of the text embeddings the model's UNet attends to, from its UNet config where one is
    on this machine (a tiny model, a local diffusers dir, a cached hub model, a single file's `config`)."""
    from sweeper.rendering.tiny import tiny_models

    model_id, config = str(model.get("id") or ""), model.get("config")
    if model_id in tiny_models():
        return tiny_models()[model_id].text_width(model_id)
    from sweeper.model_files import model_json

    source = str(config) if config else model_id
    try:
        width = (model_json(source, None if config else model.get("revision"), "unet/config.json") or {}).get("cross_attention_dim")
    except (OSError, ValueError):
        return None
    return width if isinstance(width, int) and not isinstance(width, bool) else None


def a1111_name(value: str) -> str:
    """How A1111 names an adapter in `<lora:name:weight>`: its file name without the suffix."""
    name = Path(value).name
    return name[: -len(SUFFIX)] if name.endswith(SUFFIX) else name


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
