"""SD 3.5 (families/sd3.py) on its tiny model: each of its axes changes the pixels where it should and
not where it should not, refusals are one line before anything loads, PNG text and manifest rows say
what ran, replay repeats it, LoRA (and a kohya-named one that fits nothing), img2img and inpaint.

One real CLI sweep (two prompts in one call x guidance x clip_skip), the single-axis renders in process
(`render_in_process`: planned and rendered as the CLI does, without an interpreter start each).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, refused_in_one_line, render_in_process, run_cli
from PIL import Image

from sweeper import replay
from sweeper.errors import PlanError
from sweeper.planning.plan import plan

# 77 T5 tokens, not the 256 filled in: half the tokens every layer attends over, so half the time
TINY = ("model=tiny-sd35", "width=32", "height=32", "steps=4", "seed=0", "device=cpu", "max_sequence_length=77", "prompt=a red cat")
LONG = "a green dog on a blue boat under the stars in an oil painting of 1890"  # T5 reads many tokens of it


def _jobs(*variants: tuple[str, ...]) -> list:
    return [composed_job(num, *TINY, *overrides) for num, overrides in enumerate(variants)]


def _pixels(folder: Path, row) -> np.ndarray:
    return np.asarray(Image.open(folder / row.path).convert("RGB")).astype(int)


def _by_job(folder: Path) -> dict[int, pd.Series]:
    df = pd.read_parquet(folder / "manifest.parquet").sort_values("job_num")
    return {int(row.job_num): row for row in df.itertuples()}


@pytest.fixture(scope="module")
def sd35() -> Path:
    from sweeper.rendering.tiny import tiny_model_dir

    return tiny_model_dir("tiny-sd35")


@pytest.fixture(scope="module")
def loras(tmp_path_factory, sd35) -> dict[str, Path]:
    """A random peft adapter on the tiny transformer, saved as diffusers saves one, and the same weights
    under kohya's SD3 names (lora_unet_joint_blocks_N_x_block_...), which diffusers 0.42 loads as nothing."""
    import torch
    from diffusers import SD3Transformer2DModel, StableDiffusion3Pipeline
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("sd3-loras")
    transformer = SD3Transformer2DModel.from_pretrained(sd35 / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=targets))
    StableDiffusion3Pipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name="sd3.safetensors")
    kohya = {}
    for key, tensor in load_file(folder / "sd3.safetensors").items():
        module, kind = key.removeprefix("transformer.").rsplit(".lora_", 1)
        block, _, rest = module.removeprefix("transformer_blocks.").partition(".")
        name = {"attn.to_out.0": "x_block_attn_proj", "attn.to_add_out": "context_block_attn_proj"}.get(rest)
        if name:
            kohya[f"lora_unet_joint_blocks_{block}_{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
    save_file(kohya, folder / "sd3_kohya.safetensors")
    return {"diffusers": folder / "sd3.safetensors", "kohya": folder / "sd3_kohya.safetensors"}


# --- planning (no torch) ---------------------------------------------------------------------------

REFUSED = [
    (["slg_scale=2"], "invalid slg_scale=2.0: skip-layer guidance is off without slg_layers"),
    (["slg_layers=[7,8,9]", "mode=img2img", "init_image=x.png"], "invalid slg_layers=[7, 8, 9]: skip-layer guidance is txt2img only"),
    (["slg_layers=[7,8,9]", "guidance=1"], "which guidance=1 (<= 1) turns off"),
    (["slg_layers=[7,20]"], "tiny-sd35's transformer has layers 0 .. 9"),
    (["slg_layers=[7,8,9]", "steps=2"], "with steps=2, slg_start=0.01 and slg_stop=0.2 no step skips them"),
    (["max_sequence_length=513"], "invalid max_sequence_length=513: SD 3.5's T5 takes at most 512 tokens"),
    (["clip_skip=13"], "invalid clip_skip=13: must be 1 .. 12"),
    (["width=40"], "invalid width=40: SD 3.5 takes multiples of 16"),
    (["true_cfg=4"], "invalid true_cfg=4: model=tiny-sd35 is SD 3.5 (sd3), which ignores it; the keys of its own: negative_prompt, prompt_2"),
    (["refiner=tiny"], "invalid refiner=tiny: model=tiny-sd35 is SD 3.5 (sd3), which ignores it"),
    (["scheduler=euler"], "invalid scheduler='euler': SD 3.5 models take flow schedulers"),
    (["attention=eager"], "SD 3.5 models run sdpa"),
    (["fuse_qkv=true"], "invalid fuse_qkv=true: diffusers' SD 3.5 pipeline has no fused Q/K/V projections"),
]


def test_what_sd35_cannot_honour_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "model=tiny-sd35", "width=32", "height=32", "steps=4", *args], expected) for args, expected in REFUSED], tmp_path)


