"""Write a tiny pipeline as one single-file checkpoint in the original Stability/LDM layout.

Real single-file checkpoints (civitai, the original Stability repos) name their
tensors as the original code did: `model.diffusion_model.*` (UNet),
`first_stage_model.*` (VAE), `cond_stage_model.transformer.*` (SD 1.x CLIP) or
`conditioner.embedders.0.transformer.*` and `conditioner.embedders.1.model.*`
(SDXL's CLIP and OpenCLIP encoders). This is the inverse of what diffusers'
`from_single_file` converts back (diffusers/loaders/single_file_utils.py), so a
tiny model can stand in for such a checkpoint in tests.
"""

from __future__ import annotations

from pathlib import Path

import diffusers
import torch
from safetensors.torch import save_file

from sweeper.rendering.tiny import tiny_model_dir

PIPELINE_CLASSES = {"tiny-sd": diffusers.StableDiffusionPipeline, "tiny-sdxl": diffusers.StableDiffusionXLPipeline}

StateDict = dict[str, torch.Tensor]

# diffusers ResnetBlock2D layer -> the UNet's ResBlock layer.
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_OUTER = {
    "conv_in": "input_blocks.0.0",
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "add_embedding.linear_1": "label_emb.0.0",
    "add_embedding.linear_2": "label_emb.0.2",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}
# diffusers VAE mid-block attention -> the VAE's AttnBlock (1x1 convolutions).
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
# diffusers CLIP encoder layer -> OpenCLIP residual block (the q/k/v projections are fused separately).
_OPEN_CLIP_LAYER = {
    "self_attn.out_proj": "attn.out_proj",
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
}


def write_single_file(model_name: str, path: Path) -> Path:
    """Save tiny model `model_name` ("tiny-sd" or "tiny-sdxl") as one original-layout .safetensors file at `path`."""
    pipe = PIPELINE_CLASSES[model_name].from_pretrained(tiny_model_dir(model_name), dtype=torch.float32)
    checkpoint = {
        **_prefixed("model.diffusion_model.", unet_to_ldm(pipe.unet)),
        **_prefixed("first_stage_model.", vae_to_ldm(pipe.vae)),
    }
    if model_name == "tiny-sd":
        checkpoint.update(_prefixed("cond_stage_model.transformer.", clip_to_ldm(pipe.text_encoder)))
    else:
        checkpoint.update(_prefixed("conditioner.embedders.0.transformer.", clip_to_ldm(pipe.text_encoder)))
        checkpoint.update(_prefixed("conditioner.embedders.1.model.", open_clip_to_ldm(pipe.text_encoder_2)))
    save_file({key: tensor.contiguous() for key, tensor in checkpoint.items()}, path)
    return path


def unet_to_ldm(unet: diffusers.UNet2DConditionModel) -> StateDict:
    """The UNet's state dict named as the original `openaimodel.UNetModel` names it."""
    # The original counts a block's down/upsampler as one more layer of that block.
    per_block = unet.config.layers_per_block + 1
    up_has_attention = ["CrossAttn" in block_type for block_type in unet.config.up_block_types]

    def ldm_key(key: str) -> str:
        match key.split("."):
            case ["down_blocks", block, "resnets", layer, name, *rest]:
                return _join("input_blocks", 1 + int(block) * per_block + int(layer), 0, _UNET_RESNET[name], *rest)
            case ["down_blocks", block, "attentions", layer, *rest]:
                return _join("input_blocks", 1 + int(block) * per_block + int(layer), 1, *rest)
            case ["down_blocks", block, "downsamplers", "0", "conv", param]:
                return _join("input_blocks", (int(block) + 1) * per_block, 0, "op", param)
            case ["mid_block", "resnets", layer, name, *rest]:
                return _join("middle_block", 2 * int(layer), _UNET_RESNET[name], *rest)
            case ["mid_block", "attentions", "0", *rest]:
                return _join("middle_block", 1, *rest)
            case ["up_blocks", block, "resnets", layer, name, *rest]:
                return _join("output_blocks", int(block) * per_block + int(layer), 0, _UNET_RESNET[name], *rest)
            case ["up_blocks", block, "attentions", layer, *rest]:
                return _join("output_blocks", int(block) * per_block + int(layer), 1, *rest)
            case ["up_blocks", block, "upsamplers", "0", "conv", param]:
                last_layer = (int(block) + 1) * per_block - 1
                return _join("output_blocks", last_layer, 2 if up_has_attention[int(block)] else 1, "conv", param)
            case [*module, param] if ".".join(module) in _UNET_OUTER:
                return _join(_UNET_OUTER[".".join(module)], param)
        raise KeyError(f"no original-layout name for UNet key {key!r}")

    return {ldm_key(key): tensor for key, tensor in unet.state_dict().items()}


