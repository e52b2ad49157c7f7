"""Plan: composed job configs -> the list of images to render.

    conf/ -> plan -> schedule -> render -> store -> report

No torch here and nothing written: every job of a sweep is planned and
checked before any model loads. A value a user can get wrong raises
`PlanError` with one line naming the key, the value and what is allowed.
A job renders prompts x init images x seeds; each image is an `ImageSpec`
whose `image_id` hashes everything that changes its pixels and nothing that
does not. Planning 100k images takes well under a second: the fields a job's
images share are hashed once (see `_specs_like`).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from dataclasses import dataclass, fields, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from sweeper.cli_errors import unknown_key
from sweeper.files import MAX_IMAGE_BYTES, read_image_file
from sweeper.prompts import MAX_PROMPT_CHARS, prompt_rows
from sweeper.tiny import RECIPE_VERSION, TINY_MODELS

FAMILIES = ("sdxl", "sd15")
REFINER_MODES = ("ensemble", "img2img")
MODES = ("txt2img", "img2img", "inpaint")
DTYPES = ("auto", "float16", "bfloat16", "float32")
ATTENTION = ("sdpa", "eager")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
OFFLOAD = ("none", "model", "sequential")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")  # loaded with from_single_file
SIZE_KEYS = ("original_size", "target_size", "negative_original_size", "negative_target_size")
CROP_KEYS = ("crops_coords_top_left", "negative_crops_coords_top_left")
SDXL_ONLY_KEYS = ("prompt_2", "negative_prompt_2", *SIZE_KEYS, *CROP_KEYS)
DEFAULT_MAX_IMAGES = 100_000
DEFAULT_MAX_SIZE = 4096  # pixels per side: beyond the largest real use of SD models
DEFAULT_MAX_STEPS = 1000  # the models' own training schedule has 1000 timesteps
SEED_LIMIT = 2**63  # int64 in the manifest (torch itself takes up to 2**64 - 1)
RANDOM_SEED_LIMIT = 2**32  # what a seed of -1 draws from, as other SD tools do
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


# The keys of conf/config.yaml (a test keeps the two equal) and of its groups: any other is a typo.
CONFIG_KEYS = (
    "name", "prompt", "prompt_file", "prompt_file_paths", "wildcards", "negative_prompt", "prompt_2", "negative_prompt_2",
    "seed", "guidance", "steps", "width", "height", "original_size", "target_size", "crops_coords_top_left",
    "negative_original_size", "negative_target_size", "negative_crops_coords_top_left", "mode", "init_image", "mask_image",
    "strength", "watermark", "safety_checker", "dtype", "device", "batch_size", "attention", "channels_last", "fuse_qkv",
    "compile", "vae_upcast", "offload", "vae_slicing", "vae_tiling", "max_images", "max_size", "max_steps", "dry_run",
)
GROUP_KEYS = {
    "model": ("name", "id", "revision", "config", "family"),
    "refiner": ("name", "id", "revision", "split", "mode"),
    "scheduler": ("name", "class_name", "label", "kwargs"),
}


def known_keys() -> list[str]:
    """Every key a command line may set (for the closest match to a typo)."""
    return [*CONFIG_KEYS, *GROUP_KEYS, *(f"{group}.{field}" for group, fields in GROUP_KEYS.items() for field in fields)]


class PlanError(ValueError):
    """A config value that cannot be rendered; the message is one line."""


@dataclass(frozen=True)
class Job:
    """One Hydra job: its number, its resolved config (no `hydra` node) and its overrides."""

    num: int
    config: Mapping[str, Any]
    overrides: tuple[str, ...] = ()


# Fields that only label or locate an image: never part of its id.
LABEL_FIELDS = (
    "model", "model_config", "refiner", "scheduler", "scheduler_label", "prompt_file", "prompt_template",
    "init_image", "mask_image", "job_num", "overrides",
)
# How an image is computed, not what it shows: not part of its id either, but
# one value per sweep, and images only share a pipeline call when they agree.
EXECUTION_FIELDS = ("batch_size", "attention", "channels_last", "fuse_qkv", "compile", "vae_upcast", "offload", "vae_slicing", "gpu")
# Id fields that may differ between the images of one pipeline call.
_ROW_ID_FIELDS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "init_image_sha", "mask_image_sha")
PER_IMAGE_FIELDS = (*_ROW_ID_FIELDS, "seed")


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image, and where it came from."""

    # What the pixels depend on.
    model_id: str
    model_revision: str | None  # for a single-file checkpoint: its size and mtime, unless given
    family: str
    refiner_id: str | None
    refiner_revision: str | None
    refiner_split: float | None
    refiner_mode: str | None
    scheduler_class: str
    scheduler_kwargs: str  # canonical JSON, so the spec stays hashable
    mode: str
    strength: float | None  # img2img and inpaint
    init_image_sha: str | None  # the init image's content, so an edited file renders again
    mask_image_sha: str | None
    prompt: str
    negative_prompt: str | None
    prompt_2: str | None
    negative_prompt_2: str | None
    seed: int
    guidance: float
    steps: int
    width: int
    height: int
    original_size: tuple[int, int] | None
    target_size: tuple[int, int] | None
    crops_coords_top_left: tuple[int, int] | None
    negative_original_size: tuple[int, int] | None
    negative_target_size: tuple[int, int] | None
    negative_crops_coords_top_left: tuple[int, int] | None
    dtype: str
    device: str  # the device type: cpu, cuda, mps
    watermark: bool  # SDXL's invisible watermark
    safety_checker: bool  # run the model's safety checker (flagged images come out black)
    vae_tiling: bool  # decoding in tiles blends their seams: other pixels once an image is larger than a tile
    # Labels and bookkeeping.
    model: str
    model_config: str | None  # where a single-file checkpoint's component configs come from
    refiner: str
    scheduler: str
    scheduler_label: str
    prompt_file: str | None
    prompt_template: str | None  # the dynamicprompts template the prompt was expanded from
    init_image: str | None  # absolute paths
    mask_image: str | None
    job_num: int
    overrides: str
    # Execution.
    batch_size: int | None  # as asked for; None = auto
    attention: str
    channels_last: bool
    fuse_qkv: bool
    compile: str | None  # a torch.compile mode, or None
    vae_upcast: bool | None  # None: the VAE's own force_upcast
    offload: str
    vae_slicing: bool
    gpu: int | None  # device=cuda:N: render on GPU N (one process); None: each rank its own

    def render_fields(self) -> dict[str, Any]:
        """The fields that change the pixels, in canonical (JSON-ready) form."""
        return {name: getattr(self, name) for name in ID_FIELDS}

    @cached_property
    def image_id(self) -> str:
        return _image_id(_shared_hash(self), self)

    @property
    def uses_cfg(self) -> bool:
        return self.guidance > 1.0

    def to_dict(self) -> dict[str, Any]:
        """Every field (its values are JSON-ready: tuples become lists)."""
        return {name: getattr(self, name) for name in FIELD_NAMES}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImageSpec:
        """The spec of `to_json`; fields added since it was written get their defaults."""
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, fields: Mapping[str, Any]) -> ImageSpec:
        """The spec of `to_dict` (or a row of plan.parquet); fields added since get their defaults."""
        data = {**DEFAULTS, **{name: value for name, value in fields.items() if name in FIELD_NAMES}}
        for key in (*SIZE_KEYS, *CROP_KEYS):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


