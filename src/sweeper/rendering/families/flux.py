"""Flux.1 (dev, schnell): a CLIP text encoder (pooled) and a T5 one, guidance distilled into the
transformer (dev only), true CFG with a negative prompt, flow-matching schedules."""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.model_files import model_json
from sweeper.rendering.families import SIGMAS
from sweeper.rendering.families._flow import FlowFamily

MAX_SEQUENCE_LENGTH = 512  # T5's prompt budget in FluxPipeline (more raises)
CLIP_WIDTH, T5_WIDTH = 32, 48  # the tiny encoders' widths (real: 768 pooled, 4096)
EULER, UNIPC, DPM = "FlowMatchEulerDiscreteScheduler", "UniPCMultistepScheduler", "DPMSolverMultistepScheduler"
# FluxPipeline hands the scheduler its own sigmas and `mu`: these take both (the solvers on flow sigmas).
# FlowMatchHeun takes no sigmas; FlowMatchLCM (and DPM's SDE) draw step noise without the call's generators.
SCHEDULER_CLASSES = (EULER, UNIPC, DPM)


class Flux(FlowFamily):
    name = "flux"
    title = "Flux.1"
    pipelines = {"txt2img": "FluxPipeline", "img2img": "FluxImg2ImgPipeline", "inpaint": "FluxInpaintPipeline"}
    index_classes = ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline")
    keys = ("negative_prompt", "prompt_2", "negative_prompt_2", "true_cfg", "max_sequence_length", "shift", "dynamic_shift", "sigmas")
    tiny = {"tiny-flux": "dev", "tiny-flux-schnell": "schnell"}
    tiny_version = "v1"
    size_multiple = 16  # the VAE's 8 times the transformer's patches of 2 (FluxPipeline floors other sizes)
    a1111 = {"guidance": "Distilled CFG Scale", "true_cfg": "CFG scale"}  # as Forge writes Flux's
    # sized_modes: all three. Without height/width Flux img2img renders 1024x1024, not at the image's size.

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        """Refuse guidance on schnell, a negative prompt without true CFG, the schedules that raise or
        give NaN, a shift that would not act; fill in true_cfg 1 and max_sequence_length 512."""
        variant = _variant(model, self.tiny)
        guidance = model.get("guidance")
        if variant["guidance_embeds"] is False and isinstance(guidance, (int, float)) and guidance != 0:
            raise invalid("guidance", guidance, f"model={model['name']} is a Flux.1 without distilled guidance (schnell): it ignores guidance; leave it at 0")
        values["true_cfg"] = 1.0 if values["true_cfg"] is None else values["true_cfg"]
        for key in ("negative_prompt", "negative_prompt_2"):
            if model.get(key) is not None and values["true_cfg"] <= 1:
                raise invalid(key, model[key], "Flux.1 reads a negative prompt only with true_cfg > 1 (real CFG, twice the cost a step)")
        length = values["max_sequence_length"]
        if length is not None and length > MAX_SEQUENCE_LENGTH:
            raise invalid("max_sequence_length", length, f"Flux.1's T5 prompt takes at most {MAX_SEQUENCE_LENGTH} tokens")
        values["max_sequence_length"] = MAX_SEQUENCE_LENGTH if length is None else length
        if model.get("scheduler") is not None:
            _check_schedule(values, model["scheduler"], variant["dynamic_shift"])

    def text_width(self, tiny_name: str) -> int | None:
        return None  # the transformer's LoRA keys say whether one fits (load_lora_weights)

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        """The T5 sequence (prompt_2, else prompt) and the pooled CLIP vector (prompt); with true CFG the
        negative's too (an empty negative prompt when none is given: CFG against no prompt)."""
        length = spec.max_sequence_length
        embeds, pooled, _ = pipe.encode_prompt(spec.prompt, prompt_2=spec.prompt_2, device=device, num_images_per_prompt=1, max_sequence_length=length)
        found = {"prompt_embeds": embeds, "pooled_prompt_embeds": pooled}
        if self.uses_cfg(spec):
            negative, negative_pooled, _ = pipe.encode_prompt(
                spec.negative_prompt or "", prompt_2=spec.negative_prompt_2, device=device, num_images_per_prompt=1, max_sequence_length=length,
            )
            found.update(negative_prompt_embeds=negative, negative_pooled_prompt_embeds=negative_pooled)
        return found

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        # guidance always passed: Flux img2img and inpaint default to 7.0, txt2img to 3.5 (schnell ignores it)
        return {"guidance_scale": spec.guidance, "true_cfg_scale": spec.true_cfg, "max_sequence_length": spec.max_sequence_length}

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """The prompts T5 cuts at max_sequence_length, and those CLIP cuts at 77 (its pooled vector only)."""
        t5 = [("prompt_2" if spec.prompt_2 not in (None, spec.prompt) else "prompt", spec.prompt_2 or spec.prompt)]
        if self.uses_cfg(spec):
            own = spec.negative_prompt_2 not in (None, spec.negative_prompt)
            t5.append(("negative_prompt_2" if own else "negative_prompt", spec.negative_prompt_2 or spec.negative_prompt))
        length = spec.max_sequence_length
        cut = [f"{name} truncated to {length} T5 tokens" for name, text in t5 if text and len(pipe.tokenizer_2(text).input_ids) > length]
        limit = pipe.tokenizer.model_max_length
        clip = [name for name in ("prompt", "negative_prompt") if getattr(spec, name) and len(pipe.tokenizer(getattr(spec, name)).input_ids) > limit]
        if clip:
            cut.append(f"{' and '.join(clip)} truncated to {limit} CLIP tokens")
        return "; ".join(cut) if cut else None

    def build_tiny(self, name: str) -> Any:
        from diffusers import FluxPipeline

        from sweeper.rendering.tiny import clip_text_encoder, clip_tokenizer, t5_tokenizer

        dev = self.tiny[name] == "dev"
        tokenizer, vocab_size = clip_tokenizer()
        tokenizer_2 = t5_tokenizer()
        return FluxPipeline(
            scheduler=_tiny_scheduler(dev),
            vae=_tiny_vae(),
            text_encoder=clip_text_encoder(False, vocab_size, tokenizer),  # 32 wide: the pooled vector
            tokenizer=tokenizer,
            text_encoder_2=_tiny_t5(tokenizer_2),
            tokenizer_2=tokenizer_2,
            transformer=_tiny_transformer(guidance_embeds=dev),
        )


