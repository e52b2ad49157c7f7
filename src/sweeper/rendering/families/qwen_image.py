"""Qwen-Image: a Qwen2.5-VL text encoder, real (not distilled) CFG as `true_cfg`, flow matching.

Its pipelines run CFG only when a negative prompt is given ("" counts), so planning gives
"" where none is; `guidance_scale` does nothing on any Qwen-Image (no guidance embedding).
Prompt embeddings differ in length per prompt: a batch is right-padded with zeros and masked.
"""

from __future__ import annotations

from typing import Any, Mapping

from sweeper.errors import invalid
from sweeper.rendering.families._flow import FlowFamily

TRUE_CFG = 4.0  # the pipeline's default and the model card's
MAX_SEQUENCE_LENGTH = 512  # the pipeline call's default (its limit is 1024)
GUIDANCE = 1.0  # what the presets set: guidance_scale is not passed, so any other value would be a silent no-op
EULER = "FlowMatchEulerDiscreteScheduler"  # its own; the only scheduler class tried with its pipeline here
TINY_TEXT_WIDTH = 16  # the tiny text encoder's hidden size = its transformer's joint_attention_dim


class QwenImage(FlowFamily):
    name = "qwen-image"
    title = "Qwen-Image"
    pipelines = {
        "txt2img": "QwenImagePipeline",
        "img2img": "QwenImageImg2ImgPipeline",
        "inpaint": "QwenImageInpaintPipeline",
    }
    index_classes = ("QwenImagePipeline", "QwenImageImg2ImgPipeline", "QwenImageInpaintPipeline")
    keys = ("negative_prompt", "true_cfg", "max_sequence_length", "shift", "dynamic_shift", "sigmas")
    tiny = {"tiny-qwen-image": "base"}
    tiny_version = "v1"
    size_multiple = 16  # the VAE's 8 times the transformer's patches of 2 (the pipeline floors other sizes)
    # Its CFG scale is true_cfg; guidance does nothing, so the PNG text leaves it out.
    a1111 = {"true_cfg": "CFG scale", "guidance": None}
    cfg_negative_prompt = ""
    # Its pipeline hands the scheduler its own sigmas and mu, which DPM-Solver, DEIS, SA-Solver and FlowMatchHeun refuse.
    scheduler_classes = (EULER,)

    def uses_cfg(self, spec: Any) -> bool:
        return spec.true_cfg > 1.0

    def check(self, values: dict[str, Any], model: Mapping[str, Any]) -> None:
        guidance = model.get("guidance")
        if isinstance(guidance, (int, float)) and not isinstance(guidance, bool) and guidance != GUIDANCE:
            raise invalid("guidance", guidance, f"{self.title} has no guidance scale (it is not guidance-distilled); "
                          f"its CFG scale is true_cfg (default {TRUE_CFG:g}); leave guidance at {GUIDANCE:g}")
        if values["shift"] is not None:
            # The scheduler ignores `shift` while it shifts by image size (the real model's default).
            if values["dynamic_shift"]:
                raise invalid("shift", values["shift"], "dynamic_shift=true shifts by image size and ignores shift; set dynamic_shift=false")
            values["dynamic_shift"] = False
        if values["true_cfg"] is None:
            values["true_cfg"] = TRUE_CFG
        if values["max_sequence_length"] is None:
            values["max_sequence_length"] = MAX_SEQUENCE_LENGTH

    def encode(self, pipe: Any, spec: Any, device: str) -> dict[str, Any]:
        found = _encoded(pipe, spec.prompt, spec, device, "")
        if self.uses_cfg(spec):
            found.update(_encoded(pipe, spec.negative_prompt, spec, device, "negative_"))
        return found

    def combine(self, per_image: list[dict[str, Any]]) -> dict[str, Any]:
        """Each prompt's embeddings right-padded with zeros to the batch's longest, with 0/1 masks
        (as the pipeline pads a list of prompts); negatives among themselves."""
        import torch

        found = {}
        for prefix in ("", "negative_") if "negative_prompt_embeds" in per_image[0] else ("",):
            embeds = [parts[f"{prefix}prompt_embeds"] for parts in per_image]
            masks = [parts[f"{prefix}prompt_embeds_mask"] for parts in per_image]
            length = max(embed.shape[1] for embed in embeds)
            found[f"{prefix}prompt_embeds"] = torch.cat([torch.nn.functional.pad(embed, (0, 0, 0, length - embed.shape[1])) for embed in embeds])
            found[f"{prefix}prompt_embeds_mask"] = torch.cat([torch.nn.functional.pad(mask, (0, length - mask.shape[1])) for mask in masks])
        return found

    def call_kwargs(self, spec: Any) -> dict[str, Any]:
        return {"true_cfg_scale": spec.true_cfg, "max_sequence_length": spec.max_sequence_length}

    def truncation(self, pipe: Any, spec: Any) -> str | None:
        """Which prompts are cut at max_sequence_length: their tokens after the template's system
        prefix (the prompt's and the template's 5 closing ones) are what it counts."""
        names = ("prompt", "negative_prompt") if self.uses_cfg(spec) else ("prompt",)
        counted = {name: _tokens(pipe, getattr(spec, name)) for name in names}
        cut = [name for name, count in counted.items() if count > spec.max_sequence_length]
        return f"{' and '.join(cut)} truncated to {spec.max_sequence_length} tokens" if cut else None

    def build_tiny(self, name: str) -> Any:
        from diffusers import FlowMatchEulerDiscreteScheduler, QwenImagePipeline

        tokenizer = _tokenizer()
        pipe = QwenImagePipeline(
            transformer=_transformer(),
            vae=_vae(),
            text_encoder=_text_encoder(tokenizer),
            tokenizer=tokenizer,
            scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG),
        )
        prefix = len(tokenizer(pipe.prompt_template_encode.split("{}")[0]).input_ids)
        if prefix != pipe.prompt_template_encode_start_idx:  # diffusers changed its template
            raise RuntimeError(f"tiny tokenizer: the template prefix is {prefix} tokens, the pipeline drops {pipe.prompt_template_encode_start_idx}")
        return pipe


