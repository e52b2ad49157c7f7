"""Stable Diffusion 3.5 (and 3): two CLIP text encoders and T5, an MMDiT transformer, true CFG,
skip-layer guidance, flow-matching schedules."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.model_files import model_json
from sweeper.rendering.families._flow import FlowFamily
from sweeper.rendering.families._stable_diffusion import CLIP_SKIP_LIMIT, diffusers_clip_skip

T5_LIMIT = 512  # the longest T5 prompt the pipelines take
T5_DEFAULT = 256
SLG_DEFAULTS = {"slg_scale": 2.8, "slg_start": 0.01, "slg_stop": 0.2}  # diffusers' own
TINY_LAYERS = 10  # so 3.5 Medium's skip-layer guidance layers [7, 8, 9] exist
TINY_T5_WIDTH = 96  # >= the two CLIP widths together (32 + 48): their states are zero-padded up to it


class SD3(FlowFamily):
    name = "sd3"
    title = "SD 3.5"
    pipelines = {
        "txt2img": "StableDiffusion3Pipeline",
        "img2img": "StableDiffusion3Img2ImgPipeline",
        "inpaint": "StableDiffusion3InpaintPipeline",
    }
    index_classes = ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline", "StableDiffusion3InpaintPipeline")
    keys = (
        "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3", "max_sequence_length",
        "shift", "dynamic_shift", "sigmas", "clip_skip", "slg_layers", "slg_scale", "slg_start", "slg_stop",
    )
    tiny = {"tiny-sd35": "medium"}
    tiny_version = "v1"
    # UniPC and DPM-Solver on flow sigmas raise in its img2img / inpaint or give NaN with sigma schedules
    scheduler_classes = ("FlowMatchEulerDiscreteScheduler",)
    size_multiple = 16  # the VAE's 8 times the transformer's patches of 2
    # sized_modes: all three (the default). Without a size, img2img and inpaint resize the image to 1024 px, not keep its own

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """Refuses what the pipelines would ignore or fail on; fills max_sequence_length (256),
        clip_skip (1: the last layer) and, with slg_layers, the skip-layer guidance defaults."""
        if model.get("fuse_qkv") is True:  # diffusers' fused joint attention fails on 3.5 Medium's dual-attention layers
            raise invalid("fuse_qkv", True, f"diffusers' {self.title} pipeline has no fused Q/K/V projections")
        length = values["max_sequence_length"]
        if length is not None and length > T5_LIMIT:
            raise invalid("max_sequence_length", length, f"{self.title}'s T5 takes at most {T5_LIMIT} tokens")
        values["max_sequence_length"] = T5_DEFAULT if length is None else length
        if (values["clip_skip"] or 1) > CLIP_SKIP_LIMIT:
            raise invalid("clip_skip", values["clip_skip"], f"must be 1 .. {CLIP_SKIP_LIMIT} (CLIP-L has {CLIP_SKIP_LIMIT} layers; 1 = the last)")
        values["clip_skip"] = values["clip_skip"] or 1
        self._check_slg(values, model)

    def _check_slg(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        layers = values["slg_layers"]
        if layers is None:
            for key in SLG_DEFAULTS:
                if values[key] is not None:
                    raise invalid(key, values[key], "skip-layer guidance is off without slg_layers (the transformer layers it skips, e.g. [7,8,9])")
            return
        shown = list(layers)
        mode = model.get("mode")
        if mode in ("img2img", "inpaint"):
            raise invalid("slg_layers", shown, f"skip-layer guidance is txt2img only: diffusers' {self.title} {mode} pipeline takes none")
        guidance = model.get("guidance")
        if _is_number(guidance) and guidance <= 1:
            raise invalid("slg_layers", shown, f"skip-layer guidance acts on classifier-free guidance, which guidance={guidance:g} (<= 1) turns off")
        count = _num_layers(model)
        if count is not None and max(layers) >= count:
            raise invalid("slg_layers", shown, f"{model.get('name')}'s transformer has layers 0 .. {count - 1}; diffusers would skip none of {max(layers)}")
        for key, default in SLG_DEFAULTS.items():
            values[key] = default if values[key] is None else values[key]
        start, stop, steps = values["slg_start"], values["slg_stop"], model.get("steps")
        # diffusers skips the layers at step i (from 0) when steps * start < i < steps * stop
        if _is_int(steps) and steps > 0 and not any(steps * start < i < steps * stop for i in range(steps)):
            raise invalid("slg_layers", shown, f"with steps={steps}, slg_start={start:g} and slg_stop={stop:g} no step skips them "
                          "(it runs at step i when steps * slg_start < i < steps * slg_stop); raise steps or widen them")

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        cfg = self.uses_cfg(spec)
        embeds, negative, pooled, negative_pooled = pipe.encode_prompt(
            spec.prompt, spec.prompt_2, spec.prompt_3, device=device, num_images_per_prompt=1, do_classifier_free_guidance=cfg,
            negative_prompt=spec.negative_prompt, negative_prompt_2=spec.negative_prompt_2, negative_prompt_3=spec.negative_prompt_3,
            clip_skip=diffusers_clip_skip(spec.clip_skip), max_sequence_length=spec.max_sequence_length,
        )
        found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if cfg:
            found.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return found

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        found: dict[str, Any] = {"guidance_scale": spec.guidance}
        if spec.slg_layers is not None:
            found.update(skip_guidance_layers=list(spec.slg_layers), skip_layer_guidance_scale=spec.slg_scale,
                         skip_layer_guidance_start=spec.slg_start, skip_layer_guidance_stop=spec.slg_stop)
        return found

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """The prompts the CLIP tokenizers cut at 77 tokens, and those T5 cuts at max_sequence_length."""
        clip = pipe.tokenizer or pipe.tokenizer_2
        cut = [f"{name} truncated to {clip.model_max_length} CLIP tokens" for name in ("prompt", "negative_prompt", "prompt_2", "negative_prompt_2")
               if getattr(spec, name) and len(clip(getattr(spec, name)).input_ids) > clip.model_max_length]
        if pipe.tokenizer_3 is not None:
            t5 = {"prompt_3": spec.prompt_3 or spec.prompt, "negative_prompt_3": spec.negative_prompt_3 or spec.negative_prompt}
            cut += [f"{name} truncated to {spec.max_sequence_length} T5 tokens" for name, text in t5.items()
                    if text and len(pipe.tokenizer_3(text).input_ids) > spec.max_sequence_length]
        return "; ".join(cut) or None

    def build_tiny(self, name: str) -> Any:
        import torch
        from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
        from transformers import CLIPTextModelWithProjection, T5Config, T5EncoderModel

        from sweeper.rendering.tiny import clip_text_encoder, clip_tokenizer, t5_tokenizer

        tokenizer, vocab_size = clip_tokenizer()
        # SD3 pools both CLIP encoders' projections: the first one (SDXL's has none) gets one too
        clip_l = CLIPTextModelWithProjection(clip_text_encoder(False, vocab_size, tokenizer).config)
        clip_g = clip_text_encoder(True, vocab_size, tokenizer)
        tokenizer_3 = t5_tokenizer()
        t5 = T5EncoderModel(T5Config(
            vocab_size=len(tokenizer_3), d_model=TINY_T5_WIDTH, d_kv=16, d_ff=64, num_layers=2, num_heads=2, relative_attention_num_buckets=8,
            feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
        ))
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=TINY_LAYERS, attention_head_dim=8, num_attention_heads=4,
            joint_attention_dim=TINY_T5_WIDTH, caption_projection_dim=32, pooled_projection_dim=2 * clip_g.config.projection_dim,
            pos_embed_max_size=32, dual_attention_layers=(0, 1, 2), qk_norm="rms_norm",  # MMDiT-X, as 3.5 Medium
        )
        vae = AutoencoderKL(
            block_out_channels=[8, 8, 16, 16], in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 4,
            up_block_types=["UpDecoderBlock2D"] * 4, layers_per_block=1, latent_channels=16, norm_num_groups=1, sample_size=64,
            use_quant_conv=False, use_post_quant_conv=False, scaling_factor=1.5305, shift_factor=0.0609,  # SD3's
        )
        pipe = StableDiffusion3Pipeline(
            transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0), vae=vae,
            text_encoder=clip_l, tokenizer=tokenizer, text_encoder_2=clip_g, tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=tokenizer_3,
        )
        for module in pipe.components.values():  # as from_pretrained leaves them: a new T5 trains, its dropout on
            if isinstance(module, torch.nn.Module):
                module.eval()
        return pipe


def _num_layers(model: Mapping[str, Any]) -> int | None:
    """The transformer's layer count, from its config where it is on this machine (never the network)."""
    from sweeper.rendering.tiny import tiny_models

    model_id = str(model.get("id") or "")
    if model_id in tiny_models():
        return TINY_LAYERS if tiny_models()[model_id] is FAMILY else None
    try:
        count = (model_json(model_id, model.get("revision"), "transformer/config.json") or {}).get("num_layers")
    except (OSError, ValueError):
        return None
    return count if _is_int(count) and count > 0 else None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


FAMILY = SD3()
