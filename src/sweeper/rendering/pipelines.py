"""Pipelines: each model loaded once per runtime (runtime.py), then reused.

Resident pipelines are keyed by (model id, revision, dtype, device, options).
img2img and inpaint pipelines are made from the loaded base with `from_pipe`
(the same modules, no reload); the refiner reuses the base's `text_encoder_2`
and `vae` objects. Schedulers are swapped with `from_config` on the
pipeline's original scheduler config (so one scheduler's kwargs never leak
into the next), never by reloading. Tiny model names resolve to the locally
built dirs (tiny.py) and load through the same `from_pretrained` as real ids;
a `.safetensors`/`.ckpt` file loads with `from_single_file`.
"""

from __future__ import annotations

import copy
import inspect
import json
from typing import Any

import diffusers
import torch
from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from sweeper.planning.spec import EXECUTION_FIELDS, SINGLE_FILE_SUFFIXES, ImageSpec
from sweeper.rendering import families
from sweeper.rendering.runtime import Runtime, release_memory
from sweeper.rendering.tiny import tiny_model_dir, tiny_models

diffusers_logging.disable_progress_bar()
diffusers_logging.set_verbosity_error()
transformers_logging.disable_progress_bar()
transformers_logging.set_verbosity_error()

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def source(model_id: str, revision: str | None) -> dict[str, Any]:
    """What `from_pretrained` gets: a tiny model's built dir, or the id and revision as given."""
    if model_id in tiny_models():
        return {"pretrained_model_name_or_path": str(tiny_model_dir(model_id))}
    return {"pretrained_model_name_or_path": model_id, "revision": revision}


def _options(spec: ImageSpec) -> tuple:
    """Everything besides the model that changes how a pipeline is built."""
    return (spec.watermark, spec.safety_checker, *(getattr(spec, name) for name in EXECUTION_FIELDS if name != "batch_size"))


def base_key(spec: ImageSpec, device: str) -> tuple:
    return (spec.model_id, spec.model_revision, spec.dtype, device, _options(spec))


def base_pipeline(runtime: Runtime, spec: ImageSpec, device: str) -> Any:
    """The model's pipeline for the spec's mode (txt2img, img2img, inpaint); loading a
    model frees the one loaded before (one base resident per runtime)."""
    key = base_key(spec, device)
    base = runtime.pipeline(("base", key))
    if base is None:
        runtime.evict(lambda resident: resident[1] != key)
        pipe = _load_base(spec)
        scheduler_config = pipe.scheduler.config
        base = runtime.add(("base", key), _ready(pipe, spec, device), scheduler_config)
        runtime.loads.append(key)
    return base if spec.mode == "txt2img" else mode_pipeline(runtime, spec, base, spec.mode, device)


def mode_pipeline(runtime: Runtime, spec: ImageSpec, base: Any, mode: str, device: str) -> Any:
    """The resident base's pipeline for `mode` (img2img, inpaint), made once with from_pipe: the
    same modules. img2img also runs the hires fix's second pass."""
    key = base_key(spec, device)
    pipe = runtime.pipeline(("mode", key, mode))
    if pipe is None:
        extra = families.get(spec.family).load_kwargs(spec, from_pipe=True)
        # from_pipe converts the shared modules to its dtype, float32 unless told
        pipe = getattr(diffusers, families.get(spec.family).pipelines[mode]).from_pipe(base, dtype=TORCH_DTYPES[spec.dtype], **extra)
        pipe.set_progress_bar_config(disable=True)  # from_pipe does not carry it over
        runtime.add(("mode", key, mode), pipe, runtime.resident(base).scheduler_config)
    return pipe


def _load_base(spec: ImageSpec):
    base_class = getattr(diffusers, families.get(spec.family).pipelines["txt2img"])
    extra: dict[str, Any] = {"dtype": TORCH_DTYPES[spec.dtype], **families.get(spec.family).load_kwargs(spec, from_pipe=False)}
    if not spec.model_id.endswith(SINGLE_FILE_SUFFIXES):
        return base_class.from_pretrained(**source(spec.model_id, spec.model_revision), **extra)
    config = source(spec.model_config, None)["pretrained_model_name_or_path"] if spec.model_config else None
    if spec.safety_checker:  # SD 1.x's, not in the file: from_single_file loads none
        extra["safety_checker"] = StableDiffusionSafetyChecker.from_pretrained(config, subfolder="safety_checker", dtype=extra["dtype"])
    pipe = base_class.from_single_file(spec.model_id, config=config, **extra)
    _check_loaded(pipe, spec.model_id)
    return pipe


def _check_loaded(pipe, path: str) -> None:
    """from_single_file leaves weights it found no value for on the meta device, silently."""
    for name, component in pipe.components.items():
        if isinstance(component, torch.nn.Module) and any(p.is_meta for p in component.parameters()):
            raise RuntimeError(f"{path}: the checkpoint holds no weights for the pipeline's {name} (does model.config match it?)")