FIELD_NAMES = tuple(f.name for f in fields(ImageSpec))
ID_FIELDS = tuple(name for name in FIELD_NAMES if name not in LABEL_FIELDS and name not in EXECUTION_FIELDS)
_SHARED_ID_FIELDS = tuple(name for name in ID_FIELDS if name not in PER_IMAGE_FIELDS)
# What a spec written by an older sweeper lacks (from_json).
DEFAULTS: dict[str, Any] = dict(
    strength=None, init_image_sha=None, mask_image_sha=None, watermark=False, safety_checker=False,
    model_config=None, prompt_template=None, init_image=None, mask_image=None, attention="sdpa", channels_last=False,
    fuse_qkv=False, compile=None, vae_upcast=None, offload="none", vae_slicing=False, vae_tiling=False, gpu=None,
)


_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _canonical(value: Any) -> str:
    return _CANONICAL.encode(value)


def _shared_hash(spec: ImageSpec) -> Any:
    """sha256 fed with the id fields that the images of a job share."""
    return hashlib.sha256(_canonical({name: getattr(spec, name) for name in _SHARED_ID_FIELDS}).encode("utf-8"))


def _row_hash(shared: Any, row: Sequence[Any]) -> Any:
    """... then with the values of _ROW_ID_FIELDS: the prompts and images that a row's seeds share."""
    digest = shared.copy()
    digest.update(b"\n" + _canonical(list(row)).encode("utf-8"))
    return digest


def _image_id(shared: Any, spec: ImageSpec) -> str:
    return _seeded_id(_row_hash(shared, [getattr(spec, name) for name in _ROW_ID_FIELDS]), spec.seed)


def _seeded_id(row: Any, seed: int) -> str:
    digest = row.copy()
    digest.update(b"\n%d" % seed)
    return digest.hexdigest()[:20]


class _SpecMaker:
    """Specs that differ from a template only in per-image fields and labels.

    The fast path of planning: the dataclass __init__ sets ~50 fields one by
    one and a full id hashes them all; here a spec is a dict merge, and its id
    hashes only the seed on top of what its job and its row share. Equal to
    `dataclasses.replace` (tested).
    """

    def __init__(self, template: ImageSpec) -> None:
        self._shared = _shared_hash(template)
        self._values = {f.name: getattr(template, f.name) for f in fields(ImageSpec)}

    def row(self, seeds: Sequence[int], **changes: Any) -> list[ImageSpec]:
        """One spec per seed, each with `changes` (the row's prompts, init image, labels)."""
        values = {**self._values, **changes}
        row = _row_hash(self._shared, [values[name] for name in _ROW_ID_FIELDS])
        specs = []
        for seed in seeds:
            spec = object.__new__(ImageSpec)
            spec.__dict__.update(values)
            spec.__dict__["seed"] = seed
            spec.__dict__["image_id"] = _seeded_id(row, seed)
            specs.append(spec)
        return specs


