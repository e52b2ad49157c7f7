"""Store: PNGs that carry their own parameters, written off the render path.

Each PNG gets a `parameters` text chunk in the format other SD tools read
(AUTOMATIC1111, ComfyUI importers, civitai) and a `sweeper` chunk holding
the full spec as JSON, enough to render it again. Files are written
atomically (temp file, fsync, rename) by a small thread pool, so the device
keeps rendering while PNGs are encoded; a finished image is never half a file.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image, PngImagePlugin

from sweeper.planning import hires, lora_files
from sweeper.planning.prompt_syntax import lora_tags
from sweeper.errors import PlanError
from sweeper.storing.files import write_atomic
from sweeper.planning.spec import A1111_KEYS, PER_IMAGE_FIELDS, SINGLE_FILE_SUFFIXES, SPARSE_ROW_FIELDS, ImageSpec, public_model_name
from sweeper.rendering.tiny import sweeper_cache

IMAGES_DIR = "images"
THUMBS_DIR = ".thumbs"  # the report's thumbnails, made as images land
THUMB_EXT = ".webp"
THUMB_SIDE = 256


def image_path(spec: ImageSpec) -> str:
    """Where an image lives, relative to the manifest: named by its content id."""
    return f"{IMAGES_DIR}/{spec.image_id}.png"


# The order A1111 writes its keys in; a key added to the field table (spec.py) and not named here goes last.
A1111_ORDER = (
    "Steps", "Sampler", "Schedule type", "CFG scale", "CFG Rescale", "Seed", "Size", "Model", "Variation seed", "Variation seed strength", "Denoising strength", "Model hash",
    "VAE hash", "VAE", "Clip skip", "Refiner", "Refiner switch at",
    "Hires upscale", "Hires steps", "Hires upscaler",
    "Lora hashes", "TI hashes",
)


def parameters_text(spec: ImageSpec, versions: dict[str, str]) -> str:
    """The A1111-style `parameters` text: prompt, negative prompt, then `Key: value` pairs
    (the fields with an A1111 key in the field table, and the model hash; unset ones left out).
    LoRA adapters are named in the prompt line as A1111 writes them: `<lora:name:weight>` (once: a prompt's own tags stay as typed)."""
    typed = {Path(tag.name).name for tag in lora_tags(spec.prompt)[1]} if spec.prompt_syntax == "a1111" else set()
    tags = [f"<lora:{lora_files.a1111_name(v)}:{w:g}>" for v, w in zip(spec.lora or (), spec.lora_scale or ()) if lora_files.a1111_name(v) not in typed]
    lines = [" ".join([spec.prompt, *tags])]
    if spec.negative_prompt:
        lines.append(f"Negative prompt: {spec.negative_prompt}")
    values = {key: _a1111_value(key, [getattr(spec, name) for name in names]) for key, names in a1111_keys(spec.family).items()}
    if spec.model_id.endswith(SINGLE_FILE_SUFFIXES) and Path(spec.model_id).is_file():
        values["Model hash"] = checkpoint_hash(spec.model_id)  # what A1111 and civitai know a checkpoint by
    order = [*A1111_ORDER, *(key for key in values if key not in A1111_ORDER)]
    pairs = [(key, values[key]) for key in order if values.get(key) is not None]
    pairs.append(("Version", f"sweeper {versions.get('sweeper', '')}".strip()))
    lines.append(", ".join(f"{key}: {_quote(value)}" for key, value in pairs))
    return "\n".join(lines)


@functools.lru_cache(maxsize=None)
def a1111_keys(family: str) -> dict[str, tuple[str, ...]]:
    """PNG text key -> the fields it shows, for a family: A1111's, but where the family's own tools
    write another key for a field (Forge: Flux's guidance is "Distilled CFG Scale")."""
    from sweeper.rendering.families import get

    renamed = get(family).a1111
    keys = {key: tuple(name for name in names if name not in renamed) for key, names in A1111_KEYS.items()}
    for name, key in renamed.items():
        if key is not None:
            keys[key] = (*keys.get(key, ()), name)
    return {key: names for key, names in keys.items() if names}


def _a1111_value(key: str, values: list[Any]) -> object | None:
    """A field's value as A1111 writes it; None when unset (the pair is left out)."""
    if key == "Denoising strength":  # img2img's strength or the hires fix's: one of the two is set
        values = [value for value in values if value is not None][:1] or [None]
    if any(value is None for value in values):
        return None
    if key == "Size":
        return "x".join(str(value) for value in values)
    if key == "Model":
        return _a1111_model(values[0])
    if key == "Refiner":
        return public_model_name(values[0])
    if key == "Lora hashes":
        return _lora_hashes(values[0])
    if key == "Hires upscaler":
        return hires.UPSCALERS[values[0]]
    if key == "VAE":
        return public_model_name(values[0])  # A1111 names a VAE file with its suffix
    if key == "VAE hash":
        return values[0][:10]  # A1111's: the file's sha256, 10 hex digits
    if key == "TI hashes":
        return ", ".join(f"{token}: {sha[:12]}" for token, sha in zip(*values))  # A1111's: 12 hex digits
    return f"{values[0]:g}" if isinstance(values[0], float) else values[0]


def _lora_hashes(adapters: tuple[str, ...]) -> str | None:
    """`name: hash, ...` with A1111's short LoRA hashes (civitai finds the adapters by them); None if one is gone."""
    try:
        return ", ".join(f"{lora_files.a1111_name(v)}: {lora_files.file_hashes(lora_files.weights_file(v))[1]}" for v in adapters)
    except (OSError, PlanError):
        return None


def checkpoint_hash(path: str) -> str:
    """The first 10 hex digits of the file's sha256 (A1111's model hash), kept in the cache by path, size and time."""
    info = os.stat(path)
    key = f"{Path(path).resolve()}|{info.st_size}|{info.st_mtime_ns}"
    with _HASHES_LOCK:
        known = _checkpoint_hashes()
        if key not in known:
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 24), b""):
                    digest.update(block)
            known[key] = digest.hexdigest()[:10]
            try:
                write_atomic(sweeper_cache() / "checkpoint-hashes.json", json.dumps(known).encode("utf-8"), durable=False)
            except OSError:
                pass  # a read-only cache: hashed again next time
        return known[key]


