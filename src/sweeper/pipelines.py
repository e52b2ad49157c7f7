"""Pipelines: each model loaded once per process, then reused.

One cache per process keyed by (model id, revision, dtype, device). The
refiner reuses the base's `text_encoder_2` and `vae` objects. Schedulers are
swapped with `from_config` on the pipeline's original scheduler config (so
one scheduler's kwargs never leak into the next), never by reloading.
Tiny model names resolve to the locally built dirs (tiny.py) and load through
the same `from_pretrained` as real ids.
"""

from __future__ import annotations

import gc
import json
from typing import Any

import diffusers
import torch
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from sweeper.plan import ImageSpec
from sweeper.tiny import TINY_MODELS, tiny_model_dir

diffusers_logging.disable_progress_bar()
diffusers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()

_PIPELINES: dict[tuple, Any] = {}
_ORIGINAL_SCHEDULER_CONFIG: dict[int, Any] = {}
BASE_CLASSES = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd15": diffusers.StableDiffusionPipeline}


def loaded_models() -> list[tuple]:
    """Keys of the pipelines this process has loaded (for tests and logs)."""
    return list(_PIPELINES)


def source(model_id: str, revision: str | None) -> dict[str, Any]:
    """What `from_pretrained` gets: a tiny model's built dir, or the id and revision as given."""
    if model_id in TINY_MODELS:
        return {"pretrained_model_name_or_path": str(tiny_model_dir(model_id))}
    return {"pretrained_model_name_or_path": model_id, "revision": revision}


def base_pipeline(spec: ImageSpec, device: str):
    key = (spec.model_id, spec.model_revision, spec.dtype, device)
    if key not in _PIPELINES:
        pipeline_class = BASE_CLASSES[spec.family]
        pipe = pipeline_class.from_pretrained(**source(spec.model_id, spec.model_revision), dtype=getattr(torch, spec.dtype))
        _PIPELINES[key] = _ready(pipe, device)
    return _PIPELINES[key]


def refiner_pipeline(spec: ImageSpec, base, device: str):
    key = (spec.refiner_id, spec.refiner_revision, spec.dtype, device, "refiner-of", spec.model_id, spec.model_revision)
    if key not in _PIPELINES:
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
            **source(spec.refiner_id, spec.refiner_revision),
            dtype=getattr(torch, spec.dtype),
            text_encoder_2=base.text_encoder_2,
            vae=base.vae,
        )
        _PIPELINES[key] = _ready(pipe, device)
    return _PIPELINES[key]


def _ready(pipe, device: str):
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    _ORIGINAL_SCHEDULER_CONFIG[id(pipe)] = pipe.scheduler.config
    return pipe


def set_scheduler(pipe, spec: ImageSpec, noise_seeds: list[int]) -> None:
    """Give `pipe` a fresh scheduler of the spec's class, built from the model's own config."""
    scheduler_class = getattr(diffusers, spec.scheduler_class)
    kwargs = json.loads(spec.scheduler_kwargs)
    scheduler = scheduler_class.from_config(_ORIGINAL_SCHEDULER_CONFIG[id(pipe)], **kwargs)
    if hasattr(scheduler, "noise_sampler_seed"):
        # SDE schedulers draw Brownian noise from their own seed: one per image
        # keeps it independent of the batch, like the per-image generators.
        scheduler.noise_sampler_seed = list(noise_seeds)
    pipe.scheduler = scheduler


def check_scheduler_classes(specs: list[ImageSpec]) -> None:
    """Refuse a scheduler config naming no diffusers scheduler, before any model loads."""
    from sweeper.plan import PlanError

    for class_name in sorted({spec.scheduler_class for spec in specs}):
        scheduler_class = getattr(diffusers, class_name, None)
        if not (isinstance(scheduler_class, type) and issubclass(scheduler_class, diffusers.SchedulerMixin)):
            raise PlanError(f"invalid scheduler.class_name={class_name!r}: not a diffusers scheduler class")


def release_memory(device: str) -> None:
    """Give back what a failed call left allocated, before a smaller retry."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
