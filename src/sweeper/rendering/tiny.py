"""Tiny random-weight pipelines for tests, demos and CI.

No machine here reaches a model hub, so sweeper builds its own small models
of every family (each family module builds its own, from the parts here) from
a fixed seed, saves them with `save_pretrained` into a cache dir and hands back
that dir, which is then loaded with `from_pretrained` exactly like a real model id.

    python -c "from sweeper.rendering.tiny import tiny_model_dir; print(tiny_model_dir('tiny-sdxl'))"
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

_SEED = 0


def tiny_models() -> dict:
    """Every tiny model's name -> its family (each family module lists its own)."""
    from sweeper.rendering.families import tiny_models

    return tiny_models()


def recipe_version(name: str) -> str:
    """The tiny model's recipe version: its revision, so part of its images' ids, and part of its cache path."""
    return tiny_models()[name].tiny_version


def sweeper_cache() -> Path:
    """sweeper's cache dir: $SWEEPER_CACHE, else ~/.cache/sweeper."""
    return Path(os.environ.get("SWEEPER_CACHE") or Path.home() / ".cache" / "sweeper")


def tiny_model_dir(name: str) -> Path:
    """Return the directory of tiny model `name`, building it on first use."""
    if name not in tiny_models():
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(tiny_models())}")
    target = sweeper_cache() / "tiny" / recipe_version(name) / name
    return built_once(target, "model_index.json", lambda scratch: _build(name).save_pretrained(scratch))


def built_once(target: Path, marker: str, build: Callable[[Path], None]) -> Path:
    """`target`, a model dir that `build(dir)` fills, built on first use: once `target/marker` exists it is whole.
    Built beside the target and renamed, so concurrent ranks never see half a model."""
    if (target / marker).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / marker).exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build(name: str):
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(_SEED)
        return tiny_models()[name].build_tiny(name)


def clip_tokenizer():
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    tokens = sorted(alphabet) + [c + "</w>" for c in sorted(alphabet)] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: index for index, token in enumerate(tokens)}
    with tempfile.TemporaryDirectory() as scratch:
        vocab_file = Path(scratch) / "vocab.json"
        merges_file = Path(scratch) / "merges.txt"
        import json

        vocab_file.write_text(json.dumps(vocab))
        merges_file.write_text("#version: 0.2\n")
        tokenizer = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=77)
    return tokenizer, len(vocab)


def clip_text_encoder(with_projection: bool, vocab_size: int, tokenizer):
    """CLIP text encoder: 32 wide; the projected one (SDXL's text_encoder_2) 48 wide.

    Real SDXL's two encoders differ in width (768, 1280), and diffusers'
    single-file loader tells them apart by it: equal widths would load the
    first encoder's weights into both.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(
        hidden_size=48 if with_projection else 32,
        intermediate_size=37,
        num_attention_heads=4,
        num_hidden_layers=5,
        projection_dim=32,
        vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    model_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return model_class(config)


def sd_unet(cross_attention_dim: int, time_ids_dim: int | None):
    from diffusers import UNet2DConditionModel

    sdxl_kwargs = {}
    if time_ids_dim is not None:
        sdxl_kwargs = dict(
            addition_embed_type="text_time",
            addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=time_ids_dim,
        )
    return UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=1,
        **sdxl_kwargs,
    )


def sd_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[16, 16, 32, 32],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        norm_num_groups=1,
        sample_size=64,
    )


def sd_scheduler():
    from diffusers import EulerDiscreteScheduler

    # The real SDXL / SD 1.5 scheduler settings, so swaps behave as they do there.
    return EulerDiscreteScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        num_train_timesteps=1000,
        steps_offset=1,
        timestep_spacing="leading",
    )


def t5_tokenizer():
    """A T5 Unigram tokenizer built here (Flux, SD 3.5): <pad>=0, </s>=1, <unk>=2, then word-start
    pieces and single characters (printable ASCII), 100 <extra_id_N> sentinels at the end as in the
    real one. In transformers 5 T5TokenizerFast is tokenizers-backed: no sentencepiece model needed."""
    import string

    from transformers import T5TokenizerFast

    chars = [c for c in string.printable if not c.isspace()]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    vocab += [("\u2581" + c, -3.0) for c in chars] + [(c, -4.0) for c in chars]
    vocab += [(f"<extra_id_{i}>", 0.0) for i in range(99, -1, -1)]
    return T5TokenizerFast(vocab=vocab, extra_ids=100, model_max_length=512)


# Qwen3's chat template, as far as the pipelines use it (one user message, generation prompt, thinking off).
QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def qwen_tokenizer():
    """A Qwen2 byte-level BPE tokenizer built here (Qwen-Image, Z-Image, Flux.2 Klein): the 256 byte
    symbols, no merges (one token per UTF-8 byte), Qwen's special tokens and chat template; saved
    and loaded once, so it is the tokenizer `from_pretrained` gives back."""
    from tokenizers import AddedToken, pre_tokenizers
    from transformers import Qwen2TokenizerFast

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    tokenizer = Qwen2TokenizerFast(
        vocab=vocab,
        merges=[],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_max_length=131072,
        chat_template=QWEN_CHAT_TEMPLATE,
    )
    tokenizer.add_tokens([AddedToken("<think>", special=False), AddedToken("</think>", special=False)])
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer.save_pretrained(scratch)
        return Qwen2TokenizerFast.from_pretrained(scratch)