def test_the_defaults_that_run_are_filled_in_and_unset_keys_stay_out_of_the_id():
    (spec,) = plan([composed_job(0, *TINY[:-2], "prompt=a red cat")])
    assert (spec.family, spec.max_sequence_length, spec.clip_skip, spec.slg_layers, spec.scheduler_class) == (
        "sd3", 256, 1, None, "FlowMatchEulerDiscreteScheduler")
    # the defaults said outright are the same picture: the same id
    (said,) = plan([composed_job(0, *TINY[:-2], "prompt=a red cat", "max_sequence_length=256", "clip_skip=1")])
    assert said.image_id == spec.image_id
    (slg,) = plan([composed_job(0, *TINY, "slg_layers=[7,8,9]", "steps=28")])
    assert (slg.slg_layers, slg.slg_scale, slg.slg_start, slg.slg_stop) == ((7, 8, 9), 2.8, 0.01, 0.2)
    # without CFG a negative prompt does nothing: dropped, so the image keeps its id
    (off,) = plan([composed_job(0, *TINY, "guidance=1")])
    (negative,) = plan([composed_job(0, *TINY, "guidance=1", "negative_prompt=blurry", "negative_prompt_3=dark")])
    assert negative.image_id == off.image_id and negative.negative_prompt_3 is None
    with pytest.raises(PlanError, match="skip-layer guidance is txt2img only: diffusers' SD 3.5 inpaint"):
        plan([composed_job(0, *TINY, "slg_layers=[1]", "slg_stop=0.9", "mode=inpaint")])
    # the defaults skip at step i when steps * 0.01 < i < steps * 0.2: from 6 steps on
    with pytest.raises(PlanError, match="with steps=5, slg_start=0.01 and slg_stop=0.2 no step skips them"):
        plan([composed_job(0, *TINY, "slg_layers=[7]", "steps=5")])
    assert plan([composed_job(0, *TINY, "slg_layers=[7]", "steps=6")])[0].slg_scale == 2.8
    with pytest.raises(PlanError, match=r"^invalid original_size=\[64, 64\]: model=tiny-sd35 is SD 3.5 \(sd3\), which ignores it"):
        plan([composed_job(0, *TINY, "original_size=[64,64]")])


@pytest.mark.parametrize("preset, model_id, steps, guidance", [
    ("sd35-medium", "stabilityai/stable-diffusion-3.5-medium", 40, 4.5),
    ("sd35-large", "stabilityai/stable-diffusion-3.5-large", 28, 3.5),
    ("tiny-sd35", "tiny-sd35", 4, 5.0),
])
def test_the_presets_are_sd35(preset, model_id, steps, guidance):
    (spec,) = plan([composed_job(0, f"model={preset}")])
    assert (spec.family, spec.model_id, spec.steps, spec.guidance, spec.scheduler) == ("sd3", model_id, steps, guidance, "flow_euler")


def test_another_model_id_is_sd35_by_its_model_index(sd35):
    (spec,) = plan([composed_job(0, "model=tiny", f"model.id={sd35}", "width=32", "height=32")])
    assert (spec.family, spec.max_sequence_length) == ("sd3", 256)


# --- rendering ------------------------------------------------------------------------------------


