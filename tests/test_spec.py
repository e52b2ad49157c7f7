"""spec.py's field table: each field declared once, every list of fields derived from it."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from pathlib import Path

from sweeper.storing import manifest, store
from sweeper.planning import spec
from sweeper.planning.spec import FIELDS, ROLES, ImageSpec

SRC = Path(spec.__file__).parents[1]  # src/sweeper

# The lists as they were written out by hand before the table: image ids depend on them.
LABEL = {
    "model", "model_config", "refiner", "scheduler", "scheduler_label", "prompt_file", "prompt_template",
    "init_image", "mask_image", "job_num", "overrides", "lora", "vae", "embeddings",
}
EXECUTION = ("batch_size", "attention", "channels_last", "fuse_qkv", "compile", "vae_upcast", "offload", "vae_slicing", "gpu")
PER_IMAGE = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "init_image_sha", "mask_image_sha", "seed")
DEFAULTS = dict(
    strength=None, init_image_sha=None, mask_image_sha=None, watermark=False, safety_checker=False,
    model_config=None, prompt_template=None, init_image=None, mask_image=None, attention="sdpa", channels_last=False,
    fuse_qkv=False, compile=None, vae_upcast=None, offload="none", vae_slicing=False, vae_tiling=False, gpu=None,
    lora=None, lora_scale=None, lora_sha=None, prompt_3=None, negative_prompt_3=None, prompt_syntax=None, subseed=None, subseed_strength=None, true_cfg=None, guidance_rescale=None, max_sequence_length=None, shift=None,
    dynamic_shift=None, sigmas=None, clip_skip=None, slg_layers=None, slg_scale=None, slg_start=None, slg_stop=None,
    hires_scale=None, hires_denoise=None, hires_steps=None, hires_upscaler=None,
    vae=None, vae_sha=None, embeddings=None, embedding_tokens=None, embeddings_sha=None,
)
# Keys of some families only: left out of ids, PNGs and manifest files while unset.
SPARSE = {
    "prompt_3", "negative_prompt_3", "prompt_syntax", "subseed", "subseed_strength", "true_cfg", "guidance_rescale", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "clip_skip",
    "slg_layers", "slg_scale", "slg_start", "slg_stop", "vae", "vae_sha", "embeddings", "embedding_tokens", "embeddings_sha",
    "hires_scale", "hires_denoise", "hires_steps", "hires_upscaler",
}
MANIFEST_COLUMNS = [
    "image_id", "path", "status", "error", "warning", "model", "refiner", "refiner_split", "refiner_mode", "scheduler",
    "prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3", "prompt_syntax", "prompt_file", "seed", "subseed", "subseed_strength", "guidance",
    "steps", "true_cfg", "guidance_rescale", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "clip_skip", "slg_layers", "slg_scale", "slg_start",
    "slg_stop", "width", "height",
    "original_size", "target_size", "crops_coords_top_left", "negative_original_size", "negative_target_size",
    "negative_crops_coords_top_left", "mode", "strength", "hires_scale", "hires_denoise", "hires_steps", "hires_upscaler", "init_image", "mask_image", "init_image_sha", "mask_image_sha",
    "prompt_template", "watermark", "safety_checker", "vae_tiling", "nsfw", "lora", "lora_scale", "lora_sha", "vae", "vae_sha",
    "embeddings", "embedding_tokens", "embeddings_sha", "job_num", "overrides", "model_id", "model_revision",
    "model_config", "refiner_id", "dtype", "device", "rank", "world_size", "batch_size", "batch_index", "attention",
    "channels_last", "fuse_qkv", "compile", "compile_mode", "vae_upcast", "offload", "vae_slicing", "base_steps", "refiner_steps", "hires_pass_steps", "seconds",
    "load_seconds", "warmup_seconds", "started_at", "finished_at", "host", "sweeper", "diffusers", "torch",
]
A1111 = {
    "Refiner switch at": ("refiner_split",), "Sampler": ("scheduler_label",), "Seed": ("seed",), "CFG scale": ("guidance",),
    "Steps": ("steps",), "Size": ("width", "height"), "Denoising strength": ("strength", "hires_denoise"), "Model": ("model_id",), "Refiner": ("refiner_id",),
    "Lora hashes": ("lora",), "Schedule type": ("sigmas",), "Clip skip": ("clip_skip",), "CFG Rescale": ("guidance_rescale",),
    "Hires upscale": ("hires_scale",), "Hires steps": ("hires_steps",), "Hires upscaler": ("hires_upscaler",),
    "Variation seed": ("subseed",), "Variation seed strength": ("subseed_strength",),
    "VAE": ("vae",), "VAE hash": ("vae_sha",), "TI hashes": ("embedding_tokens", "embeddings_sha"),
}


def test_every_field_is_in_the_table_once_with_one_role():
    assert [f.name for f in FIELDS] == [f.name for f in dataclasses.fields(ImageSpec)]
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    assert all(f.role in ROLES for f in FIELDS)
    lists = (spec.SHARED_ID_FIELDS, spec.PER_IMAGE_FIELDS, spec.SPARSE_ROW_FIELDS, spec.EXECUTION_FIELDS, spec.LABEL_FIELDS)
    assert sorted(name for names in lists for name in names) == sorted(spec.FIELD_NAMES)  # a partition: one role each
    assert all(f.column in (None, *spec.COLUMN_TYPES) for f in FIELDS)


def test_derived_lists_are_the_ones_ids_were_made_with():
    assert set(spec.LABEL_FIELDS) == LABEL
    assert spec.EXECUTION_FIELDS == EXECUTION
    assert spec.PER_IMAGE_FIELDS == PER_IMAGE  # in this order: the row hash lists their values
    assert spec.SPARSE_FIELDS == SPARSE and set(spec.SPARSE_ROW_FIELDS) == {"prompt_3", "negative_prompt_3", "prompt_syntax", "subseed"}
    assert set(spec.ID_FIELDS) == set(spec.FIELD_NAMES) - LABEL - set(EXECUTION)
    assert spec.DEFAULTS == DEFAULTS
    assert set(spec.PAIR_FIELDS) == {*spec.SIZE_KEYS, *spec.CROP_KEYS}


def test_the_manifest_schema_and_the_png_text_come_from_the_table():
    assert manifest.SCHEMA.names == MANIFEST_COLUMNS
    assert manifest.SPEC_COLUMNS == [f.name for f in FIELDS if f.column is not None]
    assert spec.A1111_KEYS == A1111
    assert set(spec.A1111_KEYS) <= set(store.A1111_ORDER)


def test_sweeper_modules_import_no_cycle():
    graph = {_name(path): _imports(path) for path in SRC.rglob("*.py")}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path[path.index(module):], module))}"
        if module in done:
            return
        for imported in sorted(graph.get(module, ())):
            visit(imported, (*path, module))
        done.add(module)

    for module in sorted(graph):
        visit(module, ())


def _name(path: Path) -> str:
    """sweeper.planning.plan for src/sweeper/planning/plan.py; a package by its __init__."""
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """The sweeper modules a module imports, at its top or inside functions (a package's own
    __init__ is not counted as an import of its modules: Python runs it first either way)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "sweeper":
            found |= {f"{node.module}.{alias.name}" if (SRC.parent / node.module.replace(".", "/") / f"{alias.name}.py").exists()
                      or (SRC.parent / node.module.replace(".", "/") / alias.name).is_dir() else node.module for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("sweeper.")}
    found.discard(_name(path))
    return found


PLANNING = (
    "errors", "planning.spec", "planning.validate", "planning.image_files", "planning.lora_files", "planning.plan", "planning.prompts",
    "planning.prompt_files", "planning.templates", "planning.wildcards", "rendering.families",
)


def test_planning_modules_are_small_and_import_no_torch():
    for name in PLANNING:
        path = SRC / f"{name.replace('.', '/')}.py"
        assert len((path if path.exists() else path.with_suffix("") / "__init__.py").read_text(encoding="utf-8").splitlines()) <= 400, name
    code = f"import sys\nimport {', '.join(f'sweeper.{name}' for name in PLANNING)}\nimport sweeper.rendering.families\n"
    code += "sweeper.rendering.families.names()\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
