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
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from sweeper.planning import embedding_files, hires, image_files, lora_files, schedulers, validate, vae_files, variation_seeds, weighting
from sweeper.errors import PlanError, invalid, show
from sweeper.planning.prompts import prompt_rows
from sweeper.planning.spec import (
    CROP_KEYS, EXECUTION_FIELDS, SIZE_KEYS, ImageSpec, canonical_json, public_model_name,
    row_hash, row_id_values, seeded_id, shared_hash,
)
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
        self.subseed_strength = template.subseed_strength
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
            template = job_template(rc, job, prompt_file, auto_device)
            roots = image_files.csv_paths(c, rc, row.params, prompt_file)
            return _SpecMaker(template), image_files.init_images(rc, template.mode, roots), families.uses_cfg(template)

        maker, inits, cfg = settings.get(c, row.params, checked)
        # Every job draws the same random seeds for -1 (by position), so a `guidance=3,5,7
        # seed=-1` sweep compares guidance on one seed, as A1111's X/Y plot does.
        seeds = validate.seeds(rc, str(seed_nonce), None if random_nonce is None else str(random_nonce))
        subseed = variation_seeds.checked(rc, maker.subseed_strength)  # per job: a subseed sweep shares its settings and batches
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
            specs.extend(row_maker.row(seeds, prompt=row.prompt, prompt_template=row.template, prompt_syntax=syntax, subseed=subseed, **prompt, **init, **labels))
    return specs


# Keys that a job's images differ in without their settings changing (planned per job).
# Not the negative prompts: a family refuses one where it does nothing, which its check of the settings sees.
_PER_JOB_KEYS = frozenset({"seed", "subseed", "prompt", "prompt_2", "prompt_3", "dry_run", "name", "score", "scorer"})


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


def job_template(c: Mapping[str, Any], job: Job, prompt_file: str | None, auto_device: str) -> ImageSpec:
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
    given = ("guidance", "negative_prompt", "negative_prompt_2", "mode", "steps", "width", "height", "fuse_qkv", "hires")
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
    second = hires.checked(c, mode, refiner, steps, width, height, family.size_multiple, validate.max_size(c), validate.max_steps(c))
    if second["hires_scale"] is not None and sizes["negative_crops_coords_top_left"] is not None:
        raise invalid("negative_crops_coords_top_left", list(sizes["negative_crops_coords_top_left"]),
                      "diffusers' SDXL img2img pipeline, which runs the hires fix's second pass, ignores it; leave it null")
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
    parts = _vae_and_embeddings(c, family, model, refiner, offload)
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
        subseed=None,
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
        **parts,
        **_conditioning(sizes, mode, width, height),
        **own,
        **second,
    )


def _vae_and_embeddings(c: Mapping[str, Any], family: Any, model: Mapping[str, Any], refiner: Mapping[str, Any], offload: str) -> dict[str, Any]:
    """The spec fields of `vae` and `embeddings` (families.check_keys refused them where the family takes none)."""
    name = f"model={model['name']}"
    found = dict.fromkeys(("vae", "vae_sha", "embeddings", "embedding_tokens", "embeddings_sha"))
    if c.get("vae") is not None:
        if offload != "none":  # the offload hooks sit on the model's own VAE
            raise invalid("vae", c.get("vae"), f"not with offload={offload}; use offload=none")
        found.update(vae_files.vae(c, family.latent_channels, name))
    if c.get("embeddings") in (None, []):
        return found
    if refiner["id"] is not None:  # the refiner's own tokenizer would read the tokens as plain words
        raise invalid("embeddings", c.get("embeddings"), "textual inversion works with refiner=none only")
    if offload != "none":  # diffusers' loading removes the offload hooks and installs its own
        raise invalid("embeddings", c.get("embeddings"), f"not with offload={offload}; use offload=none")
    keys = tuple(key for key, _, _ in family.embedding_encoders)
    return {**found, **embedding_files.embeddings(c, keys, family.encoder_widths(model))}


def model_files(spec: ImageSpec) -> dict[str, Any]:
    """What prompt_syntax's checks read of a spec's model: where its tokenizer is, its refiner, its clip skip,
    its hires fix (prompt editing switches in one denoising loop)."""
    return {"id": spec.model_id, "revision": spec.model_revision, "config": spec.model_config, "refiner": spec.refiner_id, "clip_skip": spec.clip_skip,
            "hires": spec.hires_scale}


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
