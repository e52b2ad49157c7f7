"""Render: one batch of specs -> one RGB float array per spec (0..1, NaN kept for the caller to see).

One CPU `torch.Generator` per image, so an image's noise does not depend on
the batch, the rank or the order it runs in. Same batch composition: bit
identical pixels; across batch sizes: within a couple of levels (batched
float math is not batch-invariant); `batch_size=1` replays exactly.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from sweeper import pipelines
from sweeper.plan import CROP_KEYS, SIZE_KEYS
from sweeper.schedule import Batch


def render_batch(batch: Batch, device: str) -> np.ndarray:
    """(N, H, W, 3) floats in 0..1: diffusers' own post-processing, before its conversion to PIL."""
    specs = batch.specs
    first = specs[0]
    seeds = [spec.seed for spec in specs]

    # 1. Load or reuse the pipelines; a fresh scheduler of the asked-for class.
    base = pipelines.base_pipeline(first, device)
    pipelines.set_scheduler(base, first, seeds)
    refiner = None
    if first.refiner_id is not None:
        refiner = pipelines.refiner_pipeline(first, base, device)
        pipelines.set_scheduler(refiner, first, seeds)

    # 2. One CPU generator per image.
    generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]

    # 3. The call's arguments: per-image prompts, shared settings.
    kwargs: dict[str, Any] = dict(
        prompt=[spec.prompt for spec in specs],
        negative_prompt=_per_image(specs, "negative_prompt"),
        num_inference_steps=first.steps,
        guidance_scale=first.guidance,
        generator=generators,
    )
    if first.family == "sdxl":
        kwargs["prompt_2"] = _per_image(specs, "prompt_2")
        kwargs["negative_prompt_2"] = _per_image(specs, "negative_prompt_2")
        for key in (*SIZE_KEYS, *CROP_KEYS):
            if getattr(first, key) is not None:
                kwargs[key] = getattr(first, key)

    # 4. Base: every step, or up to the refiner's split.
    if refiner is None:
        return base(width=first.width, height=first.height, output_type="np", **kwargs).images
    if first.refiner_mode == "ensemble":
        latents = base(width=first.width, height=first.height, denoising_end=first.refiner_split, output_type="latent", **kwargs).images
        # 5. Refiner takes the latents mid-denoising (ensemble of experts).
        return refiner(image=latents, denoising_start=first.refiner_split, output_type="np", **kwargs).images
    latents = base(width=first.width, height=first.height, output_type="latent", **kwargs).images
    # 5. Refiner re-noises the finished latents by 1 - split and denoises them again.
    return refiner(image=latents, strength=1.0 - first.refiner_split, output_type="np", **kwargs).images


def _per_image(specs, name: str) -> list[str] | None:
    values = [getattr(spec, name) for spec in specs]
    return None if values[0] is None else values


def prompt_warnings(batch: Batch, device: str) -> list[str | None]:
    """Per image: which prompts the CLIP tokenizers cut (77 tokens), as diffusers does silently."""
    base = pipelines.base_pipeline(batch.specs[0], device)
    tokenizer = base.tokenizer or base.tokenizer_2
    limit = tokenizer.model_max_length
    warnings = []
    for spec in batch.specs:
        cut = [
            name
            for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
            if getattr(spec, name) and len(tokenizer(getattr(spec, name)).input_ids) > limit
        ]
        warnings.append(f"{' and '.join(cut)} truncated to {limit} tokens" if cut else None)
    return warnings
