"""Flux.1 (rendering/families/flux.py) through the real CLI: one zipped sweep of the tiny dev and
schnell models over the family's own axes (distilled guidance, true CFG and its negative prompt,
max_sequence_length, the T5 prompt, sigma schedules, shift, dynamic shift, the flow schedulers, LoRA,
img2img, inpaint), whose pixels change where a value should change them and not where it should not;
its manifest and PNG text (Forge's names); replay; a batch equal to each image alone; and the
refusals, each one line before anything loads."""

from __future__ import annotations

import argparse
import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import only_dir, refused_in_one_line, run_cli
from sweeper import replay
from sweeper.rendering import families

PROMPTS = "[a red fox,a blue car]"  # every job renders both prompts in one call
LORA = "flux_a.safetensors"
# What each job changes from the base job (tiny-flux, its preset, flow_euler); the jobs are zipped, in this order.
JOBS = {
    "base": {},
    "guidance": {"guidance": 1.0},
    "true_cfg": {"true_cfg": 4},  # no negative prompt: CFG against the empty prompt
    "negative": {"true_cfg": 4, "negative_prompt": "blurry"},
    "short_t5": {"max_sequence_length": 64, "prompt_2": "LONG"},  # a T5 prompt of 80 tokens: cut, and said so
    "default_t5": {"max_sequence_length": "null"},  # the family fills in 512
    "karras": {"sigmas": "karras"},
    "static": {"dynamic_shift": "false"},
    "shift": {"dynamic_shift": "false", "shift": 2},
    "unipc": {"scheduler": "flow_unipc"},
    "dpm": {"scheduler": "flow_dpmpp_2m"},
    "t5_prompt": {"prompt_2": "a green tree in the snow"},
    "lora": {"lora": "LORA"},
    "lora_half": {"lora": "LORA", "lora_scale": 0.5},
    "lora_off": {"lora": "LORA", "lora_scale": 0},
    "schnell": {"model": "tiny-flux-schnell", "guidance": 0},
    "img2img": {"mode": "img2img", "init_image": "INIT"},
    "inpaint": {"mode": "inpaint", "init_image": "INIT", "mask_image": "MASK"},
}
# max_sequence_length 128 in all but one job: T5's 512 tokens are most of a tiny call.
BASE = {"model": "tiny-flux", "guidance": 3.5, "true_cfg": "null", "negative_prompt": "null", "max_sequence_length": 128, "sigmas": "null",
        "dynamic_shift": "null", "shift": "null", "scheduler": "auto", "prompt_2": "null", "lora": "null", "lora_scale": 1.0,
        "mode": "txt2img", "init_image": "null", "mask_image": "null"}


