"""Plan: composed job configs -> the list of images to render.

    conf/ -> plan -> schedule -> render -> store -> report

No torch here and nothing written: every job of a sweep is planned and
checked (validate.py) before any model loads. A job renders prompts
(prompts.py) x init images (image_files.py) x seeds; each image is an
`ImageSpec` (spec.py). Planning 100k images takes well under a second: the
fields a job's images share are checked and hashed once (`_Settings`, `_SpecMaker`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any, Iterable, Mapping, Sequence

from sweeper.planning import image_files, lora_files, schedulers, validate, weighting
from sweeper.storing.bounds import loads_json
from sweeper.errors import PlanError, invalid, show
from sweeper.planning.prompts import prompt_rows
from sweeper.planning.spec import (
    CROP_KEYS, EXECUTION_FIELDS, SHARED_ID_FIELDS, SIZE_KEYS, ImageSpec, canonical_json, public_model_name,
    row_hash, row_id_values, seeded_id, shared_hash,
)
from sweeper.planning.templates import MAX_PROMPT_CHARS
from sweeper.rendering import families


@dataclass(frozen=True)
class Job:
    """One Hydra job: its number, its resolved config (no `hydra` node) and its overrides."""

    num: int
    config: Mapping[str, Any]
    overrides: tuple[str, ...] = ()


class _SpecMaker:
    """Specs that differ from a template only in per-image fields and labels.

    The fast path of planning: a full id hashes every id field; here an id
    hashes only the seed on top of what its job and its row share, and the
    spec is built from the merged values (ImageSpec.hashed). Equal to
    `dataclasses.replace` (tested).
    """

    def __init__(self, template: ImageSpec) -> None:
        self._shared = shared_hash(template)
        self._values = template.to_dict()
        self.family, self.model = template.family, template.model
        self.files = model_files(template)
        self._with_tags: dict[tuple, _SpecMaker] = {}

    def with_tags(self, c: Mapping[str, Any], tags: Sequence[Any]) -> _SpecMaker:
        """The maker of images whose prompts add `<lora:name:weight>` adapters to the job's own."""
        key = tuple(tags)
        if key not in self._with_tags:
            own = c.get("lora") or []
            own = [own] if isinstance(own, str) else list(own)
            weights = [*(lora_files.scales(c.get("lora_scale", 1.0), len(own)) if own else ()), *(tag.weight for tag in tags)]
            width = lora_files.model_text_width(self.files)
            found = lora_files.loras({"lora": [*own, *(tag.name for tag in tags)], "lora_scale": weights}, width, f"model={self.model}")
            self._with_tags[key] = _SpecMaker(ImageSpec(**{**self._values, **found}))
        return self._with_tags[key]

    def row(self, seeds: Sequence[int], **changes: Any) -> list[ImageSpec]:
        """One spec per seed, each with `changes` (the row's prompts, init image, labels)."""
        values = {**self._values, **changes}
        row = row_hash(self._shared, row_id_values(values))
        return [ImageSpec.hashed({**values, "seed": seed}, seeded_id(row, seed)) for seed in seeds]


def plan(jobs: Sequence[Job], auto_device: str = "cpu", seed_nonce: int = 0, random_nonce: int | None = None) -> list[ImageSpec]:
    """Plan every job; an image asked for twice is planned once (first wins).

    `auto_device` is what `device: auto` means on this machine (see devices.py).
    `seed_nonce` is drawn once per sweep: seeds of -1 are derived from it, so
    planning twice (or on every rank) gives the same random seeds. `seed=random:N`
    draws from `random_nonce` (the sweep dir's; `seed_nonce` if None).
    """
    specs: dict[str, ImageSpec] = {}
    asked = 0
    firsts = []
    settings = _Settings()
    for job in jobs:
        job_specs = plan_job(
            job, auto_device, seed_nonce, budget=validate.max_images(job.config) - asked, settings=settings, random_nonce=random_nonce,
        )
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
                raise invalid(
                    name, value, f"another job of the sweep has {show(seen[name])}; speed and memory options do not "
                    "change the images (not part of image_id), so one sweep has one value: compare them in separate sweeps",
                )


