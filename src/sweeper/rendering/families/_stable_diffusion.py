"""What SD 1.x and SDXL share: a UNet, CLIP text encoders, noise-prediction schedulers."""

from __future__ import annotations

from typing import Any

from sweeper.rendering.families import DISCRETE, Family


class StableDiffusion(Family):
    schedulers = DISCRETE
    eager_attention = True
    sized_modes = ("txt2img", "inpaint")  # img2img takes its size from the (resized) image
    default_scheduler = "euler"
    tiny_version = "v2"  # v2: text_encoder_2 wider than text_encoder (as in SDXL); tiny-sd has a safety checker
    text_widths: dict[str, int]  # each tiny UNet's cross_attention_dim

    def text_width(self, tiny_name: str) -> int | None:
        return self.text_widths.get(tiny_name)

    def denoiser(self, pipe: Any) -> Any:
        return pipe.unet

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which of the image's prompts the CLIP tokenizer cuts (77 tokens)."""
        tokenizer = pipe.tokenizer or pipe.tokenizer_2
        limit = tokenizer.model_max_length
        names = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
        cut = [name for name in names if getattr(spec, name) and len(tokenizer(getattr(spec, name)).input_ids) > limit]
        return f"{' and '.join(cut)} truncated to {limit} tokens" if cut else None
