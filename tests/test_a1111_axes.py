"""The axes an A1111 user reaches for on SDXL and SD 1.x (issue 32): clip_skip, guidance_rescale
("CFG Rescale") and the samplers DPM++ 2M SDE, DPM++ 3M SDE, DPM2, LCM, TCD and DEIS, through the
real CLI on the tiny models: each changes the pixels, is written under A1111's name, replays
exactly, and is refused in one line where it cannot act.

The tiny models have random weights: pixel checks compare renders with one another."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, refused_in_one_line
from PIL import Image

from sweeper import replay
from sweeper.planning.plan import plan

NULL = "null"
SAMPLERS = {"dpmpp_2m_sde": "DPM++ 2M SDE", "dpmpp_3m_sde": "DPM++ 3M SDE", "dpm2": "DPM2", "lcm": "LCM", "tcd": "TCD", "deis": "DEIS"}
SDE = ("dpmpp_2m_sde", "dpmpp_3m_sde", "tcd", "lcm")  # draw noise at each step: from each image's own generator
PROMPTS = "prompt=[a red fox,a blue car in the rain]"
SMALL = ("width=32", "height=32", "steps=4", "seed=1", PROMPTS)
# One job per row (zipped): the baseline first, then one axis changed at a time.
JOBS = [  # scheduler, clip_skip, guidance_rescale
    ("euler", NULL, NULL),  # 0
    ("euler", "1", NULL),  # 1: the last layer, as unset: job 0's images (same ids)
    ("euler", "2", NULL),  # 2
    ("euler", NULL, "0.7"),  # 3
    *((name, NULL, NULL) for name in SAMPLERS),  # 4 ..
]
KEYS = ("scheduler", "clip_skip", "guidance_rescale")


def zipped(jobs) -> list[str]:
    values = {key: ",".join(job[n] for job in jobs) for n, key in enumerate(KEYS)}
    return [*(f"{key}={value}" for key, value in values.items()), f"hydra.sweeper.zip=[[{','.join(KEYS)}]]"]


def pixels(folder, path: str) -> np.ndarray:
    return np.asarray(Image.open(folder / path).convert("RGB")).astype(int)


def test_each_axis_changes_the_pixels_is_written_as_a1111_does_and_replays(tmp_path, warm_cli, capsys):
    result = warm_cli.run("-m", "model=tiny", *SMALL, *zipped(JOBS), "name=axes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{2 * (len(JOBS) - 1)} images from {len(JOBS)} jobs" in result.stderr  # job 1 is job 0
    sweep = tmp_path / "outputs" / "sweeps" / "axes"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert set(df.status) == {"ok"} and df.image_id.is_unique and set(df.batch_size) == {2}
    rows = {job: df[df.job_num == job].iloc[0] for job in set(df.job_num)}
    image = {(row.job_num, row.prompt): pixels(sweep, row.path) for row in df.itertuples()}
    car = "a blue car in the rain"
    assert 1 not in rows and pd.isna(rows[0].clip_skip) and pd.isna(rows[0].guidance_rescale)
    assert (rows[2].clip_skip, rows[3].guidance_rescale) == (2, 0.7)
    for job in range(2, len(JOBS)):
        assert not np.array_equal(image[job, car], image[0, car]), JOBS[job]
    assert [rows[job].scheduler for job in range(4, len(JOBS))] == list(SAMPLERS)

    def text(job: int) -> str:
        return Image.open(sweep / rows[job].path).text["parameters"]

    assert "Clip skip" not in text(0) and "CFG Rescale" not in text(0)
    assert "Sampler: Euler, CFG scale: 5, Seed: 1, Size: 32x32, Model: tiny-sdxl, Version:" in text(2)  # SDXL: no "Clip skip" (A1111 counts otherwise)
    assert "CFG scale: 5, CFG Rescale: 0.7, Seed: 1," in text(3)
    for job, label in zip(range(4, len(JOBS)), SAMPLERS.values()):
        assert f"Sampler: {label}, CFG scale: 5," in text(job)

    # Replay repeats each axis bit for bit (one image each: clip skip, rescale, an SDE sampler).
    for job in (2, 3, 4):
        assert replay.main([str(sweep / rows[job].path)]) == 0, JOBS[job]
    assert capsys.readouterr().out.count(": identical (") == 3

    # Each prompt alone renders what the batch of two did, with the samplers that draw noise as they step.
    sde = [job for job in range(len(JOBS)) if JOBS[job][0] in SDE]
    alone = warm_cli.run("-m", "model=tiny", *SMALL, "batch_size=1", *zipped([JOBS[job] for job in sde]), "name=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    single = pd.read_parquet(tmp_path / "outputs" / "sweeps" / "alone" / "manifest.parquet")
    assert set(single.batch_size) == {1} and set(single.image_id) == set(df[df.job_num.isin(sde)].image_id)
    by_id = dict(zip(df.image_id, df.path))
    for row in single.itertuples():
        assert np.abs(pixels(tmp_path / "outputs" / "sweeps" / "alone", row.path) - pixels(sweep, by_id[row.image_id])).max() <= 2, row.scheduler


def test_clip_skip_and_guidance_rescale_change_sd1_pixels(tmp_path, warm_cli):
    jobs = [("euler", NULL, NULL), ("euler", "2", NULL), ("euler", NULL, "0.7")]
    result = warm_cli.run("-m", "model=tiny-sd", *SMALL, *zipped(jobs), "name=sd1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "sd1"
    df = pd.read_parquet(sweep / "manifest.parquet").sort_values(["prompt", "job_num"])
    assert len(df) == 6 and set(df.status) == {"ok"} and df.image_id.is_unique
    for _, same_prompt in df.groupby("prompt"):
        plain, skipped, rescaled = (pixels(sweep, path) for path in same_prompt.path)
        assert not np.array_equal(plain, skipped) and not np.array_equal(plain, rescaled)
    assert "Clip skip: 2" in Image.open(sweep / df[df.job_num == 1].path.iloc[0]).text["parameters"]


def test_clip_skip_2_is_the_penultimate_layer_as_in_a1111(tiny_models):
    """A1111's clip skip 2 is CLIP's second-to-last hidden state, final layer norm applied."""
    import torch
    from diffusers import StableDiffusionPipeline

    from sweeper.rendering import families

    pipe = StableDiffusionPipeline.from_pretrained(tiny_models["tiny-sd"], safety_checker=None, requires_safety_checker=False)
    (spec,) = plan([composed_job(0, "model=tiny-sd", "clip_skip=2", "guidance=1")], auto_device="cpu")
    encoded = families.get("sd15").encode(pipe, spec, "cpu")["prompt_embeds"]
    ids = pipe.tokenizer(spec.prompt, padding="max_length", max_length=pipe.tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        states = pipe.text_encoder(ids, output_hidden_states=True).hidden_states
    norm = getattr(pipe.text_encoder, "text_model", pipe.text_encoder).final_layer_norm  # transformers 5 has no .text_model
    assert torch.allclose(encoded, norm(states[-2]))


REFUSED = [
    (["model=tiny", "guidance=1", "guidance_rescale=0.7"], "invalid guidance_rescale=0.7: rescales classifier-free guidance, which runs only with guidance > 1"),
    (["model=tiny-sd", "guidance_rescale=1.5"], "invalid guidance_rescale=1.5: must be a number 0 .. 1"),
    (["model=tiny", "clip_skip=13"], "invalid clip_skip=13: must be 1 .. 12"),
    (["model=tiny-z-image", "guidance_rescale=0.5"], "invalid guidance_rescale=0.5: model=tiny-z-image is Z-Image"),
]


def test_what_cannot_act_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "steps=2", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


@pytest.mark.parametrize("value, expected", [("1", None), ("2", 2), ("12", 12)])
def test_clip_skip_1_is_unset(value, expected):
    (spec,) = plan([composed_job(0, "model=tiny", f"clip_skip={value}")], auto_device="cpu")
    assert spec.clip_skip == expected


def test_the_refiner_encodes_with_the_same_clip_skip(tmp_path, warm_cli, tiny_models):
    """The refiner's text_encoder_2 (the base's) takes the clip skip too, and its call the rescale: both render."""
    import torch
    from diffusers import StableDiffusionXLImg2ImgPipeline

    from sweeper.rendering import families

    refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(tiny_models["tiny-sdxl-refiner"])
    specs = [plan([composed_job(0, "model=tiny", "refiner=tiny", f"clip_skip={n}")], auto_device="cpu")[0] for n in (1, 2)]
    with torch.no_grad():
        last, skipped = (families.get("sdxl").encode(refiner, spec, "cpu")["prompt_embeds"] for spec in specs)
    assert last.shape == skipped.shape and not torch.equal(last, skipped)

    result = warm_cli.run("-m", "model=tiny", "refiner=tiny", "width=32", "height=32", "steps=4", "seed=1", "prompt=a red fox",
                          "clip_skip=null,2", "guidance_rescale=null,0.7", "name=refined", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "refined"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 4 and set(df.status) == {"ok"} and set(df.refiner) == {"tiny"}
    assert len({pixels(sweep, path).tobytes() for path in df.path}) == 4


def test_the_readme_a1111_table_names_real_keys_and_a1111s_own_png_keys():
    """Each sweeper key of the README's "A1111 users" table is a key the config takes, and each
    quoted PNG text key is one sweeper writes."""
    import re
    from pathlib import Path

    from sweeper.planning.validate import known_keys
    from sweeper.storing.store import A1111_ORDER

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    table = text[text.index("### A1111 users") :].split("\n\n")[2]
    rows = [re.split(r"(?<!\\)\|", line.strip()[1:-1]) for line in table.splitlines()[2:]]  # cells; `\|` is a literal bar
    assert len(rows) >= 18
    values = {"a {red\\|blue} car", "'range(0,8)'", "-1", "random:N", "latent", "lanczos", "a1111", "compel", "plain"}
    keys = {re.split(r"[=.]", key)[0] for _, cell, _ in rows for key in re.findall(r"`([^`]+)`", cell) if key not in values}
    assert keys and keys <= {"hydra", *(key.split(".")[0] for key in known_keys())}, keys - set(known_keys())
    written = {name for axis, _, _ in rows for name in re.findall(r'"([^"]+)"', axis)}
    assert written and written <= set(A1111_ORDER), written - set(A1111_ORDER)
