"""Z-Image (families/z_image.py) through the real CLI on its tiny model: each of its own axes
(guidance with CFG above 0, the negative prompt, max_sequence_length, shift, dynamic_shift,
sigmas, LoRA) changes the pixels where it should and not where it should not, in one zipped
sweep; img2img and inpaint; replay; refusals in one line before anything loads.

The tiny model has random weights: pixel checks compare renders with one another."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import refused_in_one_line
from PIL import Image

from sweeper import replay
from sweeper.planning.plan import plan
from sweeper.rendering import families

SMALL = ("model=tiny-z-image", "width=32", "height=32", "steps=3", "seed=1", "prompt=[a red fox,a blue car in the rain]")
NULL = "null"
# One job per row (zipped): the baseline first, then one axis changed at a time.
JOBS = [  # guidance, negative_prompt, max_sequence_length, shift, dynamic_shift, sigmas, lora, lora_scale
    ("0", NULL, NULL, NULL, NULL, NULL, NULL, "1"),  # 0: Turbo's way, no CFG
    ("0", "blurry", NULL, NULL, NULL, NULL, NULL, "1"),  # 1: the negative prompt does nothing: nulled, job 0's images
    ("1", NULL, NULL, NULL, NULL, NULL, NULL, "1"),  # 2: CFG against "" (on above 0, not above 1 as in SD)
    ("1", "blurry", NULL, NULL, NULL, NULL, NULL, "1"),  # 3: CFG against "blurry"
    # 4: what changes nothing: both templated prompts fit in 64 tokens, the model's own shift, an adapter at weight 0
    ("0", NULL, "64", "3", NULL, NULL, "LORA", "0"),
    ("0", NULL, "30", NULL, NULL, NULL, NULL, "1"),  # 5: cuts the longer prompt only (19 template tokens + 1 per byte)
    ("0", NULL, NULL, "6", NULL, NULL, NULL, "1"),  # 6: the base model's shift
    ("0", NULL, NULL, NULL, "true", NULL, NULL, "1"),  # 7: shift by image size
    ("0", NULL, NULL, NULL, NULL, "karras", NULL, "1"),  # 8: bends the sigmas between the first and last (3 steps or more)
    ("0", NULL, NULL, NULL, NULL, NULL, "LORA", "0.5"),  # 9
]
KEYS = ("guidance", "negative_prompt", "max_sequence_length", "shift", "dynamic_shift", "sigmas", "lora", "lora_scale")


def zipped_sweep(lora: Path) -> list[str]:
    values = {key: ",".join(job[n] for job in JOBS).replace("LORA", str(lora)) for n, key in enumerate(KEYS)}
    return [*(f"{key}={value}" for key, value in values.items()), f"hydra.sweeper.zip=[[{','.join(KEYS)}]]"]


def pixels(sweep: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(sweep / path).convert("RGB")).astype(int)


def by_job(df: pd.DataFrame, sweep: Path) -> dict[tuple[int, str], np.ndarray]:
    return {(row.job_num, row.prompt): pixels(sweep, row.path) for row in df.itertuples()}


@pytest.fixture(scope="module")
def lora(tmp_path_factory, tiny_models) -> Path:
    """A random peft adapter on the tiny transformer's attention, saved with the pipeline's save_lora_weights."""
    import torch
    from diffusers import ZImagePipeline, ZImageTransformer2DModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    from sweeper.rendering.tiny import tiny_model_dir

    transformer = ZImageTransformer2DModel.from_pretrained(tiny_model_dir("tiny-z-image") / "transformer")
    with torch.random.fork_rng():
        torch.manual_seed(1)
        transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights=False, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    folder = tmp_path_factory.mktemp("z-lora")
    ZImagePipeline.save_lora_weights(folder, transformer_lora_layers=get_peft_model_state_dict(transformer), weight_name="z_style.safetensors")
    return folder / "z_style.safetensors"


def test_each_axis_changes_the_pixels_where_it_should_and_replays(tmp_path, lora, warm_cli, capsys):
    result = warm_cli.run("-m", *SMALL, *zipped_sweep(lora), "name=axes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "18 images from 10 jobs" in result.stderr  # job 1 is job 0: its negative prompt was nulled
    sweep = tmp_path / "outputs" / "sweeps" / "axes"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 18 and set(df.status) == {"ok"} and df.image_id.is_unique
    assert set(df.base_steps) == {3} and set(df.dtype) == {"float32"} and set(df.batch_size) == {2}  # a job's two prompts: one call
    image = by_job(df, sweep)
    fox, car = "a red fox", "a blue car in the rain"

    def same(job: int, prompt: str = car) -> bool:
        return np.array_equal(image[job, prompt], image[0, prompt])

    assert not (same(2) or same(3)) and not np.array_equal(image[2, car], image[3, car])  # CFG on at 1, and its negative counts
    assert same(4) and same(4, fox)
    assert not any(same(job) for job in (5, 6, 7, 8, 9)) and same(5, fox)  # msl 30 cuts only the car's prompt

    rows = {job: df[df.job_num == job].iloc[0] for job in set(df.job_num)}
    assert 1 not in rows and pd.isna(rows[0].negative_prompt) and (rows[2].negative_prompt, rows[3].negative_prompt) == ("", "blurry")
    assert [rows[job].max_sequence_length for job in (0, 4, 5)] == [512, 64, 30]  # null: the 512 that ran
    assert (rows[6]["shift"], rows[7].dynamic_shift, rows[8].sigmas) == (6.0, True, "karras") and pd.isna(rows[0]["shift"])
    assert (rows[4].lora_scale, rows[9].lora_scale) == (0.0, 0.5) and pd.isna(rows[0].lora)
    warnings = dict(zip(zip(df.job_num, df.prompt), df.warning))
    assert warnings[5, car] == "prompt truncated to max_sequence_length=30 tokens (chat template included)"
    assert pd.isna(warnings[5, fox]) and df[df.job_num != 5].warning.isna().all()

    text = Image.open(sweep / rows[3].path).text
    assert text["parameters"].splitlines()[1:] == [
        "Negative prompt: blurry",
        f"Steps: 3, Sampler: Euler, CFG scale: 1, Seed: 1, Size: 32x32, Model: tiny-z-image, Version: sweeper {json.loads(text['sweeper'])['versions']['sweeper']}"]
    assert "Schedule type: karras" in Image.open(sweep / rows[8].path).text["parameters"]
    assert "<lora:z_style:0.5>" in Image.open(sweep / rows[9].path).text["parameters"]
    recorded = json.loads(Image.open(sweep / rows[6].path).text["sweeper"])["spec"]
    assert (recorded["family"], recorded["shift"], recorded["max_sequence_length"]) == ("z-image", 6.0, 512)

    # Replay repeats the call (CFG with a negative prompt).
    assert replay.main([str(sweep / rows[3].path)]) == 0
    capsys.readouterr()

    # Each prompt alone renders what the batch of two did (within a couple of levels).
    alone = warm_cli.run(*SMALL, "batch_size=1", "name=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    run = tmp_path / "outputs" / "runs" / "alone"
    single = pd.read_parquet(run / "manifest.parquet")
    assert set(single.batch_size) == {1} and set(single.image_id) == set(df[df.job_num == 0].image_id)
    for row in single.itertuples():
        assert np.abs(pixels(run, row.path) - image[0, row.prompt]).max() <= 2


def init_png(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(path)
    return path


def test_img2img_and_inpaint_in_bfloat16(tmp_path, warm_cli):
    a, b = init_png(tmp_path / "a.png", 1), init_png(tmp_path / "b.png", 2)
    masks = {"half": np.zeros((32, 32), np.uint8), "black": np.zeros((32, 32), np.uint8)}
    masks["half"][:, 16:] = 255  # white is repainted
    for name, mask in masks.items():
        Image.fromarray(mask).save(tmp_path / f"{name}.png")
    # bfloat16: img2img and inpaint draw their noise in the prompt embeddings' dtype, which must be the pipeline's
    common = ("model=tiny-z-image", "width=32", "height=32", "steps=4", "dtype=bfloat16", "prompt=[a red fox,a blue car]")
    result = warm_cli.run(
        "-m", *common, "mode=img2img,img2img,img2img,inpaint,inpaint", f"init_image={a},{a},{b},{a},{a}",
        f"mask_image=null,null,null,{tmp_path / 'half.png'},{tmp_path / 'black.png'}", "strength=0.5,1.0,0.5,1.0,1.0",
        "hydra.sweeper.zip=[[mode,init_image,mask_image,strength]]", "name=modes", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "modes"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 10 and set(df.status) == {"ok"} and set(df.dtype) == {"bfloat16"}
    assert dict(zip(df.job_num, df.base_steps)) == {0: 2, 1: 4, 2: 2, 3: 4, 4: 4}  # img2img runs ceil(steps * strength)
    image = by_job(df, sweep)
    fox, car = "a red fox", "a blue car"
    for prompt in (fox, car):
        assert not np.array_equal(image[0, prompt], image[1, prompt])  # strength
        assert not np.array_equal(image[0, prompt], image[2, prompt])  # init image
    assert not np.array_equal(image[3, fox], image[3, car])  # the masked half is repainted by the prompt ...
    assert np.array_equal(image[4, fox], image[4, car])  # ... and outside the mask the init image's latents are kept


REFUSED = [
    (["width=72"], "invalid width=72: Z-Image takes multiples of 16"),
    (["shift=5", "dynamic_shift=true"], "invalid shift=5.0: dynamic_shift=true shifts by image size instead, ignoring shift"),
    (["true_cfg=4"], "invalid true_cfg=4: model=tiny-z-image is Z-Image (z-image), which ignores it; the keys of its own: "
                     "negative_prompt, max_sequence_length, shift, dynamic_shift, sigmas"),
    (["clip_skip=2"], "invalid clip_skip=2: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["prompt_2=x"], "invalid prompt_2=x: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["refiner=tiny"], "invalid refiner=tiny: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["original_size=[64,64]"], "invalid original_size=[64, 64]: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["slg_scale=2"], "invalid slg_scale=2: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["watermark=true"], "invalid watermark=true: model=tiny-z-image is Z-Image (z-image), which ignores it"),
    (["attention=eager"], "invalid attention='eager': diffusers' plain attention processor is for UNets; Z-Image models run sdpa"),
    (["scheduler=euler"], "invalid scheduler='euler': Z-Image models take flow schedulers: auto, flow_euler"),
    (["max_sequence_length=2000"], "invalid max_sequence_length=2000: must be at most"),
    # a flow-matching UniPC (as diffusers configures it for flow models) raises on the pipeline's sigma list
    (["scheduler.name=flow_unipc", "scheduler.class_name=UniPCMultistepScheduler", "+scheduler.kwargs.use_flow_sigmas=true",
      "+scheduler.kwargs.prediction_type=flow_prediction"], "invalid scheduler='flow_unipc': Z-Image's pipelines run FlowMatchEulerDiscreteScheduler and FlowMatchLCMScheduler only (tried here): auto, flow_euler"),
]


def test_what_z_image_cannot_honour_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "model=tiny-z-image", "steps=2", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


def _plan(*overrides: str):
    from conftest import composed_job

    return plan([composed_job(0, *overrides)], auto_device="cpu")


def test_presets_and_detection_plan_what_the_model_runs(tiny_models):
    from sweeper.rendering.tiny import tiny_model_dir

    (turbo,) = _plan("model=z-image-turbo", "negative_prompt=blurry")
    assert (turbo.model_id, turbo.family, turbo.steps, turbo.guidance, turbo.width, turbo.height) == ("Tongyi-MAI/Z-Image-Turbo", "z-image", 8, 0.0, 1024, 1024)
    assert turbo.max_sequence_length == 512 and turbo.negative_prompt is None and turbo.scheduler_class == "FlowMatchEulerDiscreteScheduler"
    # guidance above 0 guides (not above 1, as SD): the negative prompt is kept
    (guided,) = _plan("model=z-image-turbo", "negative_prompt=blurry", "guidance=0.5")
    assert families.uses_cfg(guided) and guided.negative_prompt == "blurry"
    # another model.id: its model_index.json (ZImagePipeline) names the family
    (found,) = _plan("model=tiny", f"model.id={tiny_model_dir('tiny-z-image')}", "width=64", "height=64")
    assert found.family == "z-image" and found.max_sequence_length == 512