def plan(jobs: Sequence[Job], auto_device: str = "cpu", seed_nonce: int = 0) -> list[ImageSpec]:
    """Plan every job; an image asked for twice is planned once (first wins).

    `auto_device` is what `device: auto` means on this machine (see devices.py).
    `seed_nonce` is drawn once per sweep: seeds of -1 are derived from it, so
    planning twice (or on every rank) gives the same random seeds.
    """
    specs: dict[str, ImageSpec] = {}
    asked = 0
    firsts = []
    settings = _Settings()
    for job in jobs:
        job_specs = plan_job(job, auto_device, seed_nonce, budget=_max_images(job.config) - asked, settings=settings)
        asked += len(job_specs)
        firsts.append(job_specs[0])
        for spec in job_specs:
            specs.setdefault(spec.image_id, spec)
    _check_one_execution(firsts)
    return list(specs.values())


def _check_one_execution(specs: Iterable[ImageSpec]) -> None:
    """Execution options do not change what an image is, so one sweep has one value of each.
    (A job's images share them: per-row prompt parameters cannot set them.)"""
    seen: dict[str, Any] = {}
    for spec in specs:
        for name in EXECUTION_FIELDS:
            if name == "batch_size":  # may vary: the schedule keeps such images apart
                continue
            value = getattr(spec, name)
            if seen.setdefault(name, value) != value:
                raise _fail(
                    name, value, f"another job of the sweep has {_show(seen[name])}; speed and memory options do not "
                    "change the images (not part of image_id), so one sweep has one value: compare them in separate sweeps",
                )


def _max_images(c: Mapping[str, Any]) -> int:
    return _limit(c, "max_images", DEFAULT_MAX_IMAGES)


def plan_job(job: Job, auto_device: str = "cpu", seed_nonce: int = 0, budget: int | None = None, settings: _Settings | None = None) -> list[ImageSpec]:
    """The job's images: prompts x init images x seeds. More than `budget` is refused (max_images).

    `settings` carries what earlier jobs of the sweep planned: a job that differs
    from one of them only in its seeds or prompts reuses that job's checked settings.
    """
    c = job.config
    settings = settings or _Settings()
    rows, prompt_file = prompt_rows(c, limit=budget if budget is not None else _max_images(c))
    # A list of negative prompts zips with the prompts as written, before templates expand.
    texts = {key: _per_prompt(c, key, rows[-1].source + 1) for key in PER_PROMPT_KEYS}
    labels = {"job_num": job.num, "overrides": " ".join(job.overrides)}
    specs: list[ImageSpec] = []
    for row in rows:
        rc = {**c, **row.params} if row.params else c

        def checked() -> tuple[_SpecMaker, list[dict], bool]:
            _check_keys(c)
            template = _template(rc, job, prompt_file, auto_device)
            roots = _csv_paths(c, rc, row.params, prompt_file)
            return _SpecMaker(template), _init_images(rc, template.mode, roots), template.uses_cfg

        maker, inits, cfg = settings.get(c, row.params, checked)
        # Every job draws the same random seeds for -1 (by position), so a `guidance=3,5,7
        # seed=-1` sweep compares guidance on one seed, as A1111's X/Y plot does.
        seeds = _seeds(rc, str(seed_nonce))
        if budget is not None and len(specs) + len(inits) * len(seeds) > budget:
            limit = _max_images(c)
            raise _fail("max_images", limit, f"the sweep asks for more than {limit} images; raise max_images to render them all")
        prompt = {name: row.params.get(name, texts[name][row.source]) for name in PER_PROMPT_KEYS}
        if not cfg:  # guidance <= 1: diffusers never reads a negative prompt; null, so one picture has one id
            prompt.update(negative_prompt=None, negative_prompt_2=None)
        for init in inits:
            specs.extend(maker.row(seeds, prompt=row.prompt, prompt_template=row.template, **prompt, **init, **labels))
    return specs


