"""Stable Diffusion 1.x: one CLIP text encoder, the safety checker."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.rendering.families._stable_diffusion import StableDiffusion


class SD15(StableDiffusion):
    name = "sd15"
    title = "Stable Diffusion 1.x"
    pipelines = {
        "txt2img": "StableDiffusionPipeline",
        "img2img": "StableDiffusionImg2ImgPipeline",
        "inpaint": "StableDiffusionInpaintPipeline",
    }
    index_classes = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline")
    keys = ("negative_prompt", "guidance_rescale", "sigmas", "clip_skip", "vae", "embeddings", "hires", "subseed", "subseed_strength")
    safety_checker = True
    tiny = {"tiny-sd": "base"}
    text_widths = {"tiny-sd": 32}
    embedding_encoders = ((None, "tokenizer", "text_encoder"),)
    tiny_encoder_widths = {"tiny-sd": (32,)}

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """As SD's; and no CFG rescale with the hires fix, whose second pass diffusers' SD 1.x img2img pipeline runs without one."""
        super().check(values, model)
        hires = model.get("hires")
        if values["guidance_rescale"] is not None and isinstance(hires, Mapping) and hires.get("scale") is not None:
            raise invalid("guidance_rescale", values["guidance_rescale"], "not with hires.scale on SD 1.x: diffusers' img2img pipeline, which runs the second pass, has no CFG rescale")

    def load_kwargs(self, spec: Any, from_pipe: bool) -> dict[str, Any]:
        return {} if spec.safety_checker or from_pipe else {"safety_checker": None, "requires_safety_checker": False}

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        cfg = self.uses_cfg(spec)
        if spec.prompt_syntax == "a1111":
            from sweeper.rendering import weighting

            return weighting.sd15(pipe, spec, spec.clip_skip, cfg, device)
        if spec.prompt_syntax == "compel":
            from sweeper.rendering import weighting

            return weighting.compel_sd15(pipe, spec, cfg)
        if spec.clip_skip is None:
            embeds, negative = pipe.encode_prompt(spec.prompt, device, 1, cfg, negative_prompt=spec.negative_prompt)
        else:  # diffusers' own clip_skip fails on transformers 5's CLIPTextModel (no .text_model) and skips no layer of the negative
            embeds = _clip_skipped(pipe, spec.prompt, spec.clip_skip, device)
            negative = _clip_skipped(pipe, spec.negative_prompt or "", spec.clip_skip, device) if cfg else None
        return {"prompt_embeds": embeds, **({"negative_prompt_embeds": negative} if cfg else {})}

    def build_tiny(self, name: str) -> Any:
        from diffusers import StableDiffusionPipeline
        from transformers import CLIPImageProcessor

        from sweeper.rendering.tiny import clip_text_encoder, clip_tokenizer, sd_scheduler, sd_unet, sd_vae

        tokenizer, vocab_size = clip_tokenizer()
        return StableDiffusionPipeline(
            vae=sd_vae(),
            text_encoder=clip_text_encoder(False, vocab_size, tokenizer),
            tokenizer=tokenizer,
            unet=sd_unet(cross_attention_dim=self.text_widths["tiny-sd"], time_ids_dim=None),
            scheduler=sd_scheduler(),
            safety_checker=_safety_checker(),
            feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        )


def _clip_skipped(pipe: Any, text: str, clip_skip: int, device: str) -> Any:
    """The plain prompt's embedding with A1111's clip skip (weighting.clip_skipped)."""
    from sweeper.rendering.weighting import clip_skipped

    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    text = pipe.maybe_convert_prompt(text, tokenizer)  # a textual inversion's token: all its vectors, as encode_prompt does
    tokens = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device) if getattr(encoder.config, "use_attention_mask", False) else None
    return clip_skipped(encoder, tokens.input_ids.to(device), mask, clip_skip)


def _safety_checker():
    """SD 1.x's checker on a tiny CLIP vision model. Its concept embeddings and
    thresholds start at ones, so it flags nothing (tests lower the thresholds)."""
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig

    config = CLIPConfig(
        text_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2),
        vision_config=dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=32, patch_size=8),
        projection_dim=32,
    )
    return StableDiffusionSafetyChecker(config)


FAMILY = SD15()
