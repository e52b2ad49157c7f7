"""ImageSpec: everything needed to render one image, and its id.

Each field is declared once, on its line of `ImageSpec`, with its role:

- identity: changes the pixels, so it is part of `image_id`, and one pipeline call shares it;
- per-image: part of `image_id`, and may differ between the images of one call;
- execution: how an image is computed, not what it shows: not part of the id,
  one value per sweep, and images share a call only when they agree;
- label: only labels or locates an image: never part of the id;

with its manifest column type (None: not a manifest column), its key in the
A1111 `parameters` text if it has one, and the value a spec written by an
older sweeper gets when it lacks the field. An id field added after ids were
in use is `optional`: at that default it is left out of the hash, so the
images of earlier sweeps keep their ids. A `sparse` field is a key that only
some model families take (families/): unset (None), it is also left out of the
PNG's JSON and of the manifest file, so the sweeps of other families stay byte
for byte what they were. The id fields, the manifest schema (manifest.py) and
the PNG text (store.py) are derived from them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import MISSING, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

IDENTITY, PER_IMAGE, EXECUTION, LABEL = "identity", "per-image", "execution", "label"
ROLES = (IDENTITY, PER_IMAGE, EXECUTION, LABEL)
COLUMN_TYPES = ("string", "int64", "float64", "bool", "pair", "strings", "floats", "ints")  # manifest.py maps them to pyarrow types
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # loaded with from_single_file
SIZE_KEYS = ("original_size", "target_size", "negative_original_size", "negative_target_size")
CROP_KEYS = ("crops_coords_top_left", "negative_crops_coords_top_left")


class Field(NamedTuple):
    """One row of the field table."""

    name: str
    role: str
    column: str | None  # the manifest column's type (COLUMN_TYPES); None: not in the manifest
    a1111: str | None  # its key in the A1111 parameters text
    default: Any  # for a spec written before the field existed; MISSING: always written
    optional: bool  # an id field hashed only when it is not at its default
    sparse: bool  # a key of some families only: unset (None), left out of ids, PNG JSON and the manifest file


def _f(role: str, column: str | None, a1111: str | None = None, default: Any = MISSING, optional: bool = False) -> Any:
    return field(metadata={"role": role, "column": column, "a1111": a1111, "default": default, "optional": optional, "sparse": False})


def _sparse(role: str, column: str, a1111: str | None = None) -> Any:
    return field(metadata={"role": role, "column": column, "a1111": a1111, "default": None, "optional": True, "sparse": True})


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image, and where it came from (fields in manifest column order)."""

    model: str = _f(LABEL, "string")
    refiner: str = _f(LABEL, "string")
    refiner_split: float | None = _f(IDENTITY, "float64", "Refiner switch at")
    refiner_mode: str | None = _f(IDENTITY, "string")
    scheduler: str = _f(LABEL, "string")
    scheduler_class: str = _f(IDENTITY, None)
    scheduler_kwargs: str = _f(IDENTITY, None)  # canonical JSON, so the spec stays hashable
    scheduler_label: str = _f(LABEL, None, "Sampler")
    prompt: str = _f(PER_IMAGE, "string")
    negative_prompt: str | None = _f(PER_IMAGE, "string")
    prompt_2: str | None = _f(PER_IMAGE, "string")
    negative_prompt_2: str | None = _f(PER_IMAGE, "string")
    prompt_3: str | None = _sparse(PER_IMAGE, "string")  # SD 3.5's T5 prompt; null = the prompt
    negative_prompt_3: str | None = _sparse(PER_IMAGE, "string")
    # a1111 where A1111's prompt syntax (weights, BREAK, <lora:...>, over 75 tokens) changes what is encoded; unset: the text as it is.
    prompt_syntax: str | None = _sparse(PER_IMAGE, "string")
    prompt_file: str | None = _f(LABEL, "string")
    seed: int = _f(PER_IMAGE, "int64", "Seed")
    # A1111's variation seed: its noise blended into the seed's by the strength (set only when > 0; SD 1.x, SDXL).
    subseed: int | None = _sparse(PER_IMAGE, "int64", "Variation seed")
    subseed_strength: float | None = _sparse(IDENTITY, "float64", "Variation seed strength")
    guidance: float = _f(IDENTITY, "float64", "CFG scale")
    steps: int = _f(IDENTITY, "int64", "Steps")
    # Keys of some families only (families/ says which family takes which).
    true_cfg: float | None = _sparse(IDENTITY, "float64")  # true classifier-free guidance of guidance-distilled models
    guidance_rescale: float | None = _sparse(IDENTITY, "float64", "CFG Rescale")  # rescales CFG's noise prediction (SD 1.x, SDXL), 0 .. 1
    max_sequence_length: int | None = _sparse(IDENTITY, "int64")  # the T5 / LLM prompt's token budget
    shift: float | None = _sparse(IDENTITY, "float64")  # flow-matching timestep shift
    dynamic_shift: bool | None = _sparse(IDENTITY, "bool")  # shift by image size (use_dynamic_shifting)
    sigmas: str | None = _sparse(IDENTITY, "string", "Schedule type")  # karras, exponential, beta
    clip_skip: int | None = _sparse(IDENTITY, "int64", "Clip skip")  # A1111's: 1 = the last layer
    slg_layers: tuple[int, ...] | None = _sparse(IDENTITY, "ints")  # skip-layer guidance (SD 3.5)
    slg_scale: float | None = _sparse(IDENTITY, "float64")
    slg_start: float | None = _sparse(IDENTITY, "float64")
    slg_stop: float | None = _sparse(IDENTITY, "float64")
    width: int = _f(IDENTITY, "int64", "Size")
    height: int = _f(IDENTITY, "int64", "Size")
    original_size: tuple[int, int] | None = _f(IDENTITY, "pair")
    target_size: tuple[int, int] | None = _f(IDENTITY, "pair")
    crops_coords_top_left: tuple[int, int] | None = _f(IDENTITY, "pair")
    negative_original_size: tuple[int, int] | None = _f(IDENTITY, "pair")
    negative_target_size: tuple[int, int] | None = _f(IDENTITY, "pair")
    negative_crops_coords_top_left: tuple[int, int] | None = _f(IDENTITY, "pair")
    mode: str = _f(IDENTITY, "string")
    strength: float | None = _f(IDENTITY, "float64", "Denoising strength", default=None)  # img2img and inpaint
    # Hires fix (planning/hires.py): the second pass's upscale, strength, steps and upscaler; width and height stay the first pass's.
    hires_scale: float | None = _sparse(IDENTITY, "float64", "Hires upscale")
    hires_denoise: float | None = _sparse(IDENTITY, "float64", "Denoising strength")  # txt2img only, so never beside `strength`
    hires_steps: int | None = _sparse(IDENTITY, "int64", "Hires steps")
    hires_upscaler: str | None = _sparse(IDENTITY, "string", "Hires upscaler")  # latent, lanczos
    init_image: str | None = _f(LABEL, "string", default=None)  # absolute paths
    mask_image: str | None = _f(LABEL, "string", default=None)
    # The images' content, so an edited file renders again.
    init_image_sha: str | None = _f(PER_IMAGE, "string", default=None)
    mask_image_sha: str | None = _f(PER_IMAGE, "string", default=None)
    prompt_template: str | None = _f(LABEL, "string", default=None)  # the dynamicprompts template the prompt came from
    watermark: bool = _f(IDENTITY, "bool", default=False)  # SDXL's invisible watermark
    # Run the model's safety checker (flagged images come out black).
    safety_checker: bool = _f(IDENTITY, "bool", default=False)
    # Decoding in tiles blends their seams: other pixels once an image is larger than a tile.
    vae_tiling: bool = _f(IDENTITY, "bool", default=False)
    # LoRA adapters applied together: where they are (absolute paths, or hub ids), their
    # content hashes (an edited file renders again, a moved one does not) and weights.
    lora: tuple[str, ...] | None = _f(LABEL, "strings", "Lora hashes", default=None)
    lora_scale: tuple[float, ...] | None = _f(IDENTITY, "floats", default=None, optional=True)
    lora_sha: tuple[str, ...] | None = _f(IDENTITY, "strings", default=None, optional=True)
    # A VAE in place of the model's own: where it is (a file or folder by absolute path, or a hub id) and its
    # content hash (as the LoRA's: a moved VAE keeps its images' ids, an edited one renders them again).
    vae: str | None = _sparse(LABEL, "string", "VAE")
    vae_sha: str | None = _sparse(IDENTITY, "string", "VAE hash")
    # Textual-inversion embeddings: where they are, the tokens the prompts use them by, their content hashes.
    embeddings: tuple[str, ...] | None = _sparse(LABEL, "strings")
    embedding_tokens: tuple[str, ...] | None = _sparse(IDENTITY, "strings", "TI hashes")
    embeddings_sha: tuple[str, ...] | None = _sparse(IDENTITY, "strings", "TI hashes")
    job_num: int = _f(LABEL, "int64")
    overrides: str = _f(LABEL, "string")
    model_id: str = _f(IDENTITY, "string", "Model")
    # For a single-file checkpoint: its size and mtime, unless given.
    model_revision: str | None = _f(IDENTITY, "string")
    family: str = _f(IDENTITY, None)
    # Where a single-file checkpoint's component configs come from.
    model_config: str | None = _f(LABEL, "string", default=None)
    refiner_id: str | None = _f(IDENTITY, "string", "Refiner")
    refiner_revision: str | None = _f(IDENTITY, None)
    dtype: str = _f(IDENTITY, "string")
    # The device type: cpu, cuda, mps (the manifest's device column is the one used: cuda:1).
    device: str = _f(IDENTITY, None)
    batch_size: int | None = _f(EXECUTION, None)  # as asked for; None = auto (the manifest's is its call's)
    attention: str = _f(EXECUTION, "string", default="sdpa")
    channels_last: bool = _f(EXECUTION, "bool", default=False)
    fuse_qkv: bool = _f(EXECUTION, "bool", default=False)
    compile: str | None = _f(EXECUTION, "string", default=None)  # a torch.compile mode, or None
    vae_upcast: bool | None = _f(EXECUTION, "bool", default=None)  # None: the VAE's own force_upcast
    offload: str = _f(EXECUTION, "string", default="none")
    vae_slicing: bool = _f(EXECUTION, "bool", default=False)
    # device=cuda:N: render on GPU N (one process); None: each rank its own.
    gpu: int | None = _f(EXECUTION, None, default=None)

    def render_fields(self) -> dict[str, Any]:
        """The fields that change the pixels, in canonical (JSON-ready) form (optional ones only when set)."""
        return {name: getattr(self, name) for name in ID_FIELDS if not _unset(name, getattr(self, name))}

    @cached_property
    def image_id(self) -> str:
        return seeded_id(row_hash(shared_hash(self), row_id_values(vars(self))), self.seed)

    @classmethod
    def hashed(cls, values: Mapping[str, Any], image_id: str) -> ImageSpec:
        """The spec of every field's `values`, already checked, and of its id, already hashed: planning's
        fast path. Filled as copy and pickle fill one: __init__'s ~50 frozen setattrs cost
        more than the rest of planning a seed. Equal to ImageSpec(**values) (tested)."""
        spec = object.__new__(cls)
        vars(spec).update(values, image_id=image_id)
        return spec

    def to_dict(self) -> dict[str, Any]:
        """Every field (its values are JSON-ready: tuples become lists)."""
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def to_stored_dict(self) -> dict[str, Any]:
        """`to_dict` less the sparse fields left unset: what a PNG carries."""
        return {name: value for name, value in self.to_dict().items() if not (name in SPARSE_FIELDS and value is None)}

    def to_json(self) -> str:
        return json.dumps(self.to_stored_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImageSpec:
        """The spec of `to_json`; fields added since it was written get their defaults."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ImageSpec:
        """The spec of `to_dict` (or a row of plan.parquet); fields added since get their defaults."""
        data = {**DEFAULTS, **{name: value for name, value in values.items() if name in FIELD_NAMES}}
        for key in TUPLE_FIELDS:
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


FIELDS: tuple[Field, ...] = tuple(Field(f.name, **f.metadata) for f in fields(ImageSpec))
FIELD_NAMES = tuple(f.name for f in FIELDS)
ID_FIELDS = tuple(f.name for f in FIELDS if f.role in (IDENTITY, PER_IMAGE))
LABEL_FIELDS = tuple(f.name for f in FIELDS if f.role == LABEL)
EXECUTION_FIELDS = tuple(f.name for f in FIELDS if f.role == EXECUTION)
# Id fields that may differ between the images of one pipeline call; the seed is hashed last.
SPARSE_FIELDS = frozenset(f.name for f in FIELDS if f.sparse)
ROW_ID_FIELDS = tuple(f.name for f in FIELDS if f.role == PER_IMAGE and f.name != "seed" and not f.sparse)
SPARSE_ROW_FIELDS = tuple(f.name for f in FIELDS if f.role == PER_IMAGE and f.sparse)
PER_IMAGE_FIELDS = (*ROW_ID_FIELDS, "seed")
ALL_PER_IMAGE_FIELDS = (*PER_IMAGE_FIELDS, *SPARSE_ROW_FIELDS)
SHARED_ID_FIELDS = tuple(f.name for f in FIELDS if f.role == IDENTITY)
PAIR_FIELDS = tuple(f.name for f in FIELDS if f.column == "pair")
TUPLE_FIELDS = tuple(f.name for f in FIELDS if f.column in ("pair", "strings", "floats", "ints"))  # lists in JSON
DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS if f.default is not MISSING}
OPTIONAL_ID_FIELDS = frozenset(f.name for f in FIELDS if f.optional)
# A1111 key -> the fields it shows (Size: width and height), in table order.
A1111_KEYS: dict[str, tuple[str, ...]] = {
    key: tuple(f.name for f in FIELDS if f.a1111 == key) for key in dict.fromkeys(f.a1111 for f in FIELDS if f.a1111)
}


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_json(value: Any) -> str:
    return _CANONICAL.encode(value)


def _unset(name: str, value: Any) -> bool:
    return name in OPTIONAL_ID_FIELDS and value == DEFAULTS[name]


def shared_hash(spec: ImageSpec) -> Any:
    """sha256 fed with the id fields that the images of a call share (optional ones only when set)."""
    values = {name: getattr(spec, name) for name in SHARED_ID_FIELDS}
    return hashlib.sha256(canonical_json({name: value for name, value in values.items() if not _unset(name, value)}).encode("utf-8"))


def row_id_values(values: Mapping[str, Any]) -> list[Any]:
    """What row_hash takes of an image's fields: the ROW_ID_FIELDS' values, then the sparse ones set, if any."""
    row = [values[name] for name in ROW_ID_FIELDS]
    sparse = {name: values[name] for name in SPARSE_ROW_FIELDS if values.get(name) is not None}
    return [*row, sparse] if sparse else row


def row_hash(shared: Any, row: Sequence[Any]) -> Any:
    """... then with the values of ROW_ID_FIELDS: the prompts and images that a row's seeds share."""
    digest = shared.copy()
    digest.update(b"\n" + canonical_json(list(row)).encode("utf-8"))
    return digest


def seeded_id(row: Any, seed: int) -> str:
    """... then with the seed: the image id, 20 hex digits."""
    digest = row.copy()
    digest.update(b"\n%d" % seed)
    return digest.hexdigest()[:20]


def public_model_name(model_id: str) -> str:
    """A hub id or tiny model as it is; a local file or folder by its base name."""
    path = Path(model_id)
    if path.is_absolute() or model_id.startswith(("~", ".")) or model_id.endswith(SINGLE_FILE_SUFFIXES) or path.exists():
        return path.name
    return model_id