def plan_job(
    job: Job, auto_device: str = "cpu", seed_nonce: int = 0, budget: int | None = None, settings: _Settings | None = None,
    random_nonce: int | None = None,
) -> list[ImageSpec]:
    """The job's images: prompts x init images x seeds. More than `budget` is refused (max_images).

    `settings` carries what earlier jobs of the sweep planned: a job that differs
    from one of them only in its seeds or prompts reuses that job's checked settings.
    """
    c = job.config
    settings = settings or _Settings()
    rows, prompt_file = prompt_rows(c, limit=budget if budget is not None else validate.max_images(c))
    # A list of negative prompts zips with the prompts as written, before templates expand.
    texts = {key: validate.per_prompt(c, key, rows[-1].source + 1) for key in validate.PER_PROMPT_KEYS}
    labels = {"job_num": job.num, "overrides": " ".join(job.overrides)}
    specs: list[ImageSpec] = []
    for row in rows:
        rc = {**c, **row.params} if row.params else c

        def checked() -> tuple[_SpecMaker, list[dict], bool]:
            validate.check_keys(c)
            template = _template(rc, job, prompt_file, auto_device)
            roots = image_files.csv_paths(c, rc, row.params, prompt_file)
            return _SpecMaker(template), image_files.init_images(rc, template.mode, roots), families.uses_cfg(template)

        maker, inits, cfg = settings.get(c, row.params, checked)
        # Every job draws the same random seeds for -1 (by position), so a `guidance=3,5,7
        # seed=-1` sweep compares guidance on one seed, as A1111's X/Y plot does.
        seeds = validate.seeds(rc, str(seed_nonce), None if random_nonce is None else str(random_nonce))
        if budget is not None and len(specs) + len(inits) * len(seeds) > budget:
            limit = validate.max_images(c)
            raise invalid("max_images", limit, f"the sweep asks for more than {limit} images; raise max_images to render them all")
        prompt = {name: row.params.get(name, texts[name][row.source]) for name in validate.PER_PROMPT_KEYS}
        family = families.get(maker.family)
        for key, value in prompt.items():  # per row: jobs that differ only in prompts share their checked settings
            if value is not None and key not in family.keys:
                families.check_keys(family, {key: value}, maker.model)
        if not cfg:  # guidance <= 1: diffusers never reads a negative prompt; null, so one picture has one id
            prompt.update(negative_prompt=None, negative_prompt_2=None, negative_prompt_3=None)
        elif prompt["negative_prompt"] is None:
            prompt["negative_prompt"] = family.cfg_negative_prompt
        said = {"prompt": row.prompt, **prompt}
        syntax = weighting.row_syntax(weighting.syntax(rc), family, said, maker.files)
        tags = weighting.adapters(said, rc.get("lora_dir")) if syntax else []
        row_maker = maker.with_tags(rc, tags) if tags else maker
        for init in inits:
            specs.extend(row_maker.row(seeds, prompt=row.prompt, prompt_template=row.template, prompt_syntax=syntax, **prompt, **init, **labels))
    return specs


# Keys that a job's images differ in without their settings changing (planned per job).
# Not the negative prompts: a family refuses one where it does nothing, which its check of the settings sees.
_PER_JOB_KEYS = frozenset({"seed", "prompt", "prompt_2", "prompt_3", "dry_run", "name"})


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
        key = (tuple((name, id(value)) for name, value in values), canonical_json(params) if params else "")
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = (values, make())
        return known[1]


