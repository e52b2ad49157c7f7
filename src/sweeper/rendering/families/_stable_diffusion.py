"""What SD 1.x and SDXL share: a UNet, CLIP text encoders, noise-prediction schedulers."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.rendering.families import DISCRETE, Family

CLIP_SKIP_LIMIT = 12  # CLIP-L's layers: A1111's clip skip 12 takes its first
PROMPTS = ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")  # an SD 1.x or SDXL image's prompts


class StableDiffusion(Family):
    schedulers = DISCRETE
    eager_attention = True
    weighting = True
    sized_modes = ("txt2img", "inpaint")  # img2img takes its size from the (resized) image
    default_scheduler = "euler"
    tiny_version = "v2"  # v2: text_encoder_2 wider than text_encoder (as in SDXL); tiny-sd has a safety checker
    text_widths: dict[str, int]  # each tiny UNet's cross_attention_dim
    latent_channels = 4  # of every SD 1.x and SDXL VAE: the `vae` key takes another with as many
    # Textual inversion: per text encoder, (its tensor in an embedding file (None: the file's one), tokenizer, encoder).
    embedding_encoders: tuple[tuple[str | None, str, str], ...]
    tiny_encoder_widths: dict[str, tuple[int, ...]]  # each tiny model's text encoders' widths

    def encoder_widths(self, model: Mapping[str, Any]) -> tuple[int, ...] | None:
        """The text encoders' widths (an embedding's vectors must match), from their configs where on this machine."""
        from sweeper.model_files import model_json

        if model["id"] in self.tiny_encoder_widths:
            return self.tiny_encoder_widths[model["id"]]
        source, revision = (model["config"], None) if model.get("config") else (model["id"], model.get("revision"))
        widths = []
        for _, _, encoder in self.embedding_encoders:
            try:
                width = (model_json(source, revision, f"{encoder}/config.json") or {}).get("hidden_size")
            except (OSError, ValueError):
                return None
            if not isinstance(width, int) or isinstance(width, bool):
                return None
            widths.append(width)
        return tuple(widths)

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """Bounds clip_skip; 1 (the model's own layer: SD 1.x's last, SDXL's penultimate) is unset, as A1111 writes no "Clip skip" for it (same image, same id).
        Refuses guidance_rescale where CFG does not run (guidance <= 1), variation seeds but in txt2img."""
        mode = model.get("mode")
        if values["subseed_strength"] is not None and mode != "txt2img":
            # A1111 varies the noise added to the init image's latents; diffusers' img2img and inpaint draw it inside the call
            raise invalid("subseed_strength", values["subseed_strength"], f"variation seeds vary the initial noise of txt2img; not with mode={mode}")
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
        cut = [name for name in PROMPTS if getattr(spec, name) and len(tokenizer(getattr(spec, name)).input_ids) > limit]
        return f"{' and '.join(cut)} truncated to {limit} tokens" if cut else None


def diffusers_clip_skip(clip_skip: int | None) -> int | None:
    """A1111's clip skip N (1 = the last layer) is diffusers' N - 1 (its None and 0 take the last)."""
    return None if clip_skip is None or clip_skip <= 1 else clip_skip - 1