def _check_schedule(values: Mapping[str, Any], scheduler: Mapping[str, Any], model_dynamic: bool | None) -> None:
    """Refuse what FluxPipeline's schedule cannot run: it passes every scheduler its own sigmas and the
    image size's `mu`. DPM-Solver asserts dynamic shifting; DPM-Solver and UniPC turn karras / exponential /
    beta flow sigmas into VP ones (157 ...), which give NaN pixels; `shift` is FlowMatchEuler's and acts only
    without dynamic shifting. (These hold for the scheduler classes, whatever flow family runs them.)"""
    name, class_name, kwargs = scheduler["name"], scheduler["class_name"], scheduler.get("kwargs") or {}
    if class_name not in SCHEDULER_CLASSES or (class_name != EULER and not kwargs.get("use_flow_sigmas")):
        fits = f"Flux.1 renders with {EULER} and, on flow sigmas (use_flow_sigmas), {UNIPC} and {DPM}: flow_euler, flow_unipc, flow_dpmpp_2m"
        raise invalid("scheduler", name, f"{class_name}{'' if class_name in SCHEDULER_CLASSES else ' raises or draws its own noise there'}; {fits}")
    dynamic = values["dynamic_shift"] if values["dynamic_shift"] is not None else kwargs.get("use_dynamic_shifting", model_dynamic)
    sigmas = values["sigmas"] or next((sigmas for sigmas, flag in SIGMAS.items() if kwargs.get(flag)), None)  # or the config's own
    if class_name == DPM:
        if dynamic is False:
            raise invalid("dynamic_shift", False, f"scheduler={name} (DPM-Solver) runs Flux.1 with dynamic shifting only; use flow_euler or flow_unipc")
        if sigmas is not None:
            raise invalid("sigmas", sigmas, f"scheduler={name} (DPM-Solver) on flow sigmas gives NaN with {sigmas} sigmas; use flow_euler or flow_unipc")
        if kwargs.get("time_shift_type", "exponential") != "exponential":
            raise invalid("scheduler.kwargs.time_shift_type", kwargs["time_shift_type"], f"scheduler={name} (DPM-Solver) takes the exponential one only")
    if class_name == UNIPC and sigmas in ("exponential", "beta"):
        raise invalid("sigmas", sigmas, f"scheduler={name} (UniPC) on flow sigmas gives NaN with {sigmas} sigmas; karras or flow_euler")
    if class_name == UNIPC and sigmas == "karras" and values["dynamic_shift"] is not None:
        raise invalid("dynamic_shift", values["dynamic_shift"], f"scheduler={name} (UniPC) with karras sigmas shifts nothing")
    if values["shift"] is not None:
        if class_name != EULER:
            raise invalid("shift", values["shift"], f"shift is {EULER}'s (flow_euler); scheduler={name} ignores it")
        if dynamic:
            raise invalid("shift", values["shift"], "this model shifts its schedule by image size (dynamic shifting, as FLUX.1-dev): shift acts only with dynamic_shift=false")


