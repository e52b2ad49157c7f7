"""Tiny random-weight scorers for tests and demos, built offline like the tiny pipelines (rendering/tiny.py).

    tiny-clip       a CLIPModel 32 wide (2 layers each side, 32-px images) projecting to 8 dims, the project's
                    CLIP tokenizer, a CLIPImageProcessor at 32 px: saved with save_pretrained, loaded with
                    from_pretrained. 8 dims: a set of 9 images is enough for a Frechet distance on them (sets.py)
    tiny-aesthetic  the LAION aesthetic predictor's MLP on tiny-clip's 8-dim embedding, as safetensors
"""

from __future__ import annotations

from pathlib import Path

from sweeper.rendering.tiny import built_once, clip_tokenizer, sweeper_cache

RECIPE = "2"  # bump when a tiny scorer changes: its weights, so its revision, change with it
TINY_SCORERS = ("tiny-clip", "tiny-aesthetic")
WIDTH = 32
EMBED_DIM = 8
IMAGE_SIZE = 32
_SEED = 0
_SHARED = 1.0


def tiny_scorer_dir(name: str) -> Path:
    """The dir of tiny scorer `name`, built on first use."""
    if name not in TINY_SCORERS:
        raise ValueError(f"unknown tiny scorer {name!r}; known: {', '.join(TINY_SCORERS)}")
    target = sweeper_cache() / "tiny-scorers" / RECIPE / name
    return built_once(target, "model.safetensors", _build_clip if name == "tiny-clip" else _build_aesthetic)


def _build_clip(folder: Path) -> None:
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    tokenizer, vocab_size = clip_tokenizer()
    text = dict(
        hidden_size=WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=vocab_size,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    vision = dict(hidden_size=WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, image_size=IMAGE_SIZE, patch_size=8)
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM)
    with torch.random.fork_rng():
        torch.manual_seed(_SEED)
        model = CLIPModel(config)
    # Random towers give random cosines, half of them below 0 (a CLIP score of 0): a direction both
    # embeddings share (one projection, one bias after each final layer norm) keeps them above 0,
    # still moved by the pixels and the prompt.
    with torch.no_grad():
        model.text_projection.weight.copy_(model.visual_projection.weight)
        model.vision_model.post_layernorm.bias.fill_(_SHARED)
        model.text_model.final_layer_norm.bias.fill_(_SHARED)
    image_processor = CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
    CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    model.save_pretrained(folder)


def _build_aesthetic(folder: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from sweeper.scoring.metrics import aesthetic_head

    with torch.random.fork_rng():
        torch.manual_seed(_SEED)
        head = aesthetic_head(EMBED_DIM)
    save_file({name: tensor.contiguous() for name, tensor in head.state_dict().items()}, str(folder / "model.safetensors"))
