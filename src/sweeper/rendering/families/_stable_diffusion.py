"""What SD 1.x and SDXL share: a UNet, CLIP text encoders, noise-prediction schedulers."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.rendering.families import DISCRETE, Family

CLIP_SKIP_LIMIT = 12  # CLIP-L's layers: A1111's clip skip 12 takes its first


class StableDiffusion(Family):
    schedulers = DISCRETE
    eager_attention = True
    weighting = True
    sized_modes = ("txt2img", "inpaint")  # img2img takes its size from the (resized) image
    default_scheduler = "euler"
    tiny_version = "v2"  # v2: text_encoder_2 wider than text_encoder (as in SDXL); tiny-sd has a safety checker
    text_widths: dict[str, int]  # each tiny UNet's cross_attention_dim

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """Bounds clip_skip; 1 (the model's own layer: SD 1.x's last, SDXL's penultimate) is unset, as A1111 writes no "Clip skip" for it (same image, same id).
        Refuses guidance_rescale where CFG does not run (guidance <= 1)."""
        guidance = model.get("guidance")
        if values["guidance_rescale"] is not None and isinstance(guidance, (int, float)) and guidance <= 1:
            raise invalid("guidance_rescale", values["guidance_rescale"], f"rescales classifier-free guidance, which runs only with guidance > 1 (guidance={guidance:g})")
        if (values["clip_skip"] or 1) > CLIP_SKIP_LIMIT:
            raise invalid("clip_skip", values["clip_skip"], f"must be 1 .. {CLIP_SKIP_LIMIT} (CLIP-L has {CLIP_SKIP_LIMIT} layers; 1 = the last)")
        if values["clip_skip"] == 1:
            values["clip_skip"] = None

    def text_width(self, tiny_name: str) -> int | None:
        return self.text_widths.get(tiny_name)

    def denoiser(self, pipe: Any) -> Any:
        return pipe.unet

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        rescale = {} if spec.guidance_rescale is None else {"guidance_rescale": spec.guidance_rescale}
        return {"guidance_scale": spec.guidance, **rescale}

    def combine(self, per_image: list[dict[str, Any]]) -> dict[str, Any]:
        """Prompts of A1111's syntax may run to more 77-token chunks than their neighbours'."""
        from sweeper.rendering.weighting import same_length

        return super().combine(same_length(per_image))

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which of the image's prompts the CLIP tokenizer cuts (77 tokens); A1111's syntax and compel chunk them instead."""
        if spec.prompt_syntax is not None:
            return None
        tokenizer = pipe.tokenizer or pipe.tokenizer_2
        limit = tokenizer.model_max_length
        names = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
        cut = [name for name in names if getattr(spec, name) and len(tokenizer(getattr(spec, name)).input_ids) > limit]
        return f"{' and '.join(cut)} truncated to {limit} tokens" if cut else None


def diffusers_clip_skip(clip_skip: int | None) -> int | None:
    """A1111's clip skip N (1 = the last layer) is diffusers' N - 1 (its None and 0 take the last)."""
    return None if clip_skip is None or clip_skip <= 1 else clip_skip - 1