def _encoded(pipe: Any, prompt: str, spec: Any, device: str, prefix: str) -> dict[str, Any]:
    """One prompt's embeddings and mask (encode_prompt gives None for an all-ones mask: made explicit)."""
    import torch

    embeds, mask = pipe.encode_prompt(prompt, device=device, num_images_per_prompt=1, max_sequence_length=spec.max_sequence_length)
    if mask is None:
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
    return {f"{prefix}prompt_embeds": embeds, f"{prefix}prompt_embeds_mask": mask}


def _tokens(pipe: Any, prompt: str) -> int:
    """The embedding length of a prompt before max_sequence_length cuts it."""
    text = pipe.prompt_template_encode.format(prompt)
    return len(pipe.tokenizer(text).input_ids) - pipe.prompt_template_encode_start_idx


# The tiny model: diffusers' tests/pipelines/qwenimage get_dummy_components, with the tokenizer built
# here, a VAE of base_dim 8 (theirs: 24, 16 MB) and the real checkpoint's scheduler config.

# Qwen/Qwen-Image's scheduler/scheduler_config.json (as copied in ai-toolkit and SimpleTuner).
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    shift=1.0,
    use_dynamic_shifting=True,
    base_shift=0.5,
    max_shift=0.9,
    base_image_seq_len=256,
    max_image_seq_len=8192,
    shift_terminal=0.02,
    time_shift_type="exponential",
    invert_sigmas=False,
    stochastic_sampling=False,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
)

# Qwen2-VL's special tokens (ids here are ours; the real ones start at 151643).
_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
# The system prompts of QwenImagePipeline's and QwenImageEditPipeline's templates (diffusers 0.42).
_TEMPLATE_TEXT = (
    "system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of the objects and background:"
    "\nuser\nassistant\n"
    "system\nDescribe the key features of the input image (color, shape, size, texture, objects, background), then explain how the user's text "
    "instruction should alter or modify the image. Generate a new image that meets the user's requirements while maintaining consistency with "
    "the original input where appropriate."
)


def _tokenizer():
    """A Qwen2 byte-level BPE whose merges spell each word of the templates' system prompts as one token.

    Not tiny.qwen_tokenizer() (no merges: one token per byte): the pipeline drops a hard-coded
    `prompt_template_encode_start_idx` = 34 leading hidden states, the template's system prefix as the
    real tokenizer splits it. That one splits the prefix into 149 tokens, so 115 states of the system
    prompt would stay in every prompt's embeddings, silently. Here the prefix is 34 tokens (build_tiny
    checks it); user text is mostly one token per byte.
    """
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2Tokenizer

    vocab = {token: index for index, token in enumerate(_SPECIAL + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    bytes_only = Qwen2Tokenizer(vocab=dict(vocab), merges=[])
    words = [word for word, _ in bytes_only.backend_tokenizer.pre_tokenizer.pre_tokenize_str(_TEMPLATE_TEXT)]
    # "Ġ" words' merges rank first: a bare word's pair ("u s" of "user") must not split "Ġuser".
    words.sort(key=lambda word: not word.startswith("Ġ"))
    merges = []
    for word in words:  # each word merged left to right: "Ġ t", "Ġt h", "Ġth e"
        for i in range(1, len(word)):
            if word[: i + 1] not in vocab:
                merges.append((word[:i], word[i]))
                vocab[word[: i + 1]] = len(vocab)
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, model_max_length=32768)
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in _SPECIAL[1:]], special_tokens=True)
    return tokenizer


def _text_encoder(tokenizer):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = tokenizer.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            hidden_size=TINY_TEXT_WIDTH,
            intermediate_size=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            rope_scaling={"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            rope_theta=1000000.0,
            vocab_size=len(tokenizer),
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=16, num_heads=2, out_hidden_size=TINY_TEXT_WIDTH),
        vocab_size=len(tokenizer),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def _transformer():
    from diffusers import QwenImageTransformer2DModel

    return QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=16,  # 4 latent channels x 2x2 patch
        out_channels=4,
        num_layers=2,
        attention_head_dim=16,
        num_attention_heads=3,
        joint_attention_dim=TINY_TEXT_WIDTH,
        guidance_embeds=False,  # as every released Qwen-Image
        axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
    )


def _vae():
    from diffusers import AutoencoderKLQwenImage

    # 2 spatial downsamples: 4x (real: 8x), so tiny sizes are multiples of 8 (real: 16).
    return AutoencoderKLQwenImage(
        base_dim=8,
        z_dim=4,
        dim_mult=[1, 2, 4],
        num_res_blocks=1,
        temperal_downsample=[False, True],
        latents_mean=[0.0] * 4,
        latents_std=[1.0] * 4,
    )


FAMILY = QwenImage()
