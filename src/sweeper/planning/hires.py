"""Hires fix, as AUTOMATIC1111 does it: render at width x height, upscale, then img2img at the larger size.

    hires.scale     "Hires upscale": null = off; the second pass renders at int(width * scale) x int(height * scale),
                    floored to the family's size multiple (A1111 interpolates its latents to size // 8)
    hires.denoise   "Denoising strength" of the second pass (img2img strength)
    hires.steps     "Hires steps": the steps the second pass runs (as A1111: of a schedule of
                    hires.steps / denoise steps); null or 0 = steps
    hires.upscaler  "Hires upscaler": latent (A1111's "Latent": bilinear on the latents) or
                    lanczos (decode, PIL Lanczos, encode again)

Checked here, before any model loads (no torch); rendered in rendering/render.py.
"""

from __future__ import annotations

import math
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid

KEYS = ("scale", "denoise", "steps", "upscaler")
FIELDS = tuple(f"hires_{key}" for key in KEYS)  # the spec fields (and manifest columns)
UPSCALERS = {"latent": "Latent", "lanczos": "Lanczos"}  # the key's values -> A1111's names, written in the PNG text
OFF = dict.fromkeys(FIELDS)


def checked(c: Mapping[str, Any], mode: str, refiner: Mapping[str, Any], steps: int, width: int, height: int,
            multiple: int, max_size: int, max_steps: int) -> dict[str, Any]:
    """The spec's hires fields: all None when hires.scale is null (an old sweep's images keep their ids).
    hires.steps null or 0 is filled in as `steps`, so the manifest says what ran."""
    hires = c.get("hires") or {}
    if not isinstance(hires, Mapping):
        raise invalid("hires", hires, "must be a mapping of scale, denoise, steps, upscaler (set hires.scale=2)")
    scale = hires.get("scale")
    if scale is None:
        return dict(OFF)
    if not _is_number(scale) or not 1 <= scale <= 16 or not math.isfinite(scale):
        raise invalid("hires.scale", scale, "must be null (off) or a number 1 .. 16: the second pass renders at width x height times it")
    if mode != "txt2img":
        raise invalid("hires.scale", scale, f"the hires fix is for txt2img (as in A1111), not mode={mode}; set hires.scale=null")
    if refiner.get("id") is not None:
        raise PlanError(f"invalid hires.scale={scale:g}: not with refiner={refiner['name']} (sweeper's hires fix runs the base model's second pass); use one or the other")
    for key, side in (("width", width), ("height", height)):
        if hires_side(side, scale, multiple) > max_size:
            raise invalid("hires.scale", scale, f"{key}={side} x {scale:g} is over max_size={max_size} (raise max_size to render it)")
        if hires_side(side, scale, multiple) < multiple:
            raise invalid("hires.scale", scale, f"{key}={side} x {scale:g} is under {multiple} pixels")
    upscaler = hires.get("upscaler")
    if upscaler not in UPSCALERS:
        raise invalid("hires.upscaler", upscaler, "allowed: latent (A1111's Latent), lanczos (A1111's Lanczos); upscaler models (ESRGAN...) are not supported")
    second = hires.get("steps")
    if second is not None and (not _is_int(second) or second < 0):
        raise invalid("hires.steps", second, "must be null or 0 (= steps) or an integer >= 1")
    second = second or steps
    if second > max_steps:
        raise invalid("hires.steps", second, f"over max_steps={max_steps} (a bound against typos; raise max_steps to render it)")
    denoise = hires.get("denoise")
    if not _is_number(denoise) or not 0 < denoise <= 1:
        raise invalid("hires.denoise", denoise, "must be a number in (0, 1]: the second pass's denoising strength")
    return {"hires_scale": float(scale), "hires_denoise": float(denoise), "hires_steps": second, "hires_upscaler": upscaler}


def schedule(hires_steps: int, denoise: float) -> tuple[int, float]:
    """(num_inference_steps, strength) for diffusers' img2img that run the second pass as A1111 runs it
    (sd_samplers_common.setup_img2img_steps, given the hires steps): `hires_steps` steps, the last ones of
    a schedule of int(hires_steps / min(denoise, 0.999)) steps. diffusers runs int(num_inference_steps *
    strength) steps: the strength is put half a step above hires_steps so the float product floors to it."""
    total = int(hires_steps / min(denoise, 0.999))
    return total, min(1.0, (hires_steps + 0.5) / total)


def hires_side(side: int, scale: float, multiple: int) -> int:
    """A side of the second pass: A1111's int(side * scale), floored to the size multiple as its latents are."""
    return int(side * scale) // multiple * multiple


def size(spec: Any, multiple: int) -> tuple[int, int]:
    """(width, height) of the image a spec renders: the second pass's with hires fix, else its own."""
    if spec.hires_scale is None:
        return spec.width, spec.height
    return hires_side(spec.width, spec.hires_scale, multiple), hires_side(spec.height, spec.hires_scale, multiple)


def config(spec: Any) -> dict[str, Any]:
    """The `hires` config that plans the spec's hires fields (the inverse of `checked`)."""
    if spec.hires_scale is None:
        return {"scale": None}
    return {"scale": spec.hires_scale, "denoise": spec.hires_denoise, "steps": spec.hires_steps, "upscaler": spec.hires_upscaler}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
