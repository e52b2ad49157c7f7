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

SRC = Path(spec.__file__).parent

# The lists as they were written out by hand before the table: image ids depend on them.
LABEL = {
    "model", "model_config", "refiner", "scheduler", "scheduler_label", "prompt_file", "prompt_template",
    "init_image", "mask_image", "job_num", "overrides", "lora",
}
EXECUTION = ("batch_size", "attention", "channels_last", "fuse_qkv", "compile", "vae_upcast", "offload", "vae_slicing", "gpu")
PER_IMAGE = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "init_image_sha", "mask_image_sha", "seed")
DEFAULTS = dict(
    strength=None, init_image_sha=None, mask_image_sha=None, watermark=False, safety_checker=False,
    model_config=None, prompt_template=None, init_image=None, mask_image=None, attention="sdpa", channels_last=False,
    fuse_qkv=False, compile=None, vae_upcast=None, offload="none", vae_slicing=False, vae_tiling=False, gpu=None,
    lora=None, lora_scale=None, lora_sha=None,
)
MANIFEST_COLUMNS = [
    "image_id", "path", "status", "error", "warning", "model", "refiner", "refiner_split", "refiner_mode", "scheduler",
    "prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_file", "seed", "guidance", "steps", "width", "height",
    "original_size", "target_size", "crops_coords_top_left", "negative_original_size", "negative_target_size",
    "negative_crops_coords_top_left", "mode", "strength", "init_image", "mask_image", "init_image_sha", "mask_image_sha",
    "prompt_template", "watermark", "safety_checker", "vae_tiling", "nsfw", "lora", "lora_scale", "lora_sha", "job_num", "overrides", "model_id", "model_revision",
    "model_config", "refiner_id", "dtype", "device", "rank", "world_size", "batch_size", "batch_index", "attention",
    "channels_last", "fuse_qkv", "compile", "compile_mode", "vae_upcast", "offload", "vae_slicing", "base_steps", "refiner_steps", "seconds",
    "load_seconds", "warmup_seconds", "started_at", "finished_at", "host", "sweeper", "diffusers", "torch",
]
A1111 = {
    "Refiner switch at": ("refiner_split",), "Sampler": ("scheduler_label",), "Seed": ("seed",), "CFG scale": ("guidance",),
    "Steps": ("steps",), "Size": ("width", "height"), "Denoising strength": ("strength",), "Model": ("model_id",), "Refiner": ("refiner_id",),
    "Lora hashes": ("lora",),
}


def test_every_field_is_in_the_table_once_with_one_role():
    assert [f.name for f in FIELDS] == [f.name for f in dataclasses.fields(ImageSpec)]
    assert len({f.name for f in FIELDS}) == len(FIELDS)
    assert all(f.role in ROLES for f in FIELDS)
    lists = (spec.SHARED_ID_FIELDS, spec.PER_IMAGE_FIELDS, spec.EXECUTION_FIELDS, spec.LABEL_FIELDS)
    assert sorted(name for names in lists for name in names) == sorted(spec.FIELD_NAMES)  # a partition: one role each
    assert all(f.column in (None, *spec.COLUMN_TYPES) for f in FIELDS)


def test_derived_lists_are_the_ones_ids_were_made_with():
    assert set(spec.LABEL_FIELDS) == LABEL
    assert spec.EXECUTION_FIELDS == EXECUTION
    assert spec.PER_IMAGE_FIELDS == PER_IMAGE  # in this order: the row hash lists their values
    assert set(spec.ID_FIELDS) == set(spec.FIELD_NAMES) - LABEL - set(EXECUTION)
    assert spec.DEFAULTS == DEFAULTS
    assert set(spec.PAIR_FIELDS) == {*spec.SIZE_KEYS, *spec.CROP_KEYS}


def test_the_manifest_schema_and_the_png_text_come_from_the_table():
    assert manifest.SCHEMA.names == MANIFEST_COLUMNS
    assert manifest.SPEC_COLUMNS == [f.name for f in FIELDS if f.column is not None]
    assert spec.A1111_KEYS == A1111
    assert set(spec.A1111_KEYS) <= set(store.A1111_ORDER)


def test_sweeper_modules_import_no_cycle():
    graph = {path.stem: _imports(path) for path in SRC.glob("*.py")}
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


def _imports(path: Path) -> set[str]:
    """The sweeper modules a module imports, at its top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "sweeper":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sweeper."):
            found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("sweeper.")}
    found.discard(path.stem)
    return found


PLANNING = ("errors", "spec", "validate", "image_files", "lora_files", "plan", "prompts", "prompt_files", "templates", "wildcards")


def test_planning_modules_are_small_and_import_no_torch():
    for name in PLANNING:
        assert len((SRC / f"{name}.py").read_text(encoding="utf-8").splitlines()) <= 400, name
    code = f"import sys\nimport {', '.join(f'sweeper.{name}' for name in PLANNING)}\nassert 'torch' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)