def test_a_cli_sweep_renders_its_axes_writes_what_ran_and_replays(tmp_path, sd35, capsys):
    sweep = tmp_path / "sweep"
    result = run_cli("-m", *TINY[:-1], "prompt=[a red cat,a blue dog]", "guidance=1,5", "clip_skip=1,2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 8 and set(df.status) == {"ok"} and set(df.batch_size) == {2}  # two prompts a call
    assert set(df.base_steps) == {4} and set(df.dtype) == {"float32"}
    red = df[df.prompt == "a red cat"].set_index(["guidance", "clip_skip"])
    assert list(red.loc[(1.0, 1)][["prompt_2", "prompt_3", "max_sequence_length"]]) == ["a red cat", "a red cat", 77]
    assert red.loc[(5.0, 1)].negative_prompt_3 == "" and pd.isna(red.loc[(1.0, 1)].negative_prompt_3)  # no CFG: none ran
    pixels = {key: _pixels(sweep, row) for key, row in red.iterrows()}
    assert pixels[(1.0, 1)].shape == (32, 32, 3)
    for guidance in (1.0, 5.0):
        assert np.abs(pixels[(guidance, 2)] - pixels[(guidance, 1)]).max() > 10  # clip skip: another CLIP layer
    assert np.abs(pixels[(5.0, 1)] - pixels[(1.0, 1)]).max() > 10
    text = Image.open(sweep / red.loc[(5.0, 2)].path).text["parameters"]
    assert text.splitlines()[-1].startswith("Steps: 4, Sampler: Euler, CFG scale: 5, Seed: 0, Size: 32x32, Model: tiny-sd35, Clip skip: 2, Version:")
    assert json.loads(Image.open(sweep / red.loc[(5.0, 2)].path).text["sweeper"])["spec"]["max_sequence_length"] == 77

    # the batch's first image, rendered alone: within a couple of levels (batched math is not batch-invariant)
    alone = tmp_path / "alone"
    render_in_process(alone, [composed_job(0, *TINY, "guidance=5", "clip_skip=2")])
    (row,) = pd.read_parquet(alone / "manifest.parquet").itertuples()
    assert row.image_id == red.loc[(5.0, 2)].image_id
    assert np.abs(_pixels(alone, row) - pixels[(5.0, 2)]).max() <= 2

    assert replay.main([str(sweep / red.loc[(5.0, 2)].path)]) == 0
    assert ": identical" in capsys.readouterr().out


def test_each_axis_changes_the_pixels_where_it_should_and_not_where_it_should_not(tmp_path, sd35):
    variants = {
        "base": (),
        "prompt_2": ("prompt_2=a green dog",),
        "prompt_3": (f"prompt_3={LONG} and {LONG}",),  # over 77 T5 tokens: cut, as the warning says
        "prompts said": ("prompt_2=a red cat", "prompt_3=a red cat"),  # the unset ones mean the prompt
        "negative": ("negative_prompt=blurry",),
        "negative_2": ("negative_prompt=blurry", "negative_prompt_2=dark"),
        "negative_3": ("negative_prompt=blurry", f"negative_prompt_3={LONG}"),
        "negatives said": ("negative_prompt=blurry", "negative_prompt_2=blurry", "negative_prompt_3=blurry"),
        "t5 256": ("max_sequence_length=256",),
        "slg": ("slg_layers=[7,8,9]", "slg_stop=0.5"),  # 4 steps: skips at step 1
        "slg other layers": ("slg_layers=[1,2]", "slg_stop=0.5"),
        "slg scale 0": ("slg_layers=[7,8,9]", "slg_stop=0.5", "slg_scale=0"),  # the extra pass, no effect
        "shift": ("shift=1",),
        "dynamic shift": ("dynamic_shift=true",),
        "karras": ("sigmas=karras",),
    }
    render_in_process(tmp_path, _jobs(*variants.values()))
    rows = dict(zip(variants, _by_job(tmp_path).values()))
    assert all(row.status == "ok" for row in rows.values())
    pixels = {name: _pixels(tmp_path, row) for name, row in rows.items()}

    def diff(a: str, b: str) -> int:
        return int(np.abs(pixels[a] - pixels[b]).max())

    for name in ("prompt_2", "prompt_3", "negative", "t5 256", "slg", "shift", "dynamic shift", "karras"):
        assert diff(name, "base") > 2, name
    assert diff("negative_2", "negative") > 2 and diff("negative_3", "negative") > 2 and diff("slg other layers", "slg") > 2
    assert diff("prompts said", "base") == 0 and diff("negatives said", "negative") == 0 and diff("slg scale 0", "base") == 0
    assert (rows["slg"].slg_scale, rows["slg"].slg_start, rows["slg"].slg_stop) == (2.8, 0.01, 0.5)
    assert rows["prompt_3"].warning == "prompt_3 truncated to 77 T5 tokens" and pd.isna(rows["base"].warning)
    text = Image.open(tmp_path / rows["karras"].path).text["parameters"]
    assert "Sampler: Euler, Schedule type: karras, CFG scale: 5" in text


def test_img2img_and_inpaint_render_at_the_asked_size(tmp_path, sd35):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)).save(tmp_path / "init.png")
    mask = np.zeros((48, 48), np.uint8)
    mask[:, 24:] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    image = (f"init_image={tmp_path / 'init.png'}", "strength=0.5")
    inpaint = (*image, "mode=inpaint", f"mask_image={tmp_path / 'mask.png'}")
    out = tmp_path / "out"
    render_in_process(out, _jobs((*image, "mode=img2img"), (*image, "mode=img2img", "prompt=a blue dog"), inpaint, (*inpaint, "prompt=a blue dog")))
    rows = _by_job(out)
    assert [row.status for row in rows.values()] == ["ok"] * 4 and [row.base_steps for row in rows.values()] == [2] * 4
    pixels = [_pixels(out, row) for row in rows.values()]
    assert all(p.shape == (32, 32, 3) for p in pixels)  # not the 64 px the pipelines would resize to unasked
    assert np.abs(pixels[1] - pixels[0]).max() > 2 and np.abs(pixels[3] - pixels[2]).max() > 2


def test_a_lora_changes_the_pixels_by_its_weight_and_a_kohya_named_one_that_fits_nothing_is_refused(tmp_path, loras):
    lora = f"lora={loras['diffusers']}"
    render_in_process(tmp_path, _jobs((), (lora,), (lora, "lora_scale=0.5"), (lora, "lora_scale=0"), (f"lora={loras['kohya']}",)))
    rows = list(_by_job(tmp_path).values())
    assert [row.status for row in rows] == ["ok"] * 4 + ["error"]
    base, full, half, zero = (_pixels(tmp_path, row) for row in rows[:4])
    assert np.abs(full - base).max() > 10 and np.abs(half - full).max() > 2 and np.abs(half - base).max() > 2
    assert np.abs(zero - base).max() == 0
    assert "<lora:sd3:0.5>" in Image.open(tmp_path / rows[2].path).text["parameters"]
    error = rows[4].error
    assert error.startswith("LoraMismatch: lora=sd3_kohya.safetensors: its weights do not fit the sd3 model") and "no weight of it fits" in error
