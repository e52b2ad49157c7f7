"""Render: one batch of specs -> one RGB float array per spec (0..1, NaN kept for the caller to see).

One CPU `torch.Generator` per image, so an image's noise does not depend on
the batch, the rank or the order it runs in. Each prompt is encoded once
(per pipeline, in the runtime's cache) and its embeddings reused by every batch that holds it; the
text encoders then see the prompt alone, as in a plain one-image loop.
Same batch composition: bit identical pixels; across batch sizes: within a
couple of levels (batched float math is not batch-invariant), which is why
each PNG records its whole call and replay.py repeats it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from PIL import Image, ImageOps

from sweeper.planning import hires
from sweeper.rendering import families, loras, pipelines, prompt_editing, textual_inversion, vaes, variation
from sweeper.storing.files import read_image_file
from sweeper.planning.image_files import content_sha
from sweeper.rendering.runtime import Runtime
from sweeper.planning.spec import ALL_PER_IMAGE_FIELDS, ImageSpec
from sweeper.planning.schedule import Batch


@dataclass
class Output:
    images: np.ndarray  # (N, H, W, 3) floats in 0..1
    nsfw: list[bool] | None  # the safety checker's verdict per image, when the pipeline ran one
    base_steps: int  # the denoising steps each model really ran (a refiner split cuts the
    refiner_steps: int | None  # noise schedule, not the steps; img2img runs int(steps * strength))
    warnings: list[str | None]  # per image: prompts the CLIP tokenizer cut at 77 tokens, as diffusers does silently
    hires_steps: int | None = None  # the steps the hires fix's second pass really ran (its hires_steps, as in A1111)
    load_seconds: float | None = None  # models loaded for this call (not render time)
    warmup_seconds: float | None = None  # the throwaway warm-up call made before this one (not render time)


def render_batch(batch: Batch, device: str, runtime: Runtime) -> Output:
    """diffusers' own post-processing, before its conversion to PIL; with the pipelines `runtime` holds or loads."""
    with quiet_torchsde():
        return _render_batch(batch, device, runtime)