_HASHES_LOCK = threading.Lock()


@functools.lru_cache(maxsize=1)
def _checkpoint_hashes() -> dict[str, str]:
    try:
        known = json.loads((sweeper_cache() / "checkpoint-hashes.json").read_text(encoding="utf-8"))
        return {str(k): str(v) for k, v in known.items()} if isinstance(known, dict) else {}
    except (OSError, ValueError):
        return {}


def _quote(value: object) -> str:
    text = str(value)
    # A1111 quotes values that hold its own separators.
    return json.dumps(text, ensure_ascii=False) if any(mark in text for mark in ",:\n") else text


NAN_ERROR = "NaN in the output (in float16 the VAE can overflow: try dtype=bfloat16 or dtype=float32)"
BLACK_WARNING = "all black"


def to_image(array: np.ndarray) -> Image.Image:
    """An RGB float array (0..1) as diffusers turns it into a PIL image."""
    return Image.fromarray((array * 255).round().astype("uint8"))


def problem(array: np.ndarray) -> tuple[str | None, str | None]:
    """(error, warning) for one rendered image: NaN is an error, all black a warning."""
    if np.isnan(array).any():
        return NAN_ERROR, None
    if (array * 255).round().max() == 0:
        return None, BLACK_WARNING
    return None, None


# What differs between the images of one pipeline call (the rest of their specs is equal).
CALL_FIELDS = (*PER_IMAGE_FIELDS, "prompt_template", "init_image", "mask_image")


def call_record(specs: Sequence[ImageSpec], threads: int) -> dict[str, Any]:
    """How an image was computed: every image of its pipeline call, in order, and the
    CPU thread count (float sums, hence pixels, depend on both), for an exact replay."""
    batch = [{name: getattr(spec, name) for name in CALL_FIELDS} | _sparse_prompts(spec) for spec in specs]
    return {"batch": batch, "threads": threads}


