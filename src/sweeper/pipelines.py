"""Pipelines: each model loaded once per process, then reused.

One cache per process keyed by (model id, revision, dtype, device, options).
img2img and inpaint pipelines are made from the loaded base with `from_pipe`
(the same modules, no reload); the refiner reuses the base's `text_encoder_2`
and `vae` objects. Schedulers are swapped with `from_config` on the
pipeline's original scheduler config (so one scheduler's kwargs never leak
into the next), never by reloading. Tiny model names resolve to the locally
built dirs (tiny.py) and load through the same `from_pretrained` as real ids;
a `.safetensors`/`.ckpt` file loads with `from_single_file`.
"""

from __future__ import annotations

import gc
import inspect
import json
from typing import Any

import diffusers
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from sweeper.plan import EXECUTION_FIELDS, SINGLE_FILE_SUFFIXES, ImageSpec
from sweeper.tiny import TINY_MODELS, tiny_model_dir

diffusers_logging.disable_progress_bar()
diffusers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_PIPELINES: dict[tuple, Any] = {}
_ORIGINAL_SCHEDULER_CONFIG: dict[int, Any] = {}
BASE_CLASSES = {"sdxl": diffusers.StableDiffusionXLPipeline, "sd15": diffusers.StableDiffusionPipeline}
MODE_CLASSES = {
    ("sdxl", "img2img"): diffusers.StableDiffusionXLImg2ImgPipeline,
    ("sdxl", "inpaint"): diffusers.StableDiffusionXLInpaintPipeline,
    ("sd15", "img2img"): diffusers.StableDiffusionImg2ImgPipeline,
    ("sd15", "inpaint"): diffusers.StableDiffusionInpaintPipeline,
}


def loaded_models() -> list[tuple]:
    """Keys of the pipelines this process has loaded (for tests and logs)."""
    return list(_PIPELINES)


def source(model_id: str, revision: str | None) -> dict[str, Any]:
    """What `from_pretrained` gets: a tiny model's built dir, or the id and revision as given."""
    if model_id in TINY_MODELS:
        return {"pretrained_model_name_or_path": str(tiny_model_dir(model_id))}
    return {"pretrained_model_name_or_path": model_id, "revision": revision}


def _options(spec: ImageSpec) -> tuple:
    """Everything besides the model that changes how a pipeline is built."""
    return (spec.watermark, spec.safety_checker, *(getattr(spec, name) for name in EXECUTION_FIELDS if name != "batch_size"))


def base_pipeline(spec: ImageSpec, device: str):
    """The model's pipeline for the spec's mode (txt2img, img2img, inpaint)."""
    key = (spec.model_id, spec.model_revision, spec.dtype, device, _options(spec))
    if key not in _PIPELINES:
        pipeline_class = BASE_CLASSES[spec.family]
        extra: dict[str, Any] = {"dtype": TORCH_DTYPES[spec.dtype]}
        if spec.family == "sdxl":
            extra["add_watermarker"] = spec.watermark
        elif not spec.safety_checker:
            extra.update(safety_checker=None, requires_safety_checker=False)
        if spec.model_id.endswith(SINGLE_FILE_SUFFIXES):
            config = source(spec.model_config, None)["pretrained_model_name_or_path"] if spec.model_config else None
            if spec.family == "sd15" and spec.safety_checker:  # not in the file: from_single_file loads none
                extra["safety_checker"] = StableDiffusionSafetyChecker.from_pretrained(config, subfolder="safety_checker", dtype=extra["dtype"])
            pipe = pipeline_class.from_single_file(spec.model_id, config=config, **extra)
            _check_loaded(pipe, spec.model_id)
        else:
            pipe = pipeline_class.from_pretrained(**source(spec.model_id, spec.model_revision), **extra)
        _PIPELINES[key] = _ready(pipe, spec, device)
    if spec.mode == "txt2img":
        return _PIPELINES[key]
    mode_key = (*key, spec.mode)
    if mode_key not in _PIPELINES:
        base = _PIPELINES[key]
        extra = {"add_watermarker": spec.watermark} if spec.family == "sdxl" else {}
        pipe = MODE_CLASSES[(spec.family, spec.mode)].from_pipe(base, **extra)
        pipe.set_progress_bar_config(disable=True)  # from_pipe does not carry it over
        _ORIGINAL_SCHEDULER_CONFIG[id(pipe)] = _ORIGINAL_SCHEDULER_CONFIG[id(base)]
        if spec.offload != "none":  # from_pipe does not carry offload hooks over
            _offload(pipe, spec, device)
        _PIPELINES[mode_key] = pipe
    return _PIPELINES[mode_key]


