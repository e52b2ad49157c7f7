"""Full-size FLUX.1-dev with random weights, built in memory (no download, nothing saved).

The transformer (11.9 B parameters), the 16-channel VAE and the scheduler use
the configs of black-forest-labs/FLUX.1-dev (copied below), so the FLOPs and
the memory traffic are those of the real model: honest GPU timings without the
hub. The text encoders are not built: T5-XXL (4.7 B parameters) and CLIP-L run
once per prompt, not once per step, so the pipeline is given random
`prompt_embeds` (B, 512, 4096) and `pooled_prompt_embeds` (B, 768) instead
(`FluxPipeline` takes text_encoder=None and tokenizer=None when the embeddings
are passed). Nothing is saved: the bfloat16 transformer alone is 24 GB; it is
built straight on the GPU in bfloat16 (no float32 copy on the host).

    python scripts/flux_random.py [--size 1024] [--steps 28]   # parameters and FLOPs per image (meta device: nothing allocated)

`scripts/gpu_check.py` renders with it. `tiny=True` builds the same pipeline at
the smallest sizes (1 double + 1 single block, width 32, 16 latent channels)
so the CPU runs every line of that path.
"""

from __future__ import annotations

import argparse
import contextlib
import json

SEED = 0
TEXT_TOKENS = 512  # T5's max_sequence_length for FLUX.1-dev

# transformer/config.json of black-forest-labs/FLUX.1-dev (11.9 B parameters)
TRANSFORMER_CONFIG = dict(
    patch_size=1,
    in_channels=64,
    num_layers=19,
    num_single_layers=38,
    attention_head_dim=128,
    num_attention_heads=24,
    joint_attention_dim=4096,
    pooled_projection_dim=768,
    guidance_embeds=True,
    axes_dims_rope=(16, 56, 56),
)

# vae/config.json (84 M parameters; 16 latent channels, no quant convs)
VAE_CONFIG = dict(
    act_fn="silu",
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    force_upcast=True,
    in_channels=3,
    latent_channels=16,
    layers_per_block=2,
    norm_num_groups=32,
    out_channels=3,
    sample_size=1024,
    scaling_factor=0.3611,
    shift_factor=0.1159,
    up_block_types=["UpDecoderBlock2D"] * 4,
    use_quant_conv=False,
    use_post_quant_conv=False,
)

# scheduler/scheduler_config.json
SCHEDULER_CONFIG = dict(
    base_image_seq_len=256,
    base_shift=0.5,
    max_image_seq_len=4096,
    max_shift=1.15,
    num_train_timesteps=1000,
    shift=3.0,
    use_dynamic_shifting=True,
)

# The smallest pipeline with the same structure, for the CPU.
TINY_TRANSFORMER_CONFIG = {**TRANSFORMER_CONFIG, "num_layers": 1, "num_single_layers": 1, "attention_head_dim": 16,
                           "num_attention_heads": 2, "joint_attention_dim": 32, "pooled_projection_dim": 32,
                           "axes_dims_rope": (4, 6, 6)}
TINY_VAE_CONFIG = {**VAE_CONFIG, "block_out_channels": [8, 8, 8, 8], "layers_per_block": 1, "norm_num_groups": 8, "sample_size": 64}
TINY_TEXT_TOKENS = 8


@contextlib.contextmanager
def _default_dtype(dtype):
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def configs(tiny: bool = False) -> tuple[dict, dict, int]:
    """(transformer config, VAE config, text tokens)."""
    if tiny:
        return TINY_TRANSFORMER_CONFIG, TINY_VAE_CONFIG, TINY_TEXT_TOKENS
    return TRANSFORMER_CONFIG, VAE_CONFIG, TEXT_TOKENS


