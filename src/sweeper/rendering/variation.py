"""Variation seeds (A1111's "Variation seed" and "Variation seed strength"): a txt2img call's initial noise.

Each image's noise is drawn from its own generator, as the pipeline would
draw it (so the generator goes on where the pipeline's would, for the
samplers that draw noise at each step), and its subseed's noise the same way
from a generator seeded by the subseed. The two are blended by spherical
interpolation as A1111 does it (modules/rng.py `slerp`): on each image's
(channels, height, width) noise, along its height axis, with a plain linear
blend when the two are nearly equal. At strength 1 the noise is the
subseed's own: the image of `seed=<subseed>`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

NEARLY_EQUAL = 0.9995  # A1111's threshold for the mean cosine below which it interpolates spherically


def slerp(strength: float, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """A1111's spherical interpolation of one image's noise `low` towards `high` (both (C, H, W), float32)."""
    cosine = ((low / low.norm(dim=1, keepdim=True)) * (high / high.norm(dim=1, keepdim=True))).sum(1)
    if cosine.mean() > NEARLY_EQUAL:
        return low * strength + high * (1 - strength)  # A1111's weights, reversed as it writes them
    omega = torch.acos(cosine)
    sine = torch.sin(omega)
    return (torch.sin((1.0 - strength) * omega) / sine).unsqueeze(1) * low + (torch.sin(strength * omega) / sine).unsqueeze(1) * high


def initial_noise(
    pipe: Any, specs: Sequence[Any], generators: list[torch.Generator], dtype: torch.dtype, device: Any
) -> torch.Tensor:
    """The call's `latents`: each image's noise blended with its subseed's, unscaled (the pipeline
    multiplies them by the scheduler's init_noise_sigma), drawn as diffusers' prepare_latents draws them."""
    from diffusers.utils.torch_utils import randn_tensor

    first = specs[0]
    shape = (len(specs), pipe.unet.config.in_channels, first.height // pipe.vae_scale_factor, first.width // pipe.vae_scale_factor)
    noise = randn_tensor(shape, generator=generators, device=torch.device("cpu"), dtype=dtype)
    subnoise = randn_tensor(shape, generator=[torch.Generator("cpu").manual_seed(spec.subseed) for spec in specs], device=torch.device("cpu"), dtype=dtype)
    blended = [slerp(first.subseed_strength, low.float(), high.float()) for low, high in zip(noise, subnoise)]
    return torch.stack(blended).to(dtype).to(device)