def _make_lora(path) -> None:
    """A random rank-4 adapter on the tiny dev transformer's attention, saved as diffusers saves Flux LoRAs."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sweeper.rendering.tiny import tiny_model_dir

    transformer = FluxTransformer2DModel.from_pretrained(tiny_model_dir("tiny-flux") / "transformer")
    targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
    with torch.random.fork_rng():
        torch.manual_seed(1)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))  # B != 0: it acts
    FluxPipeline.save_lora_weights(path.parent, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name=path.name)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """The sweep's dir, manifest rows by job name, and where its LoRA and images are."""
    root = tmp_path_factory.mktemp("flux")
    inputs = root / "inputs"
    inputs.mkdir()
    _make_lora(inputs / LORA)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((64, 64, 3)) * 255).astype(np.uint8)).save(inputs / "init.png")
    Image.fromarray(np.pad(np.full((32, 32), 255, np.uint8), 16)).save(inputs / "mask.png")
    where = {"LONG": "tree" * 20, "LORA": str(inputs / LORA), "INIT": str(inputs / "init.png"), "MASK": str(inputs / "mask.png")}
    axes = {key: ",".join(str(where.get(job.get(key, value), job.get(key, value))) for job in JOBS.values()) for key, value in BASE.items()}
    args = ["-m", f"prompt={PROMPTS}", "seed=0", "name=flux", *(f"{key}={values}" for key, values in axes.items()),
            f"hydra.sweeper.zip=[[{','.join(BASE)}]]"]
    done = run_cli(*args, cwd=root, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    out = only_dir(root / "outputs" / "sweeps")
    df = pd.read_parquet(out / "manifest.parquet")
    assert len(df) == 2 * len(JOBS) and set(df.status) == {"ok"}
    rows = {name: df[df.job_num == num].sort_values("prompt") for num, name in enumerate(JOBS)}
    return out, rows, inputs


def pixels(out, rows) -> np.ndarray:
    return np.stack([np.asarray(Image.open(out / path), dtype=np.int16) for path in rows.path])


def test_each_axis_changes_the_pixels_and_what_should_not_does_not(sweep):
    out, rows, _ = sweep
    image = {name: pixels(out, job) for name, job in rows.items()}
    changes = [("guidance", "base"), ("true_cfg", "base"), ("negative", "true_cfg"), ("short_t5", "base"), ("default_t5", "base"), ("karras", "base"),
               ("static", "base"), ("shift", "static"), ("unipc", "base"), ("dpm", "base"), ("t5_prompt", "base"), ("lora", "base"),
               ("lora_half", "lora"), ("lora_half", "base"), ("schnell", "base"), ("img2img", "base"), ("inpaint", "img2img")]
    for a, b in changes:
        assert np.abs(image[a] - image[b]).max() > 0, f"{a} renders as {b}"
    assert np.array_equal(image["lora_off"], image["base"])  # weight 0: as without
    assert not np.array_equal(image["base"][0], image["base"][1])  # the prompt acts


def test_the_manifest_and_png_text_say_what_ran(sweep):
    out, rows, inputs = sweep
    base = rows["base"].iloc[0]
    assert (base.model, base.guidance, base.true_cfg, base.max_sequence_length) == ("tiny-flux", 3.5, 1.0, 128)
    assert (base.steps, base.base_steps, base["dtype"], base.scheduler, base.batch_size) == (4, 4, "float32", "flow_euler", 2)
    assert pd.isna(base.negative_prompt)
    assert rows["img2img"].iloc[0].base_steps == 4  # Flux runs steps - int(steps x (1 - strength 0.8)) = 4 (SDXL: int(4 x 0.8) = 3)
    assert rows["unipc"].iloc[0].base_steps == rows["dpm"].iloc[0].base_steps == 4
    negative = rows["negative"].iloc[0]
    assert (negative.negative_prompt, negative.true_cfg) == ("blurry", 4.0)
    assert (rows["static"].iloc[0]["dynamic_shift"], rows["shift"].iloc[0]["shift"], rows["karras"].iloc[0]["sigmas"]) == (False, 2.0, "karras")
    assert set(rows["short_t5"].warning) == {"prompt_2 truncated to 64 T5 tokens"} and rows["base"].warning.isna().all()
    assert rows["schnell"].iloc[0].guidance == 0.0 and rows["default_t5"].iloc[0].max_sequence_length == 512
    text = Image.open(out / negative.path).text["parameters"].splitlines()
    assert text[1] == "Negative prompt: blurry"
    assert "Steps: 4, Sampler: Euler, CFG scale: 4, Seed: 0, Size: 64x64, Model: tiny-flux, Distilled CFG Scale: 3.5" in text[2]
    karras = Image.open(out / rows["karras"].iloc[0].path).text["parameters"]
    assert "Schedule type: karras" in karras and "CFG scale: 1," in karras and "Negative prompt" not in karras
    assert "Sampler: DPM++ 2M," in Image.open(out / rows["dpm"].iloc[0].path).text["parameters"]
    assert f"<lora:{LORA.removesuffix('.safetensors')}:0.5>" in Image.open(out / rows["lora_half"].iloc[0].path).text["parameters"]
    stored = json.loads(Image.open(out / rows["shift"].iloc[0].path).text["sweeper"])["spec"]
    assert (stored["shift"], stored["dynamic_shift"], stored["family"]) == (2.0, False, "flux")


def test_images_replay_and_a_batch_equals_each_image_alone(sweep, fresh_runtime, capsys):
    out, rows, inputs = sweep
    for name in ("negative", "inpaint"):  # true CFG's embeddings; the init image and mask (LoRA replays: test_lora.py)
        png = str(out / rows[name].iloc[1].path)
        assert replay.main([png, "--init-image", str(inputs / "init.png"), "--mask-image", str(inputs / "mask.png")]) == 0, name
    recorded = replay.read(out / rows["base"].iloc[1].path)
    assert len(recorded.call) == 2
    specs = replay.checked(recorded, argparse.Namespace(init_image=None, mask_image=None, model=None, model_config=None, refiner=None, lora=None, download=False))
    alone = replay.replay(dataclasses.replace(recorded, index=0), [specs[recorded.index]], fresh_runtime)
    assert np.abs(alone.astype(int) - recorded.pixels.astype(int)).max() <= 2


REFUSED = [
    (["model=tiny-flux-schnell", "guidance=3.5"], "invalid guidance=3.5: model=tiny-flux-schnell is a Flux.1 without distilled guidance (schnell)"),
    (["model=tiny-flux", "negative_prompt=blurry"], "invalid negative_prompt='blurry': Flux.1 reads a negative prompt only with true_cfg > 1"),
    (["model=tiny-flux", "negative_prompt_2=blurry"], "invalid negative_prompt_2='blurry': Flux.1 reads a negative prompt only with true_cfg > 1"),
    (["model=tiny-flux", "max_sequence_length=513"], "invalid max_sequence_length=513: Flux.1's T5 prompt takes at most 512 tokens"),
    (["model=tiny-flux", "shift=2"], "invalid shift=2.0: this model shifts its schedule by image size"),
    (["model=tiny-flux", "scheduler=flow_dpmpp_2m", "sigmas=karras"], "invalid sigmas='karras': scheduler=flow_dpmpp_2m (DPM-Solver) on flow sigmas gives NaN"),
    (["model=tiny-flux-schnell", "guidance=0", "scheduler=flow_dpmpp_2m", "dynamic_shift=false"], "invalid dynamic_shift=false: scheduler=flow_dpmpp_2m (DPM-Solver) runs Flux.1 with dynamic shifting only"),
    (["model=tiny-flux", "scheduler=flow_unipc", "sigmas=beta"], "invalid sigmas='beta': scheduler=flow_unipc (UniPC) on flow sigmas gives NaN"),
    (["model=tiny-flux", "scheduler=flow_unipc", "dynamic_shift=false", "shift=2"], "invalid shift=2.0: shift is FlowMatchEulerDiscreteScheduler's"),
    (["model=tiny-flux", "scheduler.class_name=FlowMatchHeunDiscreteScheduler"], "invalid scheduler='auto': FlowMatchHeunDiscreteScheduler raises or draws its own noise there; Flux.1 renders with"),
    (["model=tiny-flux", "scheduler=euler"], "invalid scheduler='euler': Flux.1 models take flow schedulers"),
    (["model=tiny-flux", "refiner=tiny"], "invalid refiner=tiny: model=tiny-flux is Flux.1 (flux), which ignores it"),
    (["model=tiny-flux", "original_size=[128,128]"], "invalid original_size=[128, 128]: model=tiny-flux is Flux.1 (flux), which ignores it"),
    (["model=tiny-flux", "clip_skip=2"], "invalid clip_skip=2: model=tiny-flux is Flux.1 (flux), which ignores it; the keys of its own: negative_prompt, prompt_2"),
]


def test_each_refusal_is_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", *args], expected) for args, expected in REFUSED], tmp_path)


def test_the_variant_is_told_by_the_transformer_config_of_a_local_dir(tmp_path):
    for variant, embeds, dynamic in (("dev", True, True), ("schnell", False, False)):
        model = tmp_path / variant
        (model / "transformer").mkdir(parents=True)
        (model / "scheduler").mkdir()
        (model / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline"}))
        (model / "transformer" / "config.json").write_text(json.dumps({"guidance_embeds": embeds}))
        (model / "scheduler" / "scheduler_config.json").write_text(json.dumps({"use_dynamic_shifting": dynamic}))
    family = families.get("flux")
    values = {"true_cfg": None, "max_sequence_length": None, "shift": 3.0, "dynamic_shift": None, "sigmas": None}
    euler = {"name": "flow_euler", "class_name": "FlowMatchEulerDiscreteScheduler", "kwargs": {}}
    family.check(values, {"name": "s", "id": str(tmp_path / "schnell"), "guidance": 0.0, "scheduler": euler})
    assert (values["true_cfg"], values["max_sequence_length"]) == (1.0, 512)  # filled in: what runs
    with pytest.raises(Exception, match="without distilled guidance"):
        family.check(dict(values), {"name": "s", "id": str(tmp_path / "schnell"), "guidance": 3.5, "scheduler": euler})
    with pytest.raises(Exception, match="shift acts only with dynamic_shift=false"):
        family.check(dict(values), {"name": "d", "id": str(tmp_path / "dev"), "guidance": 3.5, "scheduler": euler})
    family.check(dict(values, dynamic_shift=False), {"name": "d", "id": str(tmp_path / "dev"), "guidance": 3.5, "scheduler": euler})
    assert families.detected(str(tmp_path / "dev"), None) == "flux"
