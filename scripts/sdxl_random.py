"""Full-size SDXL base with random weights, built locally (no download).

The UNet, VAE, text encoders and scheduler use the configs of
stabilityai/stable-diffusion-xl-base-1.0 (copied below), so the FLOPs and the
memory traffic are those of the real model: honest GPU timings without the
hub. The tokenizer is sweeper's tiny byte-level one (from the tiny-sdxl dir),
and both text encoders get its vocab size instead of 49408: the embedding
tables shrink (~100 M parameters less), the compute does not change.

    python scripts/sdxl_random.py [--device cuda] [--dtype bfloat16]   # prints the dir

The pipeline is saved with `save_pretrained` into
$SWEEPER_CACHE/sdxl-random/<version>-<dtype> (else ~/.cache/sweeper/...), and
sweeper loads it like any local model dir:

    python -m sweeper -m model=sdxl model.id=<dir> model.name=sdxl-random ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

VERSION = "v1"
SEED = 0

# unet/config.json of stabilityai/stable-diffusion-xl-base-1.0 (2.57 B parameters)
UNET_CONFIG = dict(
    act_fn="silu",
    addition_embed_type="text_time",
    addition_embed_type_num_heads=64,
    addition_time_embed_dim=256,
    attention_head_dim=[5, 10, 20],
    block_out_channels=[320, 640, 1280],
    center_input_sample=False,
    class_embed_type=None,
    class_embeddings_concat=False,
    conv_in_kernel=3,
    conv_out_kernel=3,
    cross_attention_dim=2048,
    cross_attention_norm=None,
    down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
    downsample_padding=1,
    dual_cross_attention=False,
    encoder_hid_dim=None,
    encoder_hid_dim_type=None,
    flip_sin_to_cos=True,
    freq_shift=0,
    in_channels=4,
    layers_per_block=2,
    mid_block_only_cross_attention=None,
    mid_block_scale_factor=1,
    mid_block_type="UNetMidBlock2DCrossAttn",
    norm_eps=1e-05,
    norm_num_groups=32,
    num_attention_heads=None,
    num_class_embeds=None,
    only_cross_attention=False,
    out_channels=4,
    projection_class_embeddings_input_dim=2816,
    resnet_out_scale_factor=1.0,
    resnet_skip_time_act=False,
    resnet_time_scale_shift="default",
    sample_size=128,
    time_cond_proj_dim=None,
    time_embedding_act_fn=None,
    time_embedding_dim=None,
    time_embedding_type="positional",
    timestep_post_act=None,
    transformer_layers_per_block=[1, 2, 10],
    up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
    upcast_attention=None,
    use_linear_projection=True,
)

# vae/config.json (84 M parameters)
VAE_CONFIG = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    force_upcast=True,
    in_channels=3,
    latent_channels=4,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=1024,
    scaling_factor=0.13025,
    up_block_types=["UpDecoderBlock2D"] * 4,
)

# text_encoder/config.json: CLIP ViT-L/14 text tower (CLIPTextModel)
TEXT_ENCODER_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    max_position_embeddings=77,
    hidden_act="quick_gelu",
    layer_norm_eps=1e-05,
    projection_dim=768,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
)

# text_encoder_2/config.json: OpenCLIP ViT-bigG/14 text tower (CLIPTextModelWithProjection)
TEXT_ENCODER_2_CONFIG = dict(
    hidden_size=1280,
    intermediate_size=5120,
    num_attention_heads=20,
    num_hidden_layers=32,
    max_position_embeddings=77,
    hidden_act="gelu",
    layer_norm_eps=1e-05,
    projection_dim=1280,
    attention_dropout=0.0,
    dropout=0.0,
    initializer_factor=1.0,
    initializer_range=0.02,
)

# scheduler/scheduler_config.json
SCHEDULER_CONFIG = dict(
    beta_end=0.012,
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    interpolation_type="linear",
    num_train_timesteps=1000,
    prediction_type="epsilon",
    steps_offset=1,
    timestep_spacing="leading",
    trained_betas=None,
    use_karras_sigmas=False,
)


def cache_dir(dtype: str) -> Path:
    root = os.environ.get("SWEEPER_CACHE") or Path.home() / ".cache" / "sweeper"
    return Path(root) / "sdxl-random" / f"{VERSION}-{dtype}"


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def build(device: str = "cpu", dtype: str = "bfloat16"):
    """The pipeline in memory: real SDXL configs, random weights (seeded), tiny tokenizer."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from sweeper.rendering.tiny import tiny_model_dir

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir("tiny-sdxl") / "tokenizer")
    special = dict(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch_dtype = getattr(torch, dtype)
    # Parameters are created on `device` in `dtype` directly: no fp32 copy of
    # 3.5 B parameters on the host (14 GB), and on a GPU the init is seconds.
    with torch.random.fork_rng(devices=[] if device == "cpu" else None), torch.device(device), _default_dtype(torch_dtype):
        torch.manual_seed(SEED)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIG, **special))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TEXT_ENCODER_2_CONFIG, **special))
        unet = UNet2DConditionModel(**UNET_CONFIG)
        vae = AutoencoderKL(**VAE_CONFIG)
    components = dict(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, unet=unet)
    for module in components.values():
        module.eval()
        if any(parameter.dtype != torch_dtype for parameter in module.parameters()):
            module.to(torch_dtype)
    return StableDiffusionXLPipeline(
        **components,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        scheduler=EulerDiscreteScheduler(**SCHEDULER_CONFIG),
        force_zeros_for_empty_prompt=True,
    )


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae", "text_encoder", "text_encoder_2")}


def sdxl_random_dir(device: str = "cpu", dtype: str = "bfloat16", log=print) -> Path:
    """The saved pipeline's dir, built (on `device`, in `dtype`) and saved on first use."""
    target = cache_dir(dtype)
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    pipe = build(device, dtype)
    counts = parameter_counts(pipe)
    log(f"sdxl-random: built on {device} in {dtype} in {time.perf_counter() - tic:.1f} s; parameters: "
        + ", ".join(f"{name} {count / 1e6:.0f} M" for name, count in counts.items()))
    scratch = Path(tempfile.mkdtemp(prefix=".sdxl-random-", dir=target.parent))
    try:
        tic = time.perf_counter()
        pipe.save_pretrained(scratch)
        del pipe
        os.rename(scratch, target)
        log(f"sdxl-random: saved to {target} in {time.perf_counter() - tic:.1f} s")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return target


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="where the random weights are made (cuda is much faster)")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"], help="the dtype saved")
    parser.add_argument("--count", action="store_true", help="only count parameters (meta device, nothing saved)")
    args = parser.parse_args(argv)
    if args.count:
        print(parameter_counts(build("meta", args.dtype)))
        return
    print(sdxl_random_dir(args.device, args.dtype, log=lambda message: print(message, file=sys.stderr)))


if __name__ == "__main__":
    main()