def own_vae(runtime: Runtime, key: tuple) -> Any:
    """The base model's own VAE, noted the first time it is asked (before the `vae` key swapped another in: vaes.py)."""
    resident = runtime.residents[("base", key)]
    if resident.own_vae is None:
        resident.own_vae = resident.pipe.vae
    return resident.own_vae


def refiner_pipeline(runtime: Runtime, spec: ImageSpec, base: Any, device: str) -> Any:
    """The refiner for the resident base, sharing its text_encoder_2 and vae; another refiner is freed first."""
    key = ("refiner", base_key(spec, device), (spec.refiner_id, spec.refiner_revision))
    refiner = runtime.pipeline(key)
    if refiner is None:
        runtime.evict(lambda resident: resident[0] == "refiner" and resident != key)
        pipe = diffusers.StableDiffusionXLImg2ImgPipeline.from_pretrained(
            **source(spec.refiner_id, spec.refiner_revision),
            dtype=TORCH_DTYPES[spec.dtype],
            text_encoder_2=base.text_encoder_2,
            vae=own_vae(runtime, base_key(spec, device)),  # the model's own, whichever the base has swapped in (vaes.py)
            add_watermarker=spec.watermark,
        )
        scheduler_config = pipe.scheduler.config
        refiner = runtime.add(key, _ready(pipe, spec, device), scheduler_config)
        runtime.loads.append(key[2])
    return refiner


def _ready(pipe, spec: ImageSpec, device: str):
    """Apply the spec's speed and memory options, then move to the device (or offload), then compile.

    In this order: fusing Q/K/V and channels_last change the modules, which
    offload hooks must then see; torch.compile with offload is refused at planning.
    """
    pipe.set_progress_bar_config(disable=True)
    denoiser = families.get(spec.family).denoiser(pipe)
    if spec.attention == "eager":  # UNet families only (planning refuses it for others)
        from diffusers.models.attention_processor import AttnProcessor

        denoiser.set_attn_processor(AttnProcessor())
    if spec.fuse_qkv:  # the SD pipelines fuse their UNet's and VAE's; where the pipeline cannot (Flux.2 Klein), the denoiser's
        (pipe if hasattr(pipe, "fuse_qkv_projections") else denoiser).fuse_qkv_projections()
    if spec.channels_last:
        denoiser.to(memory_format=torch.channels_last)
    ready_vae(pipe.vae, spec)
    if spec.offload == "none":
        pipe.to(device)
    if spec.compile is not None:
        denoiser.compile(mode=spec.compile)
    return pipe


def ready_vae(vae: Any, spec: ImageSpec) -> None:
    """The spec's VAE options, on the model's own VAE or on one the `vae` key swaps in (vaes.py)."""
    if spec.attention == "eager":
        from diffusers.models.attention_processor import AttnProcessor

        vae.set_attn_processor(AttnProcessor())
    if spec.channels_last:
        vae.to(memory_format=torch.channels_last)
    if spec.vae_upcast is not None:
        vae.register_to_config(force_upcast=spec.vae_upcast)
    elif spec.dtype == "bfloat16":  # the upcast guards float16's range; bfloat16 has float32's (diffusers upcasts anyway)
        vae.register_to_config(force_upcast=False)
    if spec.vae_slicing:
        vae.enable_slicing()
    if spec.vae_tiling:
        vae.enable_tiling()


def activate(runtime: Runtime, pipe: Any, spec: ImageSpec, device: str) -> Any:
    """Before calling `pipe`: with CPU offload, install its hooks if another pipeline
    sharing its modules (img2img from_pipe, the refiner) had them installed."""
    if spec.offload != "none" and runtime.hooked is not pipe:
        if spec.offload == "model":
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.enable_sequential_cpu_offload(device=device)
        runtime.hooked = pipe
    return pipe


def restore(runtime: Runtime, spec: ImageSpec, device: str) -> None:
    """After a failed call: every resident module back in the spec's dtype (and on the
    device), and what the call left allocated freed, so the next call runs as the first did.

    diffusers upcasts SDXL's VAE to float32 for the decode under float16 and turns
    it back only when the decode succeeds: one out-of-memory error there would
    make every later float16 call fail.
    """
    dtype = TORCH_DTYPES[spec.dtype]
    for pipe in runtime.pipes():
        for module in pipe.components.values():
            if not isinstance(module, torch.nn.Module):
                continue
            first = next(module.parameters(), None)
            if first is not None and first.is_floating_point() and first.dtype != dtype:
                module.to(dtype=dtype)
            if spec.offload == "none" and first is not None and first.device != torch.device(device):
                module.to(device=device)
        if spec.offload != "none":
            pipe.maybe_free_model_hooks()
    release_memory(device)


