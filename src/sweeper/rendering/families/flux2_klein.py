"""FLUX.2 [klein]: a Qwen3 text encoder, a Flux.2 transformer, step-distilled and base checkpoints.

The distilled checkpoints (FLUX.2-klein-4B, -9B) run no guidance at all: diffusers ignores
guidance_scale there, so a guidance other than the preset's 1.0, or a negative prompt, is
refused. The base checkpoints (FLUX.2-klein-base-*) run true CFG when guidance > 1, against the
negative prompt's embeddings ("" by default). Which one a model is, its model_index.json says
(`is_distilled`). The pipeline computes its own timestep shift from the image size and the
steps (`mu`), so the scheduler's `shift` does nothing and is not a key of this family.
"""

from __future__ import annotations

import numbers
from pathlib import Path
from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.planning.spec import SINGLE_FILE_SUFFIXES
from sweeper.rendering.families import _model_index
from sweeper.rendering.families._flow import FlowFamily

DISTILLED_GUIDANCE = 1.0  # what the distilled presets run: no guidance
MAX_SEQUENCE_LENGTH = 512  # the pipeline's default, as BFL runs it
TEXT_HIDDEN = 16  # the tiny Qwen3's width; its transformer takes three of its layers side by side


class Flux2Klein(FlowFamily):
    name = "flux2-klein"
    title = "Flux.2 Klein"
    pipelines = {"txt2img": "Flux2KleinPipeline", "inpaint": "Flux2KleinInpaintPipeline"}  # diffusers has no img2img for it
    index_classes = ("Flux2KleinPipeline", "Flux2KleinInpaintPipeline")
    keys = ("negative_prompt", "max_sequence_length", "dynamic_shift", "sigmas")
    sized_modes = ("txt2img", "inpaint")
    size_multiple = 16  # 8x VAE, then 2x2 latent patches: the pipeline floors other sizes silently
    tiny = {"tiny-flux2-klein": "distilled", "tiny-flux2-klein-base": "base"}
    tiny_version = "v1"
    # UniPC and DPM-Solver on flow sigmas raise in its img2img / inpaint or give NaN with sigma schedules
    scheduler_classes = ("FlowMatchEulerDiscreteScheduler",)

    # Planning (no torch).
    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        name = model["name"]
        if model["id"].endswith(SINGLE_FILE_SUFFIXES):
            raise invalid("model.id", model["id"], f"{self.title} loads from a diffusers dir or hub id only (diffusers has no single-file loader for it)")
        guidance, negative = model.get("guidance"), model.get("negative_prompt")
        if self.distilled(model["id"], model.get("revision")):
            if isinstance(guidance, numbers.Number) and not isinstance(guidance, bool) and guidance != DISTILLED_GUIDANCE:
                raise invalid("guidance", guidance, f"model={name} is {self.title} step-distilled, which runs no guidance (diffusers ignores it); "
                              f"leave it at {DISTILLED_GUIDANCE:g}, or use a base model (FLUX.2-klein-base-*) for true CFG")
            if negative is not None:
                raise invalid("negative_prompt", _short(negative), f"model={name} is {self.title} step-distilled, which runs no CFG, so a negative prompt does nothing")
        elif negative is not None and isinstance(guidance, numbers.Number) and guidance <= 1:
            raise invalid("negative_prompt", _short(negative), f"{self.title} runs CFG (with the negative prompt) only at guidance > 1, not {guidance}")
        if values["max_sequence_length"] is None:
            values["max_sequence_length"] = MAX_SEQUENCE_LENGTH

    def distilled(self, model_id: str, revision: str | None) -> bool:
        """Whether the model is step-distilled: its model_index.json's `is_distilled` where it is on
        this machine; else by BFL's names (the undistilled ones are FLUX.2-klein-base-*)."""
        if model_id in self.tiny:
            return self.tiny[model_id] == "distilled"
        index = _model_index(model_id, revision)
        if index is not None:
            return index.get("is_distilled") is True
        return "base" not in Path(model_id).name.lower().split("-")

    # Rendering.
    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        if pipe.config.is_distilled and (spec.guidance != DISTILLED_GUIDANCE or spec.negative_prompt is not None):
            raise RuntimeError(f"{spec.model_id} is step-distilled (its model_index.json says so), which runs no guidance; plan it with guidance={DISTILLED_GUIDANCE:g}")
        # Keywords only: the pipelines' first positional argument is `image`.
        embeds, _ = pipe.encode_prompt(prompt=spec.prompt, device=device, max_sequence_length=spec.max_sequence_length)
        found = {"prompt_embeds": embeds}
        if self.uses_cfg(spec):  # "" as the pipeline's own default, so a batch may mix images with and without one
            negative = spec.negative_prompt or ""
            found["negative_prompt_embeds"] = pipe.encode_prompt(prompt=negative, device=device, max_sequence_length=spec.max_sequence_length)[0]
        return found

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        return {"guidance_scale": spec.guidance, "max_sequence_length": spec.max_sequence_length}

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which prompts the Qwen3 tokenizer cuts at max_sequence_length (counted on the chat text it is given)."""
        names = ("prompt", "negative_prompt") if self.uses_cfg(spec) else ("prompt",)
        limit = spec.max_sequence_length
        cut = [name for name in names if getattr(spec, name) and _tokens(pipe.tokenizer, getattr(spec, name)) > limit]
        return f"{' and '.join(cut)} truncated to {limit} tokens" if cut else None

    def build_tiny(self, name: str) -> Any:
        from diffusers import Flux2KleinPipeline

        from sweeper.rendering.tiny import qwen_tokenizer

        tokenizer = qwen_tokenizer()
        return Flux2KleinPipeline(
            scheduler=_scheduler(),
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer),
            tokenizer=tokenizer,
            transformer=_transformer(),
            is_distilled=self.tiny[name] == "distilled",
        )


def _short(value: Any) -> Any:
    return value[:80] if isinstance(value, str) else value


def _tokens(tokenizer: Any, prompt: str) -> int:
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=False)
    return len(tokenizer(text).input_ids)


def _text_encoder(tokenizer):
    """Qwen3 with 28 layers, so the pipeline's text_encoder_out_layers (9, 18, 27) are raw layer
    outputs as in the real 36-layer one (layer 27 of 27 would be the final norm's)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_HIDDEN,
        intermediate_size=32,
        num_hidden_layers=28,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=8,
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        initializer_range=0.2,  # the default 0.02 passes a prompt on too faintly to show in the pixels
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    return Qwen3ForCausalLM(config)


def _transformer():
    import torch
    from diffusers import Flux2Transformer2DModel

    transformer = Flux2Transformer2DModel(
        patch_size=1,
        in_channels=32,  # 4 x the VAE's 8 latent channels (2x2 patches)
        num_layers=1,
        num_single_layers=1,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,  # klein has no guidance embedding
    )
    # Random attention over ~500 padded text tokens is near uniform: the prompt and the init image
    # barely show. QK-norm weights of 3 sharpen it (reference images change pixels ~10x more).
    with torch.no_grad():
        for name, parameter in transformer.named_parameters():
            if any(f".{norm}." in name for norm in ("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
                parameter.fill_(3.0)
    return transformer


def _vae():
    """Four blocks: vae_scale_factor 8 as on the real model, so sizes are multiples of 16 there and here."""
    from diffusers import AutoencoderKLFlux2

    return AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 8, 16, 16),
        layers_per_block=1,
        latent_channels=8,
        norm_num_groups=4,
        sample_size=64,
    )


def _scheduler():
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True)  # the real checkpoints'


FAMILY = Flux2Klein()
