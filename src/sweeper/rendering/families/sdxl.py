"""SDXL: two CLIP text encoders, size and crop conditioning, the refiner, the invisible watermark."""

from __future__ import annotations

from typing import Any

from sweeper.planning.spec import CROP_KEYS, SIZE_KEYS
from sweeper.rendering.families._stable_diffusion import StableDiffusion, diffusers_clip_skip


class SDXL(StableDiffusion):
    name = "sdxl"
    title = "SDXL"
    pipelines = {
        "txt2img": "StableDiffusionXLPipeline",
        "img2img": "StableDiffusionXLImg2ImgPipeline",
        "inpaint": "StableDiffusionXLInpaintPipeline",
    }
    index_classes = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline")
    keys = ("negative_prompt", "prompt_2", "negative_prompt_2", *SIZE_KEYS, *CROP_KEYS, "guidance_rescale", "sigmas", "clip_skip", "vae", "embeddings", "refiner", "watermark",
            "hires", "subseed", "subseed_strength")
    # Not as "Clip skip" in the PNG text: A1111 counts SDXL's layers from the last one ("Clip skip SDXL"), diffusers
    # and sweeper from SDXL's own penultimate one, so A1111 would read another layer off the same number.
    a1111 = {"clip_skip": None}
    tiny = {"tiny-sdxl": "base", "tiny-sdxl-refiner": "refiner"}
    text_widths = {"tiny-sdxl": 32 + 48, "tiny-sdxl-refiner": 48}
    embedding_encoders = (("clip_l", "tokenizer", "text_encoder"), ("clip_g", "tokenizer_2", "text_encoder_2"))
    tiny_encoder_widths = {"tiny-sdxl": (32, 48)}

    def load_kwargs(self, spec: Any, from_pipe: bool) -> dict[str, Any]:
        return {"add_watermarker": spec.watermark}

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        # The refiner encodes with the same clip skip on its text_encoder_2 (the base's), as A1111 does.
        cfg = self.uses_cfg(spec)
        if spec.prompt_syntax == "a1111":
            from sweeper.rendering import weighting

            return weighting.sdxl(pipe, spec, diffusers_clip_skip(spec.clip_skip), cfg, device)
        if spec.prompt_syntax == "compel":
            from sweeper.rendering import weighting

            return weighting.compel_sdxl(pipe, spec, cfg)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            spec.prompt, spec.prompt_2, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=spec.negative_prompt, negative_prompt_2=spec.negative_prompt_2,
            clip_skip=diffusers_clip_skip(spec.clip_skip),
        )
        found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if cfg:
            found.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return found

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        sizes = {key: getattr(spec, key) for key in (*SIZE_KEYS, *CROP_KEYS) if getattr(spec, key) is not None}
        return {**super().call_kwargs(spec), **sizes}

    def build_tiny(self, name: str) -> Any:
        return _base() if self.tiny[name] == "base" else _refiner()


def _base():
    from diffusers import StableDiffusionXLPipeline

    from sweeper.rendering.tiny import clip_text_encoder, clip_tokenizer, sd_scheduler, sd_unet, sd_vae

    tokenizer, vocab_size = clip_tokenizer()
    return StableDiffusionXLPipeline(
        vae=sd_vae(),
        text_encoder=clip_text_encoder(False, vocab_size, tokenizer),
        text_encoder_2=clip_text_encoder(True, vocab_size, tokenizer),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=sd_unet(cross_attention_dim=FAMILY.text_widths["tiny-sdxl"], time_ids_dim=80),
        scheduler=sd_scheduler(),
    )


def _refiner():
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from sweeper.rendering.tiny import sd_scheduler, sd_unet

    # The refiner shares the base's text_encoder_2 and vae when loaded next to
    # it; its own copies are the base's, so it is also whole on its own.
    base = _base()
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=sd_unet(cross_attention_dim=FAMILY.text_widths["tiny-sdxl-refiner"], time_ids_dim=72),
        scheduler=sd_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


FAMILY = SDXL()