def build(device: str = "cuda", dtype: str = "bfloat16", tiny: bool = False):
    """The FluxPipeline in memory: real FLUX.1-dev configs (or the tiny ones), random weights (seeded), no text encoders."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    transformer_config, vae_config, _ = configs(tiny)
    torch_dtype = getattr(torch, dtype)
    # Parameters are created on `device` in `dtype` directly: no float32 copy
    # of 12 B parameters on the host (48 GB), and the random init runs on the GPU.
    with torch.random.fork_rng(devices=[] if device in ("cpu", "meta") else None), torch.device(device), _default_dtype(torch_dtype):
        torch.manual_seed(SEED)
        transformer = FluxTransformer2DModel(**transformer_config)
        vae = AutoencoderKL(**vae_config)
    for module in (transformer, vae):
        module.eval().requires_grad_(False)
        if any(parameter.dtype != torch_dtype for parameter in module.parameters()):
            module.to(torch_dtype)
    return FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae, text_encoder=None,
                        tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)


def random_prompt_embeds(pipe, batch: int, device: str, tiny: bool = False):
    """(prompt_embeds (B, text tokens, joint_attention_dim), pooled_prompt_embeds (B, pooled_projection_dim)) in the
    transformer's dtype: what T5-XXL and CLIP-L would hand the transformer, at their real shapes."""
    import torch

    config = pipe.transformer.config
    generator = torch.Generator("cpu").manual_seed(SEED)
    tokens = configs(tiny)[2]
    embeds = torch.randn(batch, tokens, config.joint_attention_dim, generator=generator)
    pooled = torch.randn(batch, config.pooled_projection_dim, generator=generator)
    return embeds.to(device, pipe.transformer.dtype), pooled.to(device, pipe.transformer.dtype)


def transformer_flops(config: dict, image_tokens: int, text_tokens: int) -> int:
    """Multiply-add FLOPs (2 per MAC) of one FluxTransformer2DModel forward for one image, counted from the config:
    every linear layer and both attention matmuls (Q K^T and attention x V); norms, RoPE and activations are left out.

    With D = heads x head_dim and N = image + text tokens, every block, double or single, costs
    24 N D^2 in its linears (double: q, k, v, out and a 4x MLP on each stream; single: q, k, v, a 4x MLP and
    a 5D -> D output) plus 4 N^2 D in attention; the embedders and the per-image modulation add the rest.
    """
    d = config["num_attention_heads"] * config["attention_head_dim"]
    n = image_tokens + text_tokens
    patch_channels = config["in_channels"] * config["patch_size"] ** 2
    per_block = 24 * n * d * d + 4 * n * n * d
    blocks = (config["num_layers"] + config["num_single_layers"]) * per_block
    embedders = (2 * image_tokens * patch_channels * d  # x_embedder
                 + 2 * text_tokens * config["joint_attention_dim"] * d  # context_embedder
                 + 2 * image_tokens * d * patch_channels)  # proj_out
    # Once per image, not per token: timestep/guidance/pooled-text MLPs, each block's AdaLN modulation, norm_out.
    time_text = 2 * (256 * d + d * d) * (2 if config["guidance_embeds"] else 1) + 2 * (config["pooled_projection_dim"] * d + d * d)
    modulation = config["num_layers"] * 2 * 2 * d * 6 * d + config["num_single_layers"] * 2 * d * 3 * d + 2 * d * 2 * d
    return blocks + embedders + time_text + modulation


def image_tokens(size: int, vae_config: dict) -> int:
    """Transformer tokens of one size x size image: the latent is size/8 square, packed 2x2 per token."""
    latent = size // 2 ** (len(vae_config["block_out_channels"]) - 1)
    return (latent // 2) ** 2


def vae_decode_flops(vae_config: dict, size: int) -> int:
    """FLOPs of one image's VAE decode, counted by torch's FLOP counter on the meta device (its convolutions and the
    mid-block attention; nothing is allocated)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        vae = AutoencoderKL(**vae_config)
        latent = size // 2 ** (len(vae_config["block_out_channels"]) - 1)
        with FlopCounterMode(display=False) as counter:
            vae.decode(torch.zeros(1, vae_config["latent_channels"], latent, latent))
    return counter.get_total_flops()


def image_flops(size: int, steps: int, tiny: bool = False) -> dict:
    """FLOPs of one size x size image over `steps` steps: one transformer forward per step (the guidance is
    embedded, no CFG pass), one VAE decode."""
    transformer_config, vae_config, text_tokens = configs(tiny)
    forward = transformer_flops(transformer_config, image_tokens(size, vae_config), text_tokens)
    decode = vae_decode_flops(vae_config, size)
    return {"transformer_forward": forward, "vae_decode": decode, "image": forward * steps + decode}


def parameter_counts(pipe) -> dict[str, int]:
    return {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("transformer", "vae")}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=28)
    args = parser.parse_args(argv)
    flops = image_flops(args.size, args.steps)
    print(json.dumps({**parameter_counts(build("meta", "bfloat16")), **{f"{k}_tflop": round(v / 1e12, 2) for k, v in flops.items()}}))


if __name__ == "__main__":
    main()