def _template(c: Mapping[str, Any], job: Job, prompt_file: str | None, auto_device: str) -> ImageSpec:
    """A job's settings as a spec, with placeholders for the per-image fields."""
    model = c.get("model")
    if _overridden(job, "model.id") and not _overridden(job, "model.family") and isinstance(model, Mapping) and isinstance(model.get("id"), str):
        # another model than the preset's: its own model_index.json names its family, where it is on this machine
        model = {**model, "family": families.detected(model["id"], model.get("revision")) or model.get("family")}
    model = validate.model(model)
    if _overridden(job, "model.id") and not _overridden(job, "model.name"):
        model["name"] = public_model_name(model["id"])  # not the name of the config group it came from
    family = families.get(model["family"])
    families.check_keys(family, c, model["name"])
    refiner = validate.refiner(c.get("refiner"), family.name)
    scheduler = schedulers.checked(c.get("scheduler"), family)
    sizes = {key: validate.pair(c, key, minimum=1) for key in SIZE_KEYS}
    sizes.update({key: validate.pair(c, key, minimum=0) for key in CROP_KEYS})
    own = validate.family_values(c)
    given = ("guidance", "negative_prompt", "negative_prompt_2", "mode", "steps", "width", "height", "fuse_qkv")
    family.check(own, {**model, **{key: c.get(key) for key in given}, "scheduler": scheduler})
    device, gpu = validate.device(c.get("device", "auto"), auto_device)
    mode = validate.choice(c, "mode", validate.MODES)
    if mode not in family.pipelines:
        raise invalid("mode", mode, f"model={model['name']} is {family.title} ({family.name}), which diffusers has no {mode} pipeline for; its modes: {', '.join(family.pipelines)}")
    if mode != "txt2img" and refiner["id"] is not None:
        raise PlanError(f"invalid refiner={refiner['name']}: works with mode=txt2img only; use refiner=none with mode={mode}")
    steps = validate.steps(c)
    strength = None if mode == "txt2img" else validate.strength(c, steps)
    validate.check_split(refiner, steps, scheduler["kwargs"])
    width, height = validate.size(c, "width"), validate.size(c, "height")
    for key, value in (("width", width), ("height", height)):
        if value % family.size_multiple:  # its pipeline would floor it silently: another size than the manifest's
            raise invalid(key, value, f"{family.title} takes multiples of {family.size_multiple}")
    guidance = validate.guidance(c)
    if guidance <= 1:  # no classifier-free guidance: diffusers uses no negative conditioning
        sizes.update(negative_original_size=None, negative_target_size=None, negative_crops_coords_top_left=None)
    attention = validate.choice(c, "attention", validate.ATTENTION, default="sdpa")
    if attention == "eager" and not family.eager_attention:
        raise invalid("attention", attention, f"diffusers' plain attention processor is for UNets; {family.title} models run sdpa")
    fuse_qkv = validate.flag(c, "fuse_qkv")
    compiled, offload = validate.compile_mode(c), validate.offload(c, device)
    if compiled is not None and offload != "none":
        # offload hooks move the UNet's weights between calls; a compiled graph assumes they stay put
        raise invalid("compile", c.get("compile"), f"torch.compile and offload={offload} do not mix; use one or the other")
    if fuse_qkv and attention == "eager":
        # diffusers' fused projections come with its SDPA processor only: eager would be replaced silently.
        raise invalid("fuse_qkv", fuse_qkv, "fused Q/K/V projections run through torch's SDPA; not with attention=eager")
    adapters = lora_files.loras(c, lora_files.model_text_width(model) if c.get("lora") else None, f"model={model['name']}")
    if fuse_qkv and adapters["lora"]:  # the fused projection would bypass the adapters on to_q, to_k, to_v
        raise invalid("fuse_qkv", fuse_qkv, "LoRA adapters act on the separate Q/K/V projections; not with lora")
    return ImageSpec(
        model_id=model["id"],
        model_revision=model["revision"],
        family=family.name,
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
        prompt_3=None,
        negative_prompt_3=None,
        prompt_syntax=None,
        seed=0,
        guidance=guidance,
        steps=steps,
        width=width,
        height=height,
        dtype=validate.dtype(c.get("dtype", "auto"), device),
        device=device,
        watermark=validate.watermark(c),
        safety_checker=validate.safety_checker(c, model),
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
        batch_size=validate.batch_size(c),
        attention=attention,
        channels_last=validate.flag(c, "channels_last"),
        fuse_qkv=fuse_qkv,
        compile=compiled,
        vae_upcast=validate.vae_upcast(c),
        offload=offload,
        vae_slicing=validate.flag(c, "vae_slicing"),
        vae_tiling=validate.flag(c, "vae_tiling"),
        gpu=gpu,
        **adapters,
        **_conditioning(sizes, mode, width, height),
        **own,
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
    for name in (*SHARED_ID_FIELDS, *EXECUTION_FIELDS):
        if getattr(template, name) != getattr(spec, name):
            raise invalid(name, getattr(spec, name), f"not what planning makes of the recorded settings ({show(getattr(template, name))})")
    specs = []
    for image in call:
        row = {name: image.get(name) for name in ("prompt", *validate.PER_PROMPT_KEYS)}
        if not isinstance(row["prompt"], str) or not all(v is None or isinstance(v, str) for v in row.values()):
            raise invalid("prompt", row["prompt"], "recorded prompts must be strings")
        if max(len(v or "") for v in row.values()) > MAX_PROMPT_CHARS:
            raise invalid("prompt", row["prompt"][:80], f"a recorded prompt is over {MAX_PROMPT_CHARS} characters")
        seed = image.get("seed")
        if not validate.is_int(seed) or not 0 <= seed < validate.SEED_LIMIT:
            raise invalid("seed", seed, f"must be an integer 0 .. {validate.SEED_LIMIT - 1}")
        images = image_files.init_images({**c, "init_image": image.get("init_image"), "mask_image": image.get("mask_image")}, template.mode)[0]
        for name in ("init_image_sha", "mask_image_sha"):
            if images[name] != image.get(name):
                raise invalid(name[:-4], images[name[:-4]], f"its content is not the recorded image's ({images[name]} != {show(image.get(name))})")
        template_text = image.get("prompt_template")
        chosen = image.get("prompt_syntax") if image.get("prompt_syntax") in weighting.SYNTAXES else "plain"
        syntax = weighting.row_syntax(chosen, families.get(template.family), row, model_files(template))
        if syntax != image.get("prompt_syntax"):
            raise invalid("prompt_syntax", image.get("prompt_syntax"), f"not what planning makes of the recorded prompt ({show(syntax)})")
        specs.append(replace(template, **row, **images, seed=seed, prompt_syntax=syntax, prompt_template=template_text if isinstance(template_text, str) else None))
    return specs


def config_of(spec: ImageSpec) -> dict[str, Any]:
    """The job config that plans `spec`'s shared settings (the inverse of `_template`)."""
    refiner = {"name": "none"}
    if spec.refiner_id is not None:
        refiner = {"name": spec.refiner, "id": spec.refiner_id, "revision": spec.refiner_revision, "split": spec.refiner_split, "mode": spec.refiner_mode}
    try:
        kwargs = loads_json(spec.scheduler_kwargs)
    except (TypeError, ValueError):
        raise invalid("scheduler_kwargs", spec.scheduler_kwargs, "must be a JSON object of scheduler config values") from None
    copied = ("guidance", "steps", "width", "height", *SIZE_KEYS, *CROP_KEYS, "mode", "strength", "watermark", "safety_checker",
              "dtype", "device", "attention", "channels_last", "fuse_qkv", "offload", "vae_slicing", "vae_tiling",
              "true_cfg", "guidance_rescale", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "clip_skip", "slg_scale", "slg_start", "slg_stop")
    return {
        "model": {"name": spec.model, "id": spec.model_id, "revision": spec.model_revision, "family": spec.family, "config": spec.model_config},
        "refiner": refiner,
        "scheduler": {"name": spec.scheduler, "class_name": spec.scheduler_class, "kwargs": kwargs, "label": spec.scheduler_label},
        **{name: getattr(spec, name) for name in copied},
        "batch_size": "auto" if spec.batch_size is None else spec.batch_size,
        "compile": False if spec.compile is None else spec.compile,
        "vae_upcast": "auto" if spec.vae_upcast is None else spec.vae_upcast,
        "lora": None if spec.lora is None else list(spec.lora),
        "slg_layers": None if spec.slg_layers is None else list(spec.slg_layers),
        "lora_scale": 1.0 if spec.lora_scale is None else list(spec.lora_scale),
    }


def model_files(spec: ImageSpec) -> dict[str, Any]:
    """What prompt_syntax's checks read of a spec's model: where its tokenizer is, its refiner, its clip skip."""
    return {"id": spec.model_id, "revision": spec.model_revision, "config": spec.model_config, "refiner": spec.refiner_id, "clip_skip": spec.clip_skip}


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
        raise invalid("negative_crops_coords_top_left", list(sizes["negative_crops_coords_top_left"]), f"diffusers' SDXL {mode} pipeline ignores it; leave it null")
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