def vae_to_ldm(vae: diffusers.AutoencoderKL) -> StateDict:
    """The VAE's state dict named as the original `AutoencoderKL` names it."""
    num_up_blocks = len(vae.config.up_block_types)

    def resnet(name: str) -> str:
        return "nin_shortcut" if name == "conv_shortcut" else name

    def ldm_key(key: str) -> str:
        match key.split("."):
            case [coder, "down_blocks", block, "resnets", layer, name, param]:
                return _join(coder, "down", block, "block", layer, resnet(name), param)
            case [coder, "down_blocks", block, "downsamplers", "0", "conv", param]:
                return _join(coder, "down", block, "downsample", "conv", param)
            # The original numbers the decoder's up blocks from the lowest resolution up.
            case [coder, "up_blocks", block, "resnets", layer, name, param]:
                return _join(coder, "up", num_up_blocks - 1 - int(block), "block", layer, resnet(name), param)
            case [coder, "up_blocks", block, "upsamplers", "0", "conv", param]:
                return _join(coder, "up", num_up_blocks - 1 - int(block), "upsample", "conv", param)
            case [coder, "mid_block", "resnets", layer, name, param]:
                return _join(coder, "mid", f"block_{int(layer) + 1}", resnet(name), param)
            case [coder, "mid_block", "attentions", "0", *module, param]:
                return _join(coder, "mid", "attn_1", _VAE_ATTENTION[".".join(module)], param)
            case [coder, "conv_norm_out", param]:
                return _join(coder, "norm_out", param)
            case ["encoder" | "decoder", "conv_in" | "conv_out", _] | ["quant_conv" | "post_quant_conv", _]:
                return key
        raise KeyError(f"no original-layout name for VAE key {key!r}")

    def ldm_tensor(key: str, tensor: torch.Tensor) -> torch.Tensor:
        # The original attention's q/k/v/proj_out are 1x1 convolutions, not linear layers.
        is_attention_linear = ".mid_block.attentions." in key and key.endswith(".weight") and tensor.ndim == 2
        return tensor[:, :, None, None] if is_attention_linear else tensor

    return {ldm_key(key): ldm_tensor(key, tensor) for key, tensor in vae.state_dict().items()}


def clip_to_ldm(text_encoder: torch.nn.Module) -> StateDict:
    """A CLIPTextModel as the original code held it: a transformers `CLIPTextModel` (keys under `text_model.`).

    transformers >= 5.6 drops the `text_model.` level from CLIPTextModel's own keys; the original layout keeps it.
    """
    return {f"text_model.{key.removeprefix('text_model.')}": tensor for key, tensor in text_encoder.state_dict().items()}


def open_clip_to_ldm(text_encoder: torch.nn.Module) -> StateDict:
    """A CLIPTextModelWithProjection in OpenCLIP's layout: fused q/k/v, a bare transposed `text_projection`."""
    state = dict(text_encoder.state_dict())
    out = {
        "token_embedding.weight": state.pop("text_model.embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("text_model.embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("text_model.final_layer_norm.weight"),
        "ln_final.bias": state.pop("text_model.final_layer_norm.bias"),
        # OpenCLIP multiplies by it from the right: x @ text_projection.
        "text_projection": state.pop("text_projection.weight").T,
    }
    for index in range(text_encoder.config.num_hidden_layers):
        layer, block = f"text_model.encoder.layers.{index}", f"transformer.resblocks.{index}"
        for param in ("weight", "bias"):
            fused = [state.pop(f"{layer}.self_attn.{name}_proj.{param}") for name in ("q", "k", "v")]
            out[f"{block}.attn.in_proj_{param}"] = torch.cat(fused)
            for ours, theirs in _OPEN_CLIP_LAYER.items():
                out[f"{block}.{theirs}.{param}"] = state.pop(f"{layer}.{ours}.{param}")
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder keys {sorted(state)}")
    return out


def _prefixed(prefix: str, state: StateDict) -> StateDict:
    return {prefix + key: tensor for key, tensor in state.items()}


def _join(*parts: object) -> str:
    return ".".join(str(part) for part in parts)
