"""Tiny random-weight pipelines for tests, demos and CI.

No machine here reaches a model hub, so sweeper builds its own small SDXL
base, SDXL refiner and SD 1.x pipelines from a fixed seed, saves them with
`save_pretrained` into a cache dir and hands back that dir, which is then
loaded with `from_pretrained` exactly like a real model id.

    python -c "from sweeper.rendering.tiny import tiny_model_dir; print(tiny_model_dir('tiny-sdxl'))"
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

# Bump when a recipe changes: it is part of every tiny image's id (as the
# model revision) and of the cache path, so old renders are never mistaken
# for new ones.
RECIPE_VERSION = "v2"  # v2: text_encoder_2 wider than text_encoder (as in SDXL); tiny-sd has a safety checker
TINY_MODELS = ("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sd")
# Each UNet's cross_attention_dim (the width of the text embeddings it attends to): planning
# refuses a LoRA made for another width without building the model.
TEXT_WIDTHS = {"tiny-sdxl": 32 + 48, "tiny-sdxl-refiner": 48, "tiny-sd": 32}
_SEED = 0


def sweeper_cache() -> Path:
    """sweeper's cache dir: $SWEEPER_CACHE, else ~/.cache/sweeper."""
    return Path(os.environ.get("SWEEPER_CACHE") or Path.home() / ".cache" / "sweeper")


def cache_root() -> Path:
    """Where tiny models are kept."""
    return sweeper_cache() / "tiny" / RECIPE_VERSION


def tiny_model_dir(name: str) -> Path:
    """Return the directory of tiny model `name`, building it on first use."""
    if name not in TINY_MODELS:
        raise ValueError(f"unknown tiny model {name!r}; known: {', '.join(TINY_MODELS)}")
    target = cache_root() / name
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent ranks never see half a model.
    scratch = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        _build(name).save_pretrained(scratch)
        try:
            os.rename(scratch, target)
        except OSError:
            if not (target / "model_index.json").exists():
                raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def _build(name: str):
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(_SEED)
        if name == "tiny-sdxl":
            return _sdxl_base()
        if name == "tiny-sdxl-refiner":
            return _sdxl_refiner()
        return _sd15()


def _tokenizer():
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


def _text_encoder(with_projection: bool, vocab_size: int, tokenizer):
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


def _unet(cross_attention_dim: int, time_ids_dim: int | None):
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


def _vae():
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


def _scheduler():
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


def _sdxl_base():
    from diffusers import StableDiffusionXLPipeline

    tokenizer, vocab_size = _tokenizer()
    return StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(False, vocab_size, tokenizer),
        text_encoder_2=_text_encoder(True, vocab_size, tokenizer),
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=_unet(cross_attention_dim=TEXT_WIDTHS["tiny-sdxl"], time_ids_dim=80),
        scheduler=_scheduler(),
    )


def _sdxl_refiner():
    from diffusers import StableDiffusionXLImg2ImgPipeline

    # The refiner shares the base's text_encoder_2 and vae when loaded next to
    # it; its own copies are the base's, so it is also whole on its own.
    base = _sdxl_base()
    return StableDiffusionXLImg2ImgPipeline(
        vae=base.vae,
        text_encoder=None,
        text_encoder_2=base.text_encoder_2,
        tokenizer=None,
        tokenizer_2=base.tokenizer_2,
        unet=_unet(cross_attention_dim=TEXT_WIDTHS["tiny-sdxl-refiner"], time_ids_dim=72),
        scheduler=_scheduler(),
        requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False,
    )


def _sd15():
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPImageProcessor

    tokenizer, vocab_size = _tokenizer()
    return StableDiffusionPipeline(
        vae=_vae(),
        text_encoder=_text_encoder(False, vocab_size, tokenizer),
        tokenizer=tokenizer,
        unet=_unet(cross_attention_dim=TEXT_WIDTHS["tiny-sd"], time_ids_dim=None),
        scheduler=_scheduler(),
        safety_checker=_safety_checker(),
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
    )


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
