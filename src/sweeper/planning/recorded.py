"""Replay's planning: the specs of a recorded pipeline call (a PNG's), planned again as a config would be."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping, Sequence

from sweeper.errors import invalid, show
from sweeper.planning import hires, image_files, validate, variation_seeds, weighting
from sweeper.planning.plan import Job, job_template, model_files
from sweeper.planning.spec import CROP_KEYS, EXECUTION_FIELDS, SHARED_ID_FIELDS, SIZE_KEYS, ImageSpec
from sweeper.planning.templates import MAX_PROMPT_CHARS
from sweeper.rendering import families
from sweeper.storing.bounds import loads_json


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
    template = job_template(c, Job(spec.job_num, c), spec.prompt_file, auto_device)
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
        subseed = variation_seeds.checked({"subseed": image.get("subseed"), "subseed_strength": template.subseed_strength}, template.subseed_strength)
        template_text = image.get("prompt_template")
        chosen = image.get("prompt_syntax") if image.get("prompt_syntax") in weighting.SYNTAXES else "plain"
        syntax = weighting.row_syntax(chosen, families.get(template.family), row, model_files(template))
        if syntax != image.get("prompt_syntax"):
            raise invalid("prompt_syntax", image.get("prompt_syntax"), f"not what planning makes of the recorded prompt ({show(syntax)})")
        specs.append(replace(template, **row, **images, seed=seed, subseed=subseed, prompt_syntax=syntax, prompt_template=template_text if isinstance(template_text, str) else None))
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
              "true_cfg", "guidance_rescale", "subseed_strength", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "clip_skip", "slg_scale", "slg_start", "slg_stop")
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
        "hires": hires.config(spec),
        "vae": spec.vae,
        "embeddings": None if spec.embeddings is None else [f"{token}:{path}" for token, path in zip(spec.embedding_tokens, spec.embeddings)],
    }