def set_scheduler(runtime: Runtime, pipe: Any, spec: ImageSpec, noise_seeds: list[int]) -> None:
    """Give `pipe` a fresh scheduler of the spec's class, built from the model's own config.

    Fresh for every call (schedulers keep state between calls: multistep
    history, an SDE's noise sampler); copied from one made once, because
    `from_config` inspects signatures on every call (~30 ms).
    """
    resident = runtime.resident(pipe)
    own = families.get(spec.family).scheduler_kwargs(spec)  # the spec's sigmas, shift
    key = (spec.scheduler_class, spec.scheduler_kwargs, json.dumps(own, sort_keys=True))
    if key not in resident.schedulers:
        kwargs = {**json.loads(spec.scheduler_kwargs), **own}
        resident.schedulers[key] = scheduler_class(spec.scheduler_class, kwargs).from_config(resident.scheduler_config, **kwargs)
    scheduler = copy.deepcopy(resident.schedulers[key])
    if hasattr(scheduler, "noise_sampler_seed"):
        # SDE schedulers draw Brownian noise from their own seed: one per image
        # keeps it independent of the batch, like the per-image generators.
        scheduler.noise_sampler_seed = list(noise_seeds)
    pipe.scheduler = scheduler


def check_scheduler_classes(specs: list[ImageSpec]) -> None:
    """Refuse a scheduler config naming no diffusers scheduler, or kwargs its config lacks (with the
    spec's own sigmas and shift), before any model loads."""
    asked = {(spec.scheduler_class, spec.scheduler_kwargs, json.dumps(families.get(spec.family).scheduler_kwargs(spec))) for spec in specs}
    for class_name, kwargs, own in sorted(asked):
        scheduler_class(class_name, {**json.loads(kwargs), **json.loads(own)})


def scheduler_class(class_name: str, kwargs: dict[str, Any]) -> type:
    """diffusers' scheduler class of that name, if `kwargs` are values of its config; PlanError otherwise.

    Only diffusers' own scheduler classes: a name that reached `from_config` of
    anything else (an Auto* loader) could load and run code named in a config.
    """
    from sweeper.errors import PlanError

    found = getattr(diffusers, class_name, None) if class_name.isidentifier() else None
    is_scheduler = isinstance(found, type) and issubclass(found, diffusers.SchedulerMixin) and found is not diffusers.SchedulerMixin
    if not (is_scheduler and found.__module__.startswith("diffusers.schedulers.")):
        raise PlanError(f"invalid scheduler.class_name={class_name!r}: not a diffusers scheduler class")
    allowed = [name for name in inspect.signature(found.__init__).parameters if name not in ("self", "args", "kwargs")]
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise PlanError(f"invalid scheduler.kwargs: {unknown[0]!r} is not a config value of {class_name}; allowed: {', '.join(allowed)}")
    for name, value in kwargs.items():
        problem = _scheduler_value_problem(name, value)
        if problem:
            raise PlanError(f"invalid scheduler.kwargs: {name}={json.dumps(value)[:80]} {problem} (a bound against typos and crafted PNGs)")
    return found


# Bounds on scheduler config values: a name on the allow-list can still ask for a lot
# (num_train_timesteps=10**9 builds arrays of 65 GB; solver_order=10**6 keeps as many outputs).
SCHEDULER_NUMBER_LIMIT = 10_000  # num_train_timesteps and the like: real models use 1000
SCHEDULER_ORDER_LIMIT = 4  # solver_order, predictor_order, corrector_order: diffusers' solvers go to 3 or 4
SCHEDULER_TEXT_LIMIT = 64


def _scheduler_value_problem(name: str, value: Any) -> str | None:
    """Why a scheduler config value is refused, or None."""
    import math

    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        limit = SCHEDULER_ORDER_LIMIT if name.endswith("_order") else SCHEDULER_NUMBER_LIMIT
        return None if math.isfinite(value) and abs(value) <= limit else f"is over {limit} in size"
    if isinstance(value, str):
        return None if len(value) <= SCHEDULER_TEXT_LIMIT else f"is over {SCHEDULER_TEXT_LIMIT} characters"
    if isinstance(value, (list, tuple)):  # trained_betas, stage_range: numbers, one per timestep at most
        numbers = len(value) <= SCHEDULER_NUMBER_LIMIT and all(
            isinstance(item, (int, float)) and not isinstance(item, bool) and math.isfinite(item) and abs(item) <= SCHEDULER_NUMBER_LIMIT for item in value
        )
        return None if numbers else f"must be a list of at most {SCHEDULER_NUMBER_LIMIT} numbers of at most {SCHEDULER_NUMBER_LIMIT} in size"
    return "must be a number, a string, a boolean, null or a list of numbers"