def _check_loaded(pipe, path: str) -> None:
    """from_single_file leaves weights it found no value for on the meta device, silently."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and any(p.is_meta for p in component.parameters()):
            raise RuntimeError(f"{path}: the checkpoint holds no weights for the pipeline's {name} (does model.config match it?)")


def refiner_pipeline(spec: ImageSpec, base, device: str):
    key = (spec.refiner_id, spec.refiner_revision, spec.dtype, device, _options(spec), "refiner-of", spec.model_id, spec.model_revision)
    if key not in _PIPELINES:
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
            **source(spec.refiner_id, spec.refiner_revision),
            dtype=TORCH_DTYPES[spec.dtype],
            text_encoder_2=base.text_encoder_2,
            vae=base.vae,
            add_watermarker=spec.watermark,
        )
        _PIPELINES[key] = _ready(pipe, spec, device)
    return _PIPELINES[key]


def _ready(pipe, spec: ImageSpec, device: str):
    """Move to the device (or set up offload) and apply the spec's speed and memory options."""
    if spec.offload == "none":
        pipe.to(device)
    else:
        _offload(pipe, spec, device)
    pipe.set_progress_bar_config(disable=True)
    _ORIGINAL_SCHEDULER_CONFIG[id(pipe)] = pipe.scheduler.config
    if spec.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        pipe.unet.set_attn_processor(AttnProcessor())
        pipe.vae.set_attn_processor(AttnProcessor())
    if spec.fuse_qkv:
        pipe.fuse_qkv_projections()
    if spec.channels_last:
        pipe.unet.to(memory_format=torch.channels_last)
        pipe.vae.to(memory_format=torch.channels_last)
    if spec.vae_upcast is not None:
        pipe.vae.register_to_config(force_upcast=spec.vae_upcast)
    if spec.vae_slicing:
        pipe.vae.enable_slicing()
    if spec.vae_tiling:
        pipe.vae.enable_tiling()
    if spec.compile is not None:
        pipe.unet.compile(mode=spec.compile)
    return pipe


def _offload(pipe, spec: ImageSpec, device: str) -> None:
    if spec.offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    else:
        pipe.enable_sequential_cpu_offload(device=device)


def set_scheduler(pipe, spec: ImageSpec, noise_seeds: list[int]) -> None:
    """Give `pipe` a fresh scheduler of the spec's class, built from the model's own config."""
    kwargs = json.loads(spec.scheduler_kwargs)
    scheduler = scheduler_class(spec.scheduler_class, kwargs).from_config(_ORIGINAL_SCHEDULER_CONFIG[id(pipe)], **kwargs)
    if hasattr(scheduler, "noise_sampler_seed"):
        # SDE schedulers draw Brownian noise from their own seed: one per image
        # keeps it independent of the batch, like the per-image generators.
        scheduler.noise_sampler_seed = list(noise_seeds)
    pipe.scheduler = scheduler


def check_scheduler_classes(specs: list[ImageSpec]) -> None:
    """Refuse a scheduler config naming no diffusers scheduler, or kwargs its config lacks, before any model loads."""
    for class_name, kwargs in sorted({(spec.scheduler_class, spec.scheduler_kwargs) for spec in specs}):
        scheduler_class(class_name, json.loads(kwargs))


def scheduler_class(class_name: str, kwargs: dict[str, Any]) -> type:
    """diffusers' scheduler class of that name, if `kwargs` are values of its config; PlanError otherwise.

    Only diffusers' own scheduler classes: a name that reached `from_config` of
    anything else (an Auto* loader) could load and run code named in a config.
    """
    from sweeper.plan import PlanError

    found = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    is_scheduler = isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin) and found is not diffusers.SchedulerMixin
    if not (is_scheduler and found.__module__.startswith("diffusers.schedulers.")):
        raise PlanError(f"invalid scheduler.class_name={class_name!r}: not a diffusers scheduler class")
    allowed = [name for name in inspect.signature(found.__init__).parameters if name not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise PlanError(f"invalid scheduler.kwargs: {unknown[0]!r} is not a config value of {class_name}; allowed: {', '.join(allowed)}")
    return found


def release_memory(device: str) -> None:
    """Give back what a failed call left allocated, before a smaller retry."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
