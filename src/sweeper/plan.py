"""Plan: composed job configs -> the list of images to render.

    conf/ -> plan -> schedule -> render -> store -> report

No torch here and nothing written: every job of a sweep is planned and
checked before any model loads. A value a user can get wrong raises
`PlanError` with one line naming the key, the value and what is allowed.
A job renders prompts x seeds; each image is an `ImageSpec` whose `image_id`
hashes everything that changes its pixels and nothing that does not.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass, fields
from functools import cached_property
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.tiny import RECIPE_VERSION, TINY_MODELS

FAMILIES = ("sdxl", "sd15")
REFINER_MODES = ("ensemble", "img2img")
MODES = ("txt2img",)
DTYPES = ("auto", "float16", "bfloat16", "float32")
SIZE_KEYS = ("original_size", "target_size", "negative_original_size", "negative_target_size")
CROP_KEYS = ("crops_coords_top_left", "negative_crops_coords_top_left")
SDXL_ONLY_KEYS = ("prompt_2", "negative_prompt_2", *SIZE_KEYS, *CROP_KEYS)
DEFAULT_MAX_IMAGES = 100_000
SEED_LIMIT = 2**63  # int64 in the manifest (torch itself takes up to 2**64 - 1)
RANDOM_SEED_LIMIT = 2**32  # what a seed of -1 draws from, as other SD tools do
_DEVICE = re.compile(r"^(auto|cpu|mps|cuda(:\d+)?)$")


class PlanError(ValueError):
    """A config value that cannot be rendered; the message is one line."""


@dataclass(frozen=True)
class Job:
    """One Hydra job: its number, its resolved config (no `hydra` node) and its overrides."""

    num: int
    config: Mapping[str, Any]
    overrides: tuple[str, ...] = ()


# Fields that only label or locate an image: never part of its id.
LABEL_FIELDS = ("model", "refiner", "scheduler", "scheduler_label", "prompt_file", "job_num", "overrides")


@dataclass(frozen=True)
class ImageSpec:
    """Everything needed to render one image, and where it came from."""

    # What the pixels depend on.
    model_id: str
    model_revision: str | None
    family: str
    refiner_id: str | None
    refiner_revision: str | None
    refiner_split: float | None
    refiner_mode: str | None
    scheduler_class: str
    scheduler_kwargs: str  # canonical JSON, so the spec stays hashable
    mode: str
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
    # Labels and bookkeeping.
    model: str
    refiner: str
    scheduler: str
    scheduler_label: str
    prompt_file: str | None
    batch_size: int | None  # as asked for; None = auto
    job_num: int
    overrides: str

    def render_fields(self) -> dict[str, Any]:
        """The fields that change the pixels, in canonical (JSON-ready) form."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in LABEL_FIELDS and f.name != "batch_size"
        }

    @cached_property
    def image_id(self) -> str:
        canonical = json.dumps(self.render_fields(), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]

    @property
    def uses_cfg(self) -> bool:
        return self.guidance > 1.0

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str) -> ImageSpec:
        data = json.loads(text)
        for key in (*SIZE_KEYS, *CROP_KEYS):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)


def plan(jobs: Sequence[Job], auto_device: str = "cpu", seed_nonce: int = 0) -> list[ImageSpec]:
    """Plan every job; an image asked for twice is planned once (first wins).

    `auto_device` is what `device: auto` means on this machine (see devices.py).
    `seed_nonce` is drawn once per sweep: seeds of -1 are derived from it, so
    planning twice (or on every rank) gives the same random seeds.
    """
    specs: dict[str, ImageSpec] = {}
    asked = 0
    for job in jobs:
        job_specs = plan_job(job, auto_device, seed_nonce, budget=_max_images(job.config) - asked)
        asked += len(job_specs)
        for spec in job_specs:
            specs.setdefault(spec.image_id, spec)
    return list(specs.values())


def _max_images(c: Mapping[str, Any]) -> int:
    return _int(c, "max_images", minimum=1) if c.get("max_images") is not None else DEFAULT_MAX_IMAGES