@contextlib.contextmanager
def quiet_torchsde() -> Iterator[None]:
    """torchsde warns on stderr when a step's float time lands a hair past its interval's end
    (DPM++ SDE): harmless, and it breaks the progress bar."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Should have t[ab]<=t1 but got", category=UserWarning)
        yield


def _render_batch(batch: Batch, device: str, runtime: Runtime) -> Output:
    specs = batch.specs
    first = specs[0]

    # 1. Load or reuse the pipelines.
    loads = len(runtime.loads)
    tic = time.perf_counter()
    base = pipelines.base_pipeline(runtime, first, device)
    key = pipelines.base_key(first, device)
    loras.apply(runtime, key, base, first)
    textual_inversion.apply(runtime, key, base, first, families.get(first.family))
    refiner = None if first.refiner_id is None else pipelines.refiner_pipeline(runtime, first, base, device)
    upscaled = None if first.hires_scale is None else pipelines.mode_pipeline(runtime, first, base, "img2img", device)
    vaes.apply(runtime, key, [base, refiner, upscaled], first, device)
    load_seconds = time.perf_counter() - tic if len(runtime.loads) > loads else None

    # 2. A pipeline's first call at a shape pays one-time costs (allocations, kernel choice, compile):
    # a throwaway call of the same images in fewer steps pays them, so no sweep image (nor the axis
    # value it has) is timed cold.
    shape = (first.width, first.height, len(specs))
    cold = runtime.first_call(base, shape)
    if refiner is not None:
        cold = runtime.first_call(refiner, shape) or cold
    if upscaled is not None:
        cold = runtime.first_call(upscaled, (*hires.size(first, families.get(first.family).size_multiple), len(specs))) or cold
    warmup_seconds = None
    if cold:
        tic = time.perf_counter()
        _call(Batch(tuple(warm_up_spec(spec) for spec in specs)), device, runtime, base, refiner, upscaled)
        warmup_seconds = time.perf_counter() - tic
    output = _call(batch, device, runtime, base, refiner, upscaled)
    output.load_seconds, output.warmup_seconds = load_seconds, warmup_seconds
    return output


def warm_up_spec(spec: ImageSpec) -> ImageSpec:
    """An image of a warm-up call: the spec in 2 denoising steps (multistep and second-order schedulers
    take their later paths too); from an init image, enough steps that `strength` leaves 2; with a
    refiner at its own steps, as fewer could leave one of the models no step at all."""
    if spec.refiner_id is not None:
        return spec
    steps = 2 if spec.mode == "txt2img" else math.ceil(2 / spec.strength)
    if spec.hires_scale is not None:
        return dataclasses.replace(spec, steps=min(spec.steps, steps), hires_steps=min(spec.hires_steps, 2))
    return dataclasses.replace(spec, steps=min(spec.steps, steps))


def _call(batch: Batch, device: str, runtime: Runtime, base: Any, refiner: Any, upscaled: Any = None) -> Output:
    """One pipeline call of the batch with the loaded pipelines (`upscaled`: the img2img pipeline of the hires fix)."""
    specs = batch.specs
    first = specs[0]
    seeds = [spec.seed for spec in specs]

    # 1. A fresh scheduler of the asked-for class.
    pipelines.set_scheduler(runtime, base, first, seeds)
    if refiner is not None:
        pipelines.set_scheduler(runtime, refiner, first, seeds)

    # 2. One CPU generator per image.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    # 3. The call's arguments: per-image prompt embeddings and images, shared settings.
    family = families.get(first.family)
    kwargs: dict[str, Any] = dict(num_inference_steps=first.steps, generator=generators, **family.call_kwargs(first))
    size = dict(width=first.width, height=first.height)
    if first.mode != "txt2img":
        kwargs.update(strength=first.strength, image=[_image(s.init_image, s.init_image_sha, size, "RGB") for s in specs])
    if first.mode == "inpaint":
        kwargs["mask_image"] = [_image(s.mask_image, s.mask_image_sha, size, "L") for s in specs]
    if first.mode not in family.sized_modes:
        size = {}

    # 4. Base: every step, or up to the refiner's split.
    pipelines.activate(runtime, base, first, device)
    switch = {}  # prompt editing: the call's first embeddings, and the callback that hands it each next step's
    if prompt_editing.edited(specs):
        batches, order = prompt_editing.per_step(specs)
        readings = [prompt_embeddings(runtime, base, batch, device) for batch in batches]
        (embeddings, warnings), switch = readings[order[0]], prompt_editing.switching(base, [found for found, _ in readings], order)
    else:
        embeddings, warnings = prompt_embeddings(runtime, base, specs, device)
    start = {}  # the base's initial noise, where variation seeds blend it (the refiner's comes from its image)
    if first.subseed_strength is not None:
        start["latents"] = variation.initial_noise(base, specs, generators, embeddings["prompt_embeds"].dtype, base._execution_device)
    if upscaled is not None:
        latents = base(**size, output_type="latent", **embeddings, **start, **kwargs).images
        base_steps = _steps_run(base, first, "base")
        # 5. The hires fix: the same embeddings, scheduler and guidance at the larger size.
        out = _hires_pass(runtime, upscaled, base, latents, specs, embeddings, device)
        return Output(out.images, _nsfw(out), base_steps, None, warnings, hires_steps=_steps_run(upscaled, first, "hires"))
    if refiner is None:
        out = base(**size, output_type="np", **embeddings, **start, **switch, **kwargs)
        return Output(out.images, _nsfw(out), _steps_run(base, first, "base"), None, warnings)
    if first.refiner_mode == "ensemble":
        latents = base(**size, denoising_end=first.refiner_split, output_type="latent", **embeddings, **start, **kwargs).images
        base_steps = _steps_run(base, first, "base")
        # 5. Refiner takes the latents mid-denoising (ensemble of experts).
        pipelines.activate(runtime, refiner, first, device)
        out = refiner(image=latents, denoising_start=first.refiner_split, output_type="np", **_refiner_embeddings(runtime, base, refiner, specs, device), **kwargs)
        return Output(out.images, None, base_steps, _steps_run(refiner, first, "refiner"), warnings)
    latents = base(**size, output_type="latent", **embeddings, **start, **kwargs).images
    base_steps = _steps_run(base, first, "base")
    # 5. Refiner re-noises the finished latents by 1 - split and denoises them again.
    pipelines.activate(runtime, refiner, first, device)
    out = refiner(image=latents, strength=1.0 - first.refiner_split, output_type="np", **_refiner_embeddings(runtime, base, refiner, specs, device), **kwargs)
    return Output(out.images, None, base_steps, _steps_run(refiner, first, "refiner"), warnings)


def _hires_pass(runtime: Runtime, pipe: Any, base: Any, latents: torch.Tensor, specs: tuple[ImageSpec, ...], embeddings: dict[str, Any], device: str) -> Any:
    """A1111's hires fix on the first pass's latents: upscaled as latents (its "Latent": bilinear, no
    antialiasing, decoded only at the end) or as images (decoded, PIL Lanczos, encoded again by img2img),
    then img2img at the larger size: `hires_steps` steps at denoising strength `hires_denoise`, as A1111 runs them (hires.schedule)."""
    first = specs[0]
    width, height = hires.size(first, families.get(first.family).size_multiple)
    if first.hires_upscaler == "latent":  # interpolated in float32, as A1111's samples are, then back to the pipeline's dtype
        size = (height // pipe.vae_scale_factor, width // pipe.vae_scale_factor)
        image: Any = torch.nn.functional.interpolate(latents.float(), size=size, mode="bilinear", antialias=False).to(latents.dtype)
    else:
        image = [picture.resize((width, height), Image.LANCZOS) for picture in _decoded(base, latents)]
    seeds = [spec.seed for spec in specs]
    pipelines.set_scheduler(runtime, pipe, first, seeds)
    pipelines.activate(runtime, pipe, first, device)
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]  # A1111 draws the second pass's noise from the seed anew
    total, strength = hires.schedule(first.hires_steps, first.hires_denoise)
    return pipe(image=image, strength=strength, num_inference_steps=total, generator=generators, output_type="np",
                **embeddings, **families.get(first.family).call_kwargs(first))


def _decoded(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """The first pass's images as its pipeline would decode them (the VAE upcast of float16 SDXL included),
    without the safety checker or the watermark, which A1111 applies to the final image only."""
    vae = pipe.vae
    upcast = vae.dtype == torch.float16 and vae.config.force_upcast
    if upcast:
        vae.to(dtype=torch.float32)  # pipelines.restore puts it back if the decode fails
    latents = latents.to(vae.dtype)
    mean, std = getattr(vae.config, "latents_mean", None), getattr(vae.config, "latents_std", None)
    if mean is not None and std is not None:
        latents = latents * torch.tensor(std).view(1, -1, 1, 1).to(latents) / vae.config.scaling_factor + torch.tensor(mean).view(1, -1, 1, 1).to(latents)
    else:
        latents = latents / vae.config.scaling_factor
    with torch.no_grad():
        images = vae.decode(latents, return_dict=False)[0]
    if upcast:
        vae.to(dtype=torch.float16)
    return pipe.image_processor.postprocess(images, output_type="pil")


def _refiner_embeddings(runtime: Runtime, base: Any, refiner: Any, specs: tuple[ImageSpec, ...], device: str) -> dict[str, torch.Tensor]:
    """The refiner's prompt embeddings, without the base's LoRA (text_encoder_2 is the base's)."""
    with loras.disabled(base, specs[0]):
        return prompt_embeddings(runtime, refiner, specs, device, lora=False)[0]


def _steps_run(pipe, spec: ImageSpec, who: str) -> int:
    """Denoising steps the call just ran (a second-order scheduler visits most timesteps twice)."""
    steps = math.ceil(pipe.num_timesteps / pipe.scheduler.order)
    if steps < 1:  # diffusers would hand on (or decode) the latents untouched
        raise RuntimeError(
            f"refiner.split={spec.refiner_split:g} left the {who} no denoising step of {spec.steps} with {spec.scheduler_class}; "
            "choose a split nearer 0.5 or more steps"
        )
    return steps


def _nsfw(out) -> list[bool] | None:
    flags = getattr(out, "nsfw_content_detected", None)
    return None if flags is None else [bool(flag) for flag in flags]


def prompt_embeddings(
    runtime: Runtime, pipe: Any, specs: tuple[ImageSpec, ...], device: str, lora: bool = True
) -> tuple[dict[str, torch.Tensor], list[str | None]]:
    """The batch's prompt embeddings as the pipeline's keyword arguments, each prompt encoded once,
    and per image which prompts the tokenizer cut. `lora`: with the spec's adapters active
    (a LoRA may hold text encoder weights, so its adapters and weights key the cache)."""
    family = families.get(specs[0].family)
    per_image = [_encoded(runtime, pipe, family, spec, device, lora) for spec in specs]
    return family.combine([embeddings for embeddings, _ in per_image]), [warning for _, warning in per_image]


# What an image's prompt embeddings depend on besides its prompts and the pipeline.
# prompt_syntax: prompts equal as text may be encoded as A1111's syntax or as the text itself.
_ENCODING_FIELDS = ("true_cfg", "max_sequence_length", "clip_skip", "embedding_tokens", "embeddings_sha", "prompt_syntax")


def _encoded(runtime: Runtime, pipe: Any, family: Any, spec: ImageSpec, device: str, lora: bool) -> tuple[dict[str, torch.Tensor], str | None]:
    """(embeddings as call arguments, truncation warning) of one image's prompts."""
    adapters = (spec.lora_sha, spec.lora_scale) if lora else None
    prompts = tuple(getattr(spec, name) for name in ALL_PER_IMAGE_FIELDS if "prompt" in name)
    key = (pipe, prompts, family.uses_cfg(spec), tuple(getattr(spec, name) for name in _ENCODING_FIELDS), adapters)
    cached = runtime.cached_embeddings(key)
    if cached is not None:
        return cached
    spec = textual_inversion.with_tokens(spec)
    with torch.no_grad():
        encoded = family.encode(pipe, spec, device)
    return runtime.store_embeddings(key, (encoded, family.truncation(pipe, spec)))


def _image(path: str, sha: str, size: dict[str, int], mode: str) -> Image.Image:
    """An init image or mask as planned, resized to the output size."""
    data = read_image_file(Path(path))
    if content_sha(data) != sha:
        raise RuntimeError(f"{path} changed since the sweep was planned; run the command again to plan it anew")
    with Image.open(io.BytesIO(data)) as image:
        image = ImageOps.exif_transpose(image).convert(mode)  # upright, as diffusers' load_image does
    if image.size != (size["width"], size["height"]):
        image = image.resize((size["width"], size["height"]), Image.LANCZOS)
    return image