def _sparse_prompts(spec: ImageSpec) -> dict[str, Any]:
    """The per-image fields of some families only, when set (other families' PNGs stay as they were)."""
    return {name: getattr(spec, name) for name in SPARSE_ROW_FIELDS if getattr(spec, name) is not None}


def thumbnail_path(image_id: str) -> str:
    """Where the report finds an image's thumbnail, relative to the sweep dir."""
    return f"{THUMBS_DIR}/{image_id}{THUMB_EXT}"


def needs_thumbnail(width: int | None, height: int | None) -> bool:
    """Images no larger than a thumbnail are shown as they are."""
    return not (width and height and max(width, height) <= THUMB_SIDE)


def thumbnail_bytes(image: Image.Image) -> bytes:
    """A small WEBP of the image for the report's grids (the image itself is linked)."""
    image = image.copy()
    image.thumbnail((THUMB_SIDE, THUMB_SIDE))
    if image.mode not in ("RGB", "RGBA"):
        image = image.convert("RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="WEBP", quality=82)
    return buffer.getvalue()


def png_bytes(
    image: Image.Image, spec: ImageSpec, versions: dict[str, str], row: dict[str, Any] | None = None, call: dict[str, Any] | None = None
) -> bytes:
    """The PNG with a `parameters` chunk (A1111's format) and a `sweeper` chunk: the spec as
    JSON, the image's manifest row (so a lost row can be rebuilt from the file) and its
    pipeline call (call_record). A PNG travels: it names local files by their base
    names only and carries no host name or command line (the manifest has them)."""
    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", parameters_text(spec, versions))
    sweeper = {"image_id": spec.image_id, "spec": _public(spec.to_stored_dict()), "versions": versions}
    if row is not None:
        sweeper["row"] = _public({**row, "host": None})
    if call is not None:
        sweeper["call"] = {**call, "batch": [_public(fields) for fields in call["batch"]]}
    info.add_itxt("sweeper", json.dumps(sweeper, ensure_ascii=False, sort_keys=True, default=str))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


_FILE_FIELDS = ("prompt_file", "init_image", "mask_image")  # always local files
_MODEL_FIELDS = ("model_id", "model_config", "refiner_id")  # local paths, hub ids or tiny names


def _public(fields: dict[str, Any]) -> dict[str, Any]:
    """`fields` with local paths cut to their base names and the command line left out."""
    public = dict(fields)
    for name in _FILE_FIELDS:
        if public.get(name):
            public[name] = Path(public[name]).name
    for name in _MODEL_FIELDS:
        if public.get(name):
            public[name] = public_model_name(public[name])
    if isinstance(public.get("lora"), (list, tuple)):  # a spec's: files and folders by base name, hub ids as they are (a row's are names)
        public["lora"] = [public_model_name(value) for value in public["lora"]]
    if public.get("vae"):
        public["vae"] = public_model_name(public["vae"])
    if public.get("embeddings"):
        public["embeddings"] = [Path(value).name for value in public["embeddings"]]
    if "overrides" in public:
        public["overrides"] = ""
    return public


def _a1111_model(model_id: str) -> str:
    """A checkpoint file by its name without the suffix, as A1111 shows it; others as public_model_name."""
    name = public_model_name(model_id)
    return name.rsplit(".", 1)[0] if name.endswith(SINGLE_FILE_SUFFIXES) else name




class BackgroundWriter:
    """Runs write tasks on a few threads; at most `max_pending` wait at once."""

    def __init__(self, workers: int = 2, max_pending: int = 8) -> None:
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sweeper-store")
        self._pending: list[Future] = []
        self._max_pending = max_pending

    def submit(self, task: Callable[[], None]) -> None:
        for future in [f for f in self._pending if f.done()]:
            future.result()  # a failed write surfaces here, not only at the end
            self._pending.remove(future)
        while len(self._pending) >= self._max_pending:
            self._pending.pop(0).result()
        self._pending.append(self._pool.submit(task))

    def close(self) -> None:
        """Wait for every write; re-raise the first failure."""
        try:
            for future in self._pending:
                future.result()
        finally:
            self._pool.shutdown(wait=True)