def _variant(model: Mapping[str, Any], tiny: Mapping[str, str]) -> dict[str, bool | None]:
    """Whether the model's transformer embeds distilled guidance (dev) and its scheduler shifts by image
    size, where its configs are on this machine (a tiny model, a local dir, the Hugging Face cache); None where not."""
    model_id = str(model.get("id") or "")
    if model_id in tiny:
        dev = tiny[model_id] == "dev"
        return {"guidance_embeds": dev, "dynamic_shift": dev}
    transformer = _config(model, "transformer/config.json")
    scheduler = _config(model, "scheduler/scheduler_config.json")
    embeds = transformer.get("guidance_embeds")
    dynamic = scheduler.get("use_dynamic_shifting")
    return {"guidance_embeds": embeds if isinstance(embeds, bool) else None, "dynamic_shift": dynamic if isinstance(dynamic, bool) else None}


def _config(model: Mapping[str, Any], file: str) -> dict[str, Any]:
    """A component's config JSON of the model (a single file's `config` dir or hub id), or {} if not here."""
    source = str(model.get("config") or model.get("id") or "")
    try:
        return model_json(source, None if model.get("config") else model.get("revision"), file) or {}
    except (OSError, ValueError):
        return {}


def _tiny_t5(tokenizer: Any) -> Any:
    from transformers import T5Config, T5EncoderModel

    config = T5Config(  # T5 v1.1 style (gated-gelu, untied), as google/t5-v1_1-xxl
        vocab_size=len(tokenizer), d_model=T5_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
        feed_forward_proj="gated-gelu", tie_word_embeddings=False, is_encoder_decoder=False, use_cache=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
    )
    return T5EncoderModel(config)


def _tiny_transformer(guidance_embeds: bool) -> Any:
    from diffusers import FluxTransformer2DModel

    return FluxTransformer2DModel(
        patch_size=1, in_channels=64,  # 16 latent channels x 2x2 packed, as real
        num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_WIDTH, guidance_embeds=guidance_embeds,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim (real: 16, 56, 56 = 128)
    )


def _tiny_vae() -> Any:
    from diffusers import AutoencoderKL

    return AutoencoderKL(  # the real Flux VAE's layout, narrow: scale 8, 16 latent channels, no quant convs
        block_out_channels=[16, 16, 32, 32], in_channels=3, out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4, up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=16, norm_num_groups=1, sample_size=64, use_quant_conv=False, use_post_quant_conv=False,
        scaling_factor=0.3611, shift_factor=0.1159,
    )


def _tiny_scheduler(dev: bool) -> Any:
    from diffusers import FlowMatchEulerDiscreteScheduler

    # The real checkpoints' scheduler_config.json (dev: shift 3 with dynamic shifting; schnell: neither).
    return FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0 if dev else 1.0, use_dynamic_shifting=dev,
        base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096,
    )


FAMILY = Flux()
