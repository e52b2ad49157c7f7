"""Single-file checkpoints: a tiny model written in the original Stability/LDM layout loads
through diffusers' `from_single_file`, offline, with the same weights and the same pixels."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch
from safetensors import safe_open

from single_file import PIPELINE_CLASSES, write_single_file

Pair = tuple[object, object]


@pytest.fixture(scope="module")
def pipelines(tiny_models, tmp_path_factory) -> Callable[[str], Pair]:
    """(from_pretrained, from_single_file) pipelines of a tiny model, loaded once per module."""
    pairs: dict[str, Pair] = {}

    def load(model_name: str) -> Pair:
        if model_name not in pairs:
            path = write_single_file(model_name, tmp_path_factory.mktemp("single-file") / f"{model_name}.safetensors")
            pipeline_class = PIPELINE_CLASSES[model_name]
            config = str(tiny_models[model_name])
            original = pipeline_class.from_pretrained(config, dtype=torch.float32)
            single = pipeline_class.from_single_file(str(path), config=config, dtype=torch.float32)
            pairs[model_name] = (_in_fresh_memory(original), _in_fresh_memory(single))
        return pairs[model_name]

    return load


def _in_fresh_memory(pipe):
    """Copy every weight out of its memory-mapped file into freshly allocated memory.

    CPU matmuls may round differently for differently aligned inputs: a tiny SDXL's
    text_projection read from its mmapped file (36 bytes past a 64-byte boundary) gave
    text_embeds 1 ulp away from the same weights in fresh memory, so equal weights must
    also sit equally aligned to render equal pixels.
    """
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            for tensor in (*component.parameters(), *component.buffers()):
                tensor.data = tensor.data.clone()
    return pipe


@pytest.mark.parametrize(
    "model_name, prefixes",
    [
        ("tiny-sd", {"model.diffusion_model", "first_stage_model", "cond_stage_model.transformer"}),
        ("tiny-sdxl", {"model.diffusion_model", "first_stage_model", "conditioner.embedders.0.transformer", "conditioner.embedders.1.model"}),
    ],
)
def test_the_file_is_in_the_original_layout(model_name, prefixes, tiny_models, tmp_path):
    path = write_single_file(model_name, tmp_path / "model.safetensors")
    with safe_open(path, "pt") as checkpoint:
        keys = set(checkpoint.keys())
    assert {prefix for prefix in prefixes for key in keys if key.startswith(prefix + ".")} == prefixes
    assert all(any(key.startswith(prefix + ".") for prefix in prefixes) for key in keys)


@pytest.mark.parametrize(
    "model_name, component",
    [
        ("tiny-sd", "unet"),
        ("tiny-sd", "vae"),
        ("tiny-sd", "text_encoder"),
        ("tiny-sdxl", "unet"),
        ("tiny-sdxl", "vae"),
        ("tiny-sdxl", "text_encoder"),
        ("tiny-sdxl", "text_encoder_2"),
    ],
)
def test_from_single_file_loads_the_same_weights(pipelines, model_name, component):
    original, single = (getattr(pipe, component).state_dict() for pipe in pipelines(model_name))
    assert single.keys() == original.keys()
    assert [key for key in original if not torch.equal(single[key], original[key])] == []


@pytest.mark.parametrize("model_name", ["tiny-sd", "tiny-sdxl"])
def test_from_single_file_renders_the_same_pixels(pipelines, model_name):
    original, single = pipelines(model_name)
    assert type(single.scheduler) is type(original.scheduler)
    assert np.array_equal(_render(single), _render(original))


def _render(pipe) -> np.ndarray:
    generator = torch.Generator("cpu").manual_seed(0)
    return pipe("a red fox", height=64, width=64, num_inference_steps=2, generator=generator, output_type="np").images
