"""Z-Image (Tongyi-MAI): one Qwen3 text encoder, a single-stream DiT, the Flux VAE.

Its `guidance_scale` is real classifier-free guidance whenever it is above 0
(pred = pos + g * (pos - neg), so g is a standard CFG scale minus 1): Turbo runs
at 0, one forward per step, where a negative prompt does nothing. Its prompt
embeddings are lists of one 2-D tensor per prompt, each as long as its own
prompt (padding dropped), never one batched tensor.
"""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.rendering.families._flow import FlowFamily

MAX_SEQUENCE_LENGTH = 512  # the pipeline's default: tokens of the chat-templated prompt


class ZImage(FlowFamily):
    name = "z-image"
    title = "Z-Image"
    pipelines = {"txt2img": "ZImagePipeline", "img2img": "ZImageImg2ImgPipeline", "inpaint": "ZImageInpaintPipeline"}
    index_classes = ("ZImagePipeline", "ZImageImg2ImgPipeline", "ZImageInpaintPipeline")
    keys = ("negative_prompt", "max_sequence_length", "shift", "dynamic_shift", "sigmas")
    tiny = {"tiny-z-image": "base"}
    tiny_version = "v1"
    size_multiple = 16  # the VAE's 8x times the transformer's 2x2 patches: the pipeline raises on others
    # The pipeline always hands its scheduler a sigma list (and mu): these take it; UniPC wants numpy
    # sigmas, DPM++ and the Heun one none at all (they raise on the first call).
    scheduler_classes = ("FlowMatchEulerDiscreteScheduler", "FlowMatchLCMScheduler")

    def uses_cfg(self, spec: Any) -> bool:
        """CFG runs at any guidance above 0 (not above 1 as in SD)."""
        return spec.guidance > 0

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        if values["shift"] is not None and values["dynamic_shift"]:
            raise invalid("shift", values["shift"], "dynamic_shift=true shifts by image size instead, ignoring shift; set one of them")
        if values["max_sequence_length"] is None:
            values["max_sequence_length"] = MAX_SEQUENCE_LENGTH

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        cfg = self.uses_cfg(spec)
        # str arguments: the pipeline chat-templates a prompt list in place
        embeds, negative = pipe.encode_prompt(
            spec.prompt, device=device, do_classifier_free_guidance=cfg, negative_prompt=spec.negative_prompt,
            max_sequence_length=spec.max_sequence_length,
        )
        # img2img and inpaint draw their noise in the embeddings' dtype
        dtype = pipe.transformer.dtype
        found = {"prompt_embeds": [embed.to(dtype) for embed in embeds]}
        if cfg:
            found["negative_prompt_embeds"] = [embed.to(dtype) for embed in negative]
        return found

    def combine(self, per_image: list[dict[str, Any]]) -> dict[str, Any]:
        """Lists joined: one tensor per image, each of its own prompt's length (never concatenated)."""
        return {name: [tensor for parts in per_image for tensor in parts[name]] for name in per_image[0]}

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which of the image's prompts the Qwen tokenizer cuts at max_sequence_length (chat template included)."""
        limit = spec.max_sequence_length
        cut = [name for name in ("prompt", "negative_prompt") if getattr(spec, name) and _tokens(pipe.tokenizer, getattr(spec, name)) > limit]
        return f"{' and '.join(cut)} truncated to max_sequence_length={limit} tokens (chat template included)" if cut else None

    def build_tiny(self, name: str) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, ZImagePipeline

        from sweeper.rendering.tiny import qwen_tokenizer

        tokenizer = qwen_tokenizer()
        return ZImagePipeline(
            # Z-Image-Turbo's scheduler config (the base Z-Image has shift=6.0)
            scheduler=FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, use_dynamic_shifting=False, shift=3.0),
            vae=_tiny_vae(),
            text_encoder=_tiny_text_encoder(tokenizer),
            tokenizer=tokenizer,
            transformer=_tiny_transformer(),
        )


def _tokens(tokenizer: Any, prompt: str) -> int:
    """The prompt's tokens as the pipeline encodes it: in Qwen3's chat template."""
    text = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True, enable_thinking=True)
    return len(tokenizer(text).input_ids)


TEXT_WIDTH = 32  # the tiny Qwen3's hidden size, the transformer's cap_feat_dim (2560 in the real model)


def _tiny_text_encoder(tokenizer: Any) -> Any:
    """Qwen3Model (real: Qwen3-4B, 36 layers); the pipeline takes the second-to-last layer's output."""
    from transformers import Qwen3Config, Qwen3Model

    return Qwen3Model(Qwen3Config(
        hidden_size=TEXT_WIDTH,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        vocab_size=len(tokenizer),
        max_position_embeddings=40960,
        rope_theta=1000000.0,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tokenizer.pad_token_id,
    ))


def _tiny_transformer() -> Any:
    import torch
    from diffusers import ZImageTransformer2DModel

    transformer = ZImageTransformer2DModel(
        all_patch_size=(2,),
        all_f_patch_size=(1,),
        in_channels=16,
        dim=32,
        n_layers=2,
        n_refiner_layers=1,
        n_heads=2,
        n_kv_heads=2,
        norm_eps=1e-5,
        qk_norm=True,
        cap_feat_dim=TEXT_WIDTH,
        rope_theta=256.0,
        t_scale=1000.0,
        axes_dims=[8, 4, 4],  # sums to the head dim (real: [32, 48, 48])
        axes_lens=[1536, 512, 512],  # the real ones: caption positions run along axis 0
    )
    # The pad tokens (filling image and caption sequences up to a multiple of 32, and attended to)
    # start at zeros in diffusers; the real ones are trained: make them count here too.
    with torch.no_grad():
        transformer.x_pad_token.normal_()
        transformer.cap_pad_token.normal_()
    return transformer


def _tiny_vae() -> Any:
    """The Flux VAE's layout (16 latent channels, 8x down, its scaling and shift, no quant convs), narrow."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        block_out_channels=[16, 16, 32, 32],
        layers_per_block=1,
        latent_channels=16,
        norm_num_groups=1,
        sample_size=64,
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
        force_upcast=True,
    )


FAMILY = ZImage()