def plan_job(job: Job, auto_device: str = "cpu", seed_nonce: int = 0, budget: int | None = None) -> list[ImageSpec]:
    """The job's images: prompts x seeds. More than `budget` of them is refused (max_images)."""
    c = job.config
    model = _model(c.get("model"))
    family = model["family"]
    refiner = _refiner(c.get("refiner"), family)
    scheduler = _scheduler(c.get("scheduler"))
    prompts, prompt_file = _prompts(c)
    per_prompt = {key: _per_prompt(c, key, len(prompts)) for key in ("negative_prompt", "prompt_2", "negative_prompt_2")}
    sizes = {key: _pair(c, key, minimum=1) for key in SIZE_KEYS}
    sizes.update({key: _pair(c, key, minimum=0) for key in CROP_KEYS})
    if family != "sdxl":
        for key in SDXL_ONLY_KEYS:
            if c.get(key) is not None:
                raise PlanError(f"{key} is only for SDXL models, but model={model['name']} is {family}")
    device = _device(c.get("device", "auto"), auto_device)
    common = dict(
        model_id=model["id"],
        model_revision=model["revision"],
        family=family,
        refiner_id=refiner["id"],
        refiner_revision=refiner["revision"],
        refiner_split=refiner["split"],
        refiner_mode=refiner["mode"],
        scheduler_class=scheduler["class_name"],
        scheduler_kwargs=json.dumps(scheduler["kwargs"], sort_keys=True),
        mode=_choice(c, "mode", MODES),
        guidance=_guidance(c),
        steps=_int(c, "steps", minimum=1),
        width=_size(c, "width"),
        height=_size(c, "height"),
        dtype=_dtype(c.get("dtype", "auto"), device),
        device=device,
        model=model["name"],
        refiner=refiner["name"],
        scheduler=scheduler["name"],
        scheduler_label=scheduler["label"],
        prompt_file=prompt_file,
        batch_size=_batch_size(c),
        job_num=job.num,
        overrides=" ".join(job.overrides),
        **sizes,
    )
    # Every job draws the same random seeds for -1 (by position), so a
    # `guidance=3,5,7 seed=-1` sweep compares guidance on one seed, as A1111's X/Y plot does.
    seeds = _seeds(c, str(seed_nonce))
    if budget is not None and len(prompts) * len(seeds) > budget:
        limit = _max_images(c)
        raise _fail("max_images", limit, f"the sweep asks for more than {limit} images; raise max_images to render them all")
    return [
        ImageSpec(
            prompt=prompt,
            negative_prompt=per_prompt["negative_prompt"][i],
            prompt_2=per_prompt["prompt_2"][i],
            negative_prompt_2=per_prompt["negative_prompt_2"][i],
            seed=seed,
            **common,
        )
        for i, prompt in enumerate(prompts)
        for seed in seeds
    ]


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
    return value


def _guidance(c: Mapping[str, Any]) -> float:
    value = c.get("guidance")
    if not _is_number(value) or not 0 <= value < math.inf:
        raise _fail("guidance", value, "must be a finite number >= 0")
    return float(value)


def _choice(c: Mapping[str, Any], key: str, allowed: Sequence[str]) -> str:
    value = c.get(key)
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


def _batch_size(c: Mapping[str, Any]) -> int | None:
    value = c.get("batch_size", "auto")
    if value == "auto":
        return None
    if not _is_int(value) or value < 1:
        raise _fail("batch_size", value, "must be auto or an integer >= 1")
    return value


def _device(value: Any, auto_device: str) -> str:
    if not isinstance(value, str) or not _DEVICE.match(value):
        raise _fail("device", value, "allowed: auto, cpu, cuda, cuda:N, mps")
    return auto_device if value == "auto" else value.split(":")[0]


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
    return {"name": model.get("name") or model["id"], "id": model["id"], "revision": revision, "family": family}


def _refiner(refiner: Any, family: str) -> dict[str, Any]:
    if refiner is None or refiner.get("name", "none") == "none":
        return {"name": "none", "id": None, "revision": None, "split": None, "mode": None}
    if family != "sdxl":
        raise PlanError(f"refiner={refiner['name']} needs an SDXL base model, but the model is {family}")
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


def _prompts(c: Mapping[str, Any]) -> tuple[list[str], str | None]:
    prompt_file = c.get("prompt_file")
    if prompt_file is not None:
        path = Path(str(prompt_file)).expanduser()
        if not path.is_file():
            raise _fail("prompt_file", prompt_file, "no such file")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise _fail("prompt_file", prompt_file, "the file holds no prompt (one per line)")
        return prompts, str(prompt_file)
    value = c.get("prompt")
    prompts = [value] if isinstance(value, str) else value
    if not isinstance(prompts, (list, tuple)) or not all(isinstance(p, str) for p in prompts):
        raise _fail("prompt", value, "must be a string or a list of strings")
    if not prompts:
        raise _fail("prompt", value, "needs at least one prompt")
    return list(prompts), None


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