# Keys that a job's images differ in without their settings changing (planned per job).
_PER_JOB_KEYS = frozenset({"seed", "prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "dry_run", "name"})


class _Settings:
    """A sweep's jobs that differ only in seeds or prompts share their checked settings.

    `-m seed=range(0,100000)` is 100,000 jobs of one setting: checking and hashing
    it once, not per job, is most of planning's time. Jobs composed by
    hydra_jobs.JobComposer share the value objects they do not change, so a
    setting is found by the identity of its values (kept alive here, so no id is reused).
    """

    def __init__(self) -> None:
        self._known: dict[tuple, tuple[tuple, Any]] = {}

    def get(self, c: Mapping[str, Any], params: Mapping[str, Any], make: Any) -> Any:
        values = tuple((key, value) for key, value in c.items() if key not in _PER_JOB_KEYS)
        key = (tuple((name, id(value)) for name, value in values), _canonical(params) if params else "")
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = (values, make())
        return known[1]


PER_PROMPT_KEYS = ("negative_prompt", "prompt_2", "negative_prompt_2")


def _check_keys(c: Mapping[str, Any]) -> None:
    """Refuse a key the config does not have (`+guidnace=7` would render at the default guidance)."""
    for key, value in c.items():
        if key not in GROUP_KEYS:
            if key not in CONFIG_KEYS:
                raise PlanError(unknown_key(key, known_keys()))
            continue
        fields = value if isinstance(value, Mapping) else {}
        allowed = ("name",) if key == "refiner" and fields.get("name", "none") == "none" else GROUP_KEYS[key]
        for field in fields:
            if field not in allowed:
                raise PlanError(unknown_key(f"{key}.{field}", known_keys()))


def _template(c: Mapping[str, Any], job: Job, prompt_file: str | None, auto_device: str) -> ImageSpec:
    """A job's settings as a spec, with placeholders for the per-image fields."""
    model = _model(c.get("model"))
    if _overridden(job, "model.id") and not _overridden(job, "model.name"):
        model["name"] = public_model_name(model["id"])  # not the name of the config group it came from
    family = model["family"]
    refiner = _refiner(c.get("refiner"), family)
    scheduler = _scheduler(c.get("scheduler"))
    sizes = {key: _pair(c, key, minimum=1) for key in SIZE_KEYS}
    sizes.update({key: _pair(c, key, minimum=0) for key in CROP_KEYS})
    if family != "sdxl":
        for key in SDXL_ONLY_KEYS:
            if c.get(key) is not None:
                raise _fail(key, c.get(key), f"only for SDXL models, but model={model['name']} is {family}")
    device, gpu = _device(c.get("device", "auto"), auto_device)
    mode = _choice(c, "mode", MODES)
    if mode != "txt2img" and refiner["id"] is not None:
        raise PlanError(f"invalid refiner={refiner['name']}: works with mode=txt2img only; use refiner=none with mode={mode}")
    steps = _steps(c)
    strength = None if mode == "txt2img" else _strength(c, steps)
    _check_split(refiner, steps, scheduler["kwargs"])
    width, height = _size(c, "width"), _size(c, "height")
    guidance = _guidance(c)
    if guidance <= 1:  # no classifier-free guidance: diffusers uses no negative conditioning
        sizes.update(negative_original_size=None, negative_target_size=None, negative_crops_coords_top_left=None)
    attention = _choice(c, "attention", ATTENTION, default="sdpa")
    fuse_qkv = _flag(c, "fuse_qkv")
    compiled, offload = _compile(c), _offload(c, device)
    if compiled is not None and offload != "none":
        # offload hooks move the UNet's weights between calls; a compiled graph assumes they stay put
        raise _fail("compile", c.get("compile"), f"torch.compile and offload={offload} do not mix; use one or the other")
    if fuse_qkv and attention == "eager":
        # diffusers' fused projections come with its SDPA processor only: eager would be replaced silently.
        raise _fail("fuse_qkv", fuse_qkv, "fused Q/K/V projections run through torch's SDPA; not with attention=eager")
    return ImageSpec(
        model_id=model["id"],
        model_revision=model["revision"],
        family=family,
        refiner_id=refiner["id"],
        refiner_revision=refiner["revision"],
        refiner_split=refiner["split"],
        refiner_mode=refiner["mode"],
        scheduler_class=scheduler["class_name"],
        scheduler_kwargs=json.dumps(scheduler["kwargs"], sort_keys=True),
        mode=mode,
        strength=strength,
        init_image_sha=None,
        mask_image_sha=None,
        prompt="",
        negative_prompt=None,
        prompt_2=None,
        negative_prompt_2=None,
        seed=0,
        guidance=guidance,
        steps=steps,
        width=width,
        height=height,
        dtype=_dtype(c.get("dtype", "auto"), device),
        device=device,
        watermark=_watermark(c, family),
        safety_checker=_safety_checker(c, model),
        model=model["name"],
        model_config=model["config"],
        refiner=refiner["name"],
        scheduler=scheduler["name"],
        scheduler_label=scheduler["label"],
        prompt_file=prompt_file,
        prompt_template=None,
        init_image=None,
        mask_image=None,
        job_num=job.num,
        overrides=" ".join(job.overrides),
        batch_size=_batch_size(c),
        attention=attention,
        channels_last=_flag(c, "channels_last"),
        fuse_qkv=fuse_qkv,
        compile=compiled,
        vae_upcast=_vae_upcast(c),
        offload=offload,
        vae_slicing=_flag(c, "vae_slicing"),
        vae_tiling=_flag(c, "vae_tiling"),
        gpu=gpu,
        **_conditioning(sizes, mode, width, height),
    )


def recorded_specs(spec: ImageSpec, call: Sequence[Mapping[str, Any]], auto_device: str = "cpu") -> list[ImageSpec]:
    """The specs of a recorded pipeline call (a PNG's), through the checks a sweep's config gets.

    A PNG may come from anyone, so what it says is data: its settings are
    planned again as a config would be (any value planning would not produce
    is refused), and each image of the call (`call`: prompts, seed, init
    image paths and hashes) is checked field by field. `spec.init_image`
    and `mask_image` must already name local files, which are hashed again.
    Raises PlanError (one line).
    """
    c = config_of(spec)
    template = _template(c, Job(spec.job_num, c), spec.prompt_file, auto_device)
    for name in (*_SHARED_ID_FIELDS, *EXECUTION_FIELDS):
        if getattr(template, name) != getattr(spec, name):
            raise _fail(name, getattr(spec, name), f"not what planning makes of the recorded settings ({_show(getattr(template, name))})")
    specs = []
    for image in call:
        row = {name: image.get(name) for name in ("prompt", *PER_PROMPT_KEYS)}
        if not isinstance(row["prompt"], str) or not all(v is None or isinstance(v, str) for v in row.values()):
            raise _fail("prompt", row["prompt"], "recorded prompts must be strings")
        if max(len(v or "") for v in row.values()) > MAX_PROMPT_CHARS:
            raise _fail("prompt", row["prompt"][:80], f"a recorded prompt is over {MAX_PROMPT_CHARS} characters")
        seed = image.get("seed")
        if not _is_int(seed) or not 0 <= seed < SEED_LIMIT:
            raise _fail("seed", seed, f"must be an integer 0 .. {SEED_LIMIT - 1}")
        images = _init_images({**c, "init_image": image.get("init_image"), "mask_image": image.get("mask_image")}, template.mode)[0]
        for name in ("init_image_sha", "mask_image_sha"):
            if images[name] != image.get(name):
                raise _fail(name[:-4], images[name[:-4]], f"its content is not the recorded image's ({images[name]} != {_show(image.get(name))})")
        template_text = image.get("prompt_template")
        specs.append(replace(template, **row, **images, seed=seed, prompt_template=template_text if isinstance(template_text, str) else None))
    return specs


def config_of(spec: ImageSpec) -> dict[str, Any]:
    """The job config that plans `spec`'s shared settings (the inverse of `_template`)."""
    refiner = {"name": "none"}
    if spec.refiner_id is not None:
        refiner = {"name": spec.refiner, "id": spec.refiner_id, "revision": spec.refiner_revision, "split": spec.refiner_split, "mode": spec.refiner_mode}
    try:
        kwargs = json.loads(spec.scheduler_kwargs)
    except (TypeError, ValueError):
        raise _fail("scheduler_kwargs", spec.scheduler_kwargs, "must be a JSON object of scheduler config values") from None
    copied = ("guidance", "steps", "width", "height", *SIZE_KEYS, *CROP_KEYS, "mode", "strength", "watermark", "safety_checker",
              "dtype", "device", "attention", "channels_last", "fuse_qkv", "offload", "vae_slicing", "vae_tiling")
    return {
        "model": {"name": spec.model, "id": spec.model_id, "revision": spec.model_revision, "family": spec.family, "config": spec.model_config},
        "refiner": refiner,
        "scheduler": {"name": spec.scheduler, "class_name": spec.scheduler_class, "kwargs": kwargs, "label": spec.scheduler_label},
        **{name: getattr(spec, name) for name in copied},
        "batch_size": "auto" if spec.batch_size is None else spec.batch_size,
        "compile": False if spec.compile is None else spec.compile,
        "vae_upcast": "auto" if spec.vae_upcast is None else spec.vae_upcast,
    }


def _overridden(job: Job, key: str) -> bool:
    return any(override.lstrip("+~").startswith(f"{key}=") for override in job.overrides)


def _conditioning(sizes: Mapping[str, Any], mode: str, width: int, height: int) -> dict[str, Any]:
    """SDXL size conditioning in the one form that says what takes effect.

    A value equal to diffusers' default is null. An unset negative value means
    its positive counterpart; diffusers' SDXL base ignores the negative ones
    unless both negative sizes are given, so they are either all null (no
    effect) or all three set, and render passes all three. One picture, one id.
    """
    size, crop = (height, width), (0, 0)
    positive = (sizes["original_size"] or size, sizes["crops_coords_top_left"] or crop, sizes["target_size"] or size)
    if mode != "txt2img" and sizes["negative_crops_coords_top_left"] is not None:
        # the img2img and inpaint pipelines take crops_coords_top_left for both
        raise _fail("negative_crops_coords_top_left", list(sizes["negative_crops_coords_top_left"]), f"diffusers' SDXL {mode} pipeline ignores it; leave it null")
    negative = tuple(value or positive[n] for n, value in enumerate(
        (sizes["negative_original_size"], sizes["negative_crops_coords_top_left"], sizes["negative_target_size"])))
    same = negative == positive
    return dict(
        original_size=None if positive[0] == size else positive[0],
        crops_coords_top_left=None if positive[1] == crop else positive[1],
        target_size=None if positive[2] == size else positive[2],
        negative_original_size=None if same else negative[0],
        negative_crops_coords_top_left=None if same else negative[1],
        negative_target_size=None if same else negative[2],
    )


def _check_split(refiner: Mapping[str, Any], steps: int, scheduler_kwargs: Mapping[str, Any]) -> None:
    """Refuse a refiner split that leaves the base or the refiner no step."""
    if refiner["id"] is None:
        return
    base, refined = split_steps(steps, refiner["split"], refiner["mode"], scheduler_kwargs.get("timestep_spacing", "leading"))
    if min(base, refined) < 1:
        who = "base" if base < 1 else "refiner"
        raise _fail(
            "refiner.split", refiner["split"], f"with steps={steps} (refiner.mode={refiner['mode']}) the {who} gets no step "
            f"(base {base}, refiner {refined}); choose a split nearer 0.5 or more steps",
        )


def split_steps(steps: int, split: float, mode: str, spacing: str = "leading", train_steps: int = 1000) -> tuple[int, int]:
    """(base steps, refiner steps) of a refiner split, as diffusers cuts them.

    img2img: the base runs every step, the refiner int(steps * (1 - split)).
    ensemble: the split cuts the noise schedule, not the steps: the base runs the
    timesteps >= (1 - split) * 1000, the refiner the rest. Exact for schedules
    spaced evenly in time (`timestep_spacing` leading, as SDXL ships, trailing or
    linspace); Karras-style sigmas crowd the low-noise end, so render records the
    counts that really ran (base_steps, refiner_steps).
    """
    if mode == "img2img":
        return steps, min(int(steps * (1.0 - split)), steps)
    if spacing == "trailing":
        timesteps = [round(train_steps - i * train_steps / steps) - 1 for i in range(steps)]
    elif spacing == "linspace":
        timesteps = [round((train_steps - 1) * (1 - i / max(steps - 1, 1))) for i in range(steps)]
    else:  # leading, with SD's steps_offset of 1
        timesteps = [(steps - 1 - i) * (train_steps // steps) + 1 for i in range(steps)]
    cutoff = int(round(train_steps - split * train_steps))
    base = sum(t >= cutoff for t in timesteps)
    return base, steps - base


def public_model_name(model_id: str) -> str:
    """A hub id or tiny model as it is; a local file or folder by its base name."""
    path = Path(model_id)
    if path.is_absolute() or model_id.startswith(("~", ".")) or model_id.endswith(SINGLE_FILE_SUFFIXES) or path.exists():
        return path.name
    return model_id


def _show(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, ensure_ascii=False, default=str)


def _fail(key: str, value: Any, allowed: str) -> PlanError:
    return PlanError(f"invalid {key}={_show(value)}: {allowed}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _int(c: Mapping[str, Any], key: str, minimum: int) -> int:
    value = c.get(key)
    if not _is_int(value) or value < minimum:
        raise _fail(key, value, f"must be an integer >= {minimum}")
    return value


def _size(c: Mapping[str, Any], key: str) -> int:
    value = c.get(key)
    if not _is_int(value) or value <= 0 or value % 8:
        raise _fail(key, value, "must be a positive multiple of 8")
    limit = _limit(c, "max_size", DEFAULT_MAX_SIZE)
    if value > limit:
        raise _fail(key, value, f"over max_size={limit} (a bound against typos and crafted CSV rows; raise max_size to render it)")
    return value


def _steps(c: Mapping[str, Any]) -> int:
    value = _int(c, "steps", minimum=1)
    limit = _limit(c, "max_steps", DEFAULT_MAX_STEPS)
    if value > limit:
        raise _fail("steps", value, f"over max_steps={limit} (a bound against typos and crafted CSV rows; raise max_steps to render it)")
    return value


def _limit(c: Mapping[str, Any], key: str, default: int) -> int:
    return default if c.get(key) is None else _int(c, key, minimum=1)


def _guidance(c: Mapping[str, Any]) -> float:
    value = c.get("guidance")
    if not _is_number(value) or not 0 <= value < math.inf:
        raise _fail("guidance", value, "must be a finite number >= 0")
    return float(value)


def _choice(c: Mapping[str, Any], key: str, allowed: Sequence[str], default: str | None = None) -> str:
    value = c.get(key, default)
    if value not in allowed:
        raise _fail(key, value, f"allowed: {', '.join(allowed)}")
    return value


def _pair(c: Mapping[str, Any], key: str, minimum: int) -> tuple[int, int] | None:
    value = c.get(key)
    if value is None:
        return None
    if not isinstance(value, (list, tuple)) or len(value) != 2 or not all(_is_int(v) and v >= minimum for v in value):
        what = "[height, width]" if key in SIZE_KEYS else "[top, left]"
        raise _fail(key, value, f"must be null or {what}, two integers >= {minimum}")
    return (value[0], value[1])


def _flag(c: Mapping[str, Any], key: str) -> bool:
    value = c.get(key, False)
    if not isinstance(value, bool):
        raise _fail(key, value, "must be true or false")
    return value


def _strength(c: Mapping[str, Any], steps: int) -> float:
    value = c.get("strength")
    if not _is_number(value) or not 0 < value <= 1:
        raise _fail("strength", value, "must be a number in (0, 1]: the fraction of the init image that is re-noised")
    if int(steps * value) < 1:  # diffusers runs int(steps * strength) steps; none fails mid-render
        raise _fail("strength", value, f"with steps={steps} it leaves no denoising step (int(steps * strength) = 0); raise strength or steps")
    return float(value)


def _watermark(c: Mapping[str, Any], family: str) -> bool:
    value = _flag(c, "watermark")
    if value and family != "sdxl":
        raise _fail("watermark", value, "only SDXL pipelines have the invisible watermark")
    if value:
        import importlib.util

        if importlib.util.find_spec("imwatermark") is None:
            raise _fail("watermark", value, "needs the invisible-watermark package: pip install invisible-watermark")
    return value


def _safety_checker(c: Mapping[str, Any], model: Mapping[str, Any]) -> bool:
    value = c.get("safety_checker", "auto")
    if value not in ("auto", True, False):
        raise _fail("safety_checker", value, "allowed: auto (the model's own, if it has one), true, false")
    if value is True and model["family"] != "sd15":
        raise _fail("safety_checker", value, "only Stable Diffusion 1.x pipelines have a safety checker")
    # A checkpoint file holds no safety checker (from_single_file loads none); true takes model.config's.
    single_file = model["id"].endswith(SINGLE_FILE_SUFFIXES)
    if value is True and single_file and model["config"] is None:
        raise _fail("safety_checker", value, "a single-file checkpoint holds no safety checker; set model.config to a diffusers model that has one")
    return model["family"] == "sd15" and not single_file if value == "auto" else value


def _compile(c: Mapping[str, Any]) -> str | None:
    value = c.get("compile")
    if value is False or value is None:
        return None
    if value is True:
        return "default"
    if value not in COMPILE_MODES:
        raise _fail("compile", value, f"allowed: false, true, {', '.join(COMPILE_MODES)} (torch.compile modes)")
    return value


def _vae_upcast(c: Mapping[str, Any]) -> bool | None:
    value = c.get("vae_upcast", "auto")
    if value not in ("auto", True, False):
        raise _fail("vae_upcast", value, "allowed: auto (the VAE's own force_upcast), true, false")
    return None if value == "auto" else value


def _offload(c: Mapping[str, Any], device: str) -> str:
    value = _choice(c, "offload", OFFLOAD, default="none")
    if value != "none" and device != "cuda":
        raise _fail("offload", value, f"CPU offload moves models between the CPU and a GPU; it needs device=cuda, not {device}")
    return value


PROMPT_FILE_PATHS = ("inside", "anywhere")


def _csv_paths(c: Mapping[str, Any], rc: dict[str, Any], params: Mapping[str, Any], prompt_file: str | None) -> dict[str, Path]:
    """Image paths a CSV row gives, resolved against the CSV's folder (in `rc`).

    A CSV is data that may come from someone else: with prompt_file_paths=inside
    (the default) its paths must stay inside its folder; the returned roots tell
    `_image_files` to hold a folder's files to that too.
    """
    where = _choice(c, "prompt_file_paths", PROMPT_FILE_PATHS, default="inside")
    roots = {}
    for key in ("init_image", "mask_image"):
        if key not in params:
            continue
        folder = Path(str(prompt_file)).expanduser().absolute().parent
        if where == "anywhere":
            rc[key] = os.path.normpath(folder / Path(str(params[key])).expanduser())
            continue
        resolved = (folder / str(params[key])).resolve()
        if not _inside(resolved, folder):
            raise _fail(
                key, params[key], f"in prompt_file={_show(prompt_file)} it leads outside the CSV's folder {folder}; "
                "set prompt_file_paths=anywhere if you trust the file",
            )
        rc[key], roots[key] = str(resolved), folder.resolve()
    return roots


def _inside(path: Path, root: Path) -> bool:
    root = root.resolve()
    return path == root or root in path.resolve().parents


def _init_images(c: Mapping[str, Any], mode: str, roots: Mapping[str, Path] = {}) -> list[dict[str, str | None]]:
    """Per image: the init image and mask (paths and content hashes); one all-None entry for txt2img."""
    init, mask = c.get("init_image"), c.get("mask_image")
    if mode == "txt2img":
        for key, value in (("init_image", init), ("mask_image", mask)):
            if value is not None:
                raise _fail(key, value, "only for mode=img2img or mode=inpaint")
        return [dict(init_image=None, init_image_sha=None, mask_image=None, mask_image_sha=None)]
    if init is None:
        raise _fail("init_image", init, f"mode={mode} needs an image file or a folder of images")
    if mode == "img2img" and mask is not None:
        raise _fail("mask_image", mask, "only for mode=inpaint")
    if mode == "inpaint" and mask is None:
        raise _fail("mask_image", mask, "mode=inpaint needs a mask: an image file, or a folder of masks named like the init images")
    inits = _image_files("init_image", init, roots.get("init_image"))
    masks = {} if mask is None else {path.stem: path for path in _image_files("mask_image", mask, roots.get("mask_image"))}
    images = []
    for path in inits:
        if mask is None:
            mask_path = None
        elif Path(str(mask)).expanduser().is_file():
            mask_path = next(iter(masks.values()))
        elif path.stem in masks:
            mask_path = masks[path.stem]
        else:
            raise _fail("mask_image", mask, f"no mask named {path.stem}.* for the init image {path}")
        images.append(dict(
            init_image=str(path), init_image_sha=_sha("init_image", path),
            mask_image=None if mask_path is None else str(mask_path),
            mask_image_sha=None if mask_path is None else _sha("mask_image", mask_path),
        ))
    return images


def _image_files(key: str, value: Any, root: Path | None = None) -> list[Path]:
    """An image file, or every image of a folder (sorted by name): absolute paths.

    With a `root` (paths from a CSV), a folder's files must resolve inside it too.
    """
    if not isinstance(value, str) or not value:
        raise _fail(key, value, "must be the path of an image file or of a folder of images")
    path = Path(value).expanduser().absolute()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if root is not None:
            files = [p for p in files if _inside(p, root)]
        if not files:
            raise _fail(key, value, f"the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise _fail(key, value, "no such file or folder" if not path.exists() else "not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise _fail(key, value, f"not an image file ({', '.join(IMAGE_SUFFIXES)})")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise _fail(key, value, f"{size} bytes, over the limit of {MAX_IMAGE_BYTES} for an image")
    return [path]


def _sha(key: str, path: Path) -> str:
    try:
        return file_sha(path)
    except ValueError as error:
        raise _fail(key, str(path), str(error)) from None


def file_sha(path: Path) -> str:
    """The content hash that stands for an init image or mask in the image id."""
    return content_sha(read_image_file(path))


def content_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _batch_size(c: Mapping[str, Any]) -> int | None:
    value = c.get("batch_size", "auto")
    if value == "auto":
        return None
    if not _is_int(value) or value < 1:
        raise _fail("batch_size", value, "must be auto or an integer >= 1")
    return value


def _device(value: Any, auto_device: str) -> tuple[str, int | None]:
    """(device type, GPU index or None) of `device`."""
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise _fail("device", value, "allowed: auto, cpu, cuda, cuda:N, mps")
    kind, _, index = value.partition(":")
    return (auto_device if value == "auto" else kind), (int(index) if index else None)


def _dtype(value: Any, device: str) -> str:
    if value not in DTYPES:
        raise _fail("dtype", value, f"allowed: {', '.join(DTYPES)}")
    if value == "auto":
        return "float16" if device == "cuda" else "float32"
    return value


def _model(model: Any) -> dict[str, Any]:
    if not isinstance(model, Mapping) or not model.get("id") or not isinstance(model.get("id"), str):
        raise _fail("model.id", None if not isinstance(model, Mapping) else model.get("id"), "must name a model (model=sdxl, sd15, tiny, tiny-sd)")
    family = model.get("family")
    if family not in FAMILIES:
        raise _fail("model.family", family, f"allowed: {', '.join(FAMILIES)}")
    revision = model.get("revision")
    if model["id"] in TINY_MODELS and revision is None:
        revision = RECIPE_VERSION  # a new tiny recipe makes new images, never mixes with old ones
    config = model.get("config")
    if config is not None and not (isinstance(config, str) and config):
        raise _fail("model.config", config, "must be null, or a diffusers model dir or hub id")
    if model["id"].endswith(SINGLE_FILE_SUFFIXES):
        path = Path(model["id"]).expanduser()
        if not path.is_file():
            raise _fail("model.id", model["id"], "no such checkpoint file")
        if revision is None:  # a changed checkpoint makes new images; hashing gigabytes at every plan would not do
            stat = path.stat()
            revision = f"file:{stat.st_size}:{stat.st_mtime_ns}"
    return {"name": model.get("name") or model["id"], "id": model["id"], "revision": revision, "family": family, "config": config}


def _refiner(refiner: Any, family: str) -> dict[str, Any]:
    if refiner is None or refiner.get("name", "none") == "none":
        return {"name": "none", "id": None, "revision": None, "split": None, "mode": None}
    if family != "sdxl":
        raise PlanError(f"invalid refiner={refiner['name']}: needs an SDXL base model, but the model is {family}")
    if not isinstance(refiner.get("id"), str) or not refiner["id"]:
        raise _fail("refiner.id", refiner.get("id"), "must name a refiner model")
    split = refiner.get("split")
    if not _is_number(split) or not 0 < split < 1:
        raise _fail("refiner.split", split, "must be a fraction of the steps strictly between 0 and 1")
    mode = refiner.get("mode")
    if mode not in REFINER_MODES:
        raise _fail("refiner.mode", mode, f"allowed: {', '.join(REFINER_MODES)}")
    revision = refiner.get("revision")
    if refiner["id"] in TINY_MODELS and revision is None:
        revision = RECIPE_VERSION
    return {"name": refiner["name"], "id": refiner["id"], "revision": revision, "split": float(split), "mode": mode}


def _scheduler(scheduler: Any) -> dict[str, Any]:
    if not isinstance(scheduler, Mapping) or not isinstance(scheduler.get("class_name"), str):
        value = scheduler.get("class_name") if isinstance(scheduler, Mapping) else scheduler
        raise _fail("scheduler.class_name", value, "each scheduler config needs the name of a diffusers scheduler class")
    kwargs = scheduler.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise _fail("scheduler.kwargs", kwargs, "must be a mapping of scheduler config values")
    name = scheduler.get("name") or scheduler["class_name"]
    return {"name": name, "class_name": scheduler["class_name"], "kwargs": dict(kwargs), "label": scheduler.get("label") or name}


def _per_prompt(c: Mapping[str, Any], key: str, count: int) -> list[str | None]:
    """A value for every prompt: one string for all, or a list zipped with the prompts."""
    value = c.get(key)
    if value is None or isinstance(value, str):
        return [value] * count
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value) and len(value) == count:
        return list(value)
    raise _fail(key, value, f"must be null, a string, or a list of {count} strings (one per prompt)")


def _seeds(c: Mapping[str, Any], random_key: str) -> list[int]:
    value = c.get("seed")
    seeds = value if isinstance(value, (list, tuple)) else [value]
    if not seeds:
        raise _fail("seed", value, "needs at least one seed")
    planned = []
    for position, seed in enumerate(seeds):
        if not _is_int(seed) or not -1 <= seed < SEED_LIMIT:
            raise _fail("seed", value, f"must be an integer 0 .. {SEED_LIMIT - 1}, a list of them, or -1 for a random seed")
        if seed == -1:
            digest = hashlib.sha256(f"{random_key}:{position}".encode()).digest()
            seed = int.from_bytes(digest[:8], "big") % RANDOM_SEED_LIMIT
        planned.append(seed)
    return planned
