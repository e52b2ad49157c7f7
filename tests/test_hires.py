"""Hires fix (issue 32 part 4), as A1111 does it: render at width x height, upscale (its "Latent":
bilinear on the latents; or Lanczos on the decoded image), then img2img at the larger size, through
the real CLI on the tiny SDXL and SD 1.x models, 64 -> 128 px.

The tiny models have random weights: pixel checks compare renders with one another."""

from __future__ import annotations

import numpy as np
import pandas as pd
from conftest import composed_job, refused_in_one_line, render_in_process
from PIL import Image

from sweeper import replay
from sweeper.planning import hires
from sweeper.planning.plan import plan

NULL = "null"
PROMPTS = "prompt=[a red fox,a blue car in the rain]"
SMALL = ("width=64", "height=64", "steps=2", "seed=1")
KEYS = ("hires.scale", "hires.upscaler", "hires.denoise")
JOBS = [  # one job per row (zipped): no hires fix first, then one value changed at a time
    (NULL, "latent", "0.7"),  # 0
    ("2", "latent", "0.7"),  # 1
    ("2", "lanczos", "0.7"),  # 2
    ("2", "latent", "0.3"),  # 3
]


def zipped(jobs) -> list[str]:
    values = {key: ",".join(job[n] for job in jobs) for n, key in enumerate(KEYS)}
    return [*(f"{key}={value}" for key, value in values.items()), f"hydra.sweeper.zip=[[{','.join(KEYS)}]]"]


def pixels(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def a1111(text: str) -> dict[str, str]:
    """The `Key: value` pairs of an A1111 parameters text (its last line; no value here holds a separator)."""
    return dict(pair.split(": ", 1) for pair in text.splitlines()[-1].split(", "))


def test_hires_renders_larger_is_recorded_as_a1111_does_and_replays(tmp_path, warm_cli, capsys):
    result = warm_cli.run("-m", "model=tiny", *SMALL, PROMPTS, *zipped(JOBS), "name=hires", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "hires"
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 8 and set(df.status) == {"ok"} and df.image_id.is_unique and set(df.batch_size) == {2}
    # The stored size is the first pass's, as A1111's "Size"; the PNG is the second pass's.
    assert set(df.width) == {64} and set(df.height) == {64}
    rows = {job: df[df.job_num == job].iloc[0] for job in range(len(JOBS))}
    image = {(row.job_num, row.prompt): pixels(sweep / row.path) for row in df.itertuples()}
    fox = "a red fox"
    assert image[0, fox].shape == (64, 64, 3)
    assert all(image[job, fox].shape == (128, 128, 3) for job in (1, 2, 3))
    assert pd.isna(rows[0].hires_scale) and pd.isna(rows[0].hires_upscaler) and pd.isna(rows[0].hires_pass_steps)
    # hires.steps null = steps; the second pass really ran them, as A1111 (the last 2 of int(2 / 0.7) = 2, of int(2 / 0.3) = 6).
    got = [(r.hires_scale, r.hires_upscaler, r.hires_denoise, r.hires_steps, r.base_steps, r.hires_pass_steps) for r in map(rows.get, (1, 2, 3))]
    assert got == [(2.0, "latent", 0.7, 2, 2, 2), (2.0, "lanczos", 0.7, 2, 2, 2), (2.0, "latent", 0.3, 2, 2, 2)]
    # Latent and Lanczos differ, and the denoising strength acts; a hires image is no plain upscale of the first pass.
    for prompt in (fox, "a blue car in the rain"):
        assert not np.array_equal(image[1, prompt], image[2, prompt]) and not np.array_equal(image[1, prompt], image[3, prompt])
        upscaled = np.asarray(Image.open(sweep / df[(df.job_num == 0) & (df.prompt == prompt)].path.iloc[0]).resize((128, 128), Image.LANCZOS))
        assert np.abs(image[2, prompt] - upscaled).max() > 2

    def text(job: int) -> dict[str, str]:
        return a1111(Image.open(sweep / rows[job].path).text["parameters"])

    assert not {"Hires upscale", "Hires steps", "Hires upscaler", "Denoising strength"} & set(text(0))
    assert {key: text(1)[key] for key in ("Size", "Denoising strength", "Hires upscale", "Hires steps", "Hires upscaler")} == {
        "Size": "64x64", "Denoising strength": "0.7", "Hires upscale": "2", "Hires steps": "2", "Hires upscaler": "Latent"}
    assert (text(2)["Hires upscaler"], text(3)["Denoising strength"]) == ("Lanczos", "0.3")

    # Replay repeats both upscalers bit for bit.
    for job in (1, 2):
        assert replay.main([str(sweep / rows[job].path)]) == 0, JOBS[job]
    assert capsys.readouterr().out.count(": identical (") == 2

    # An image alone renders what the batch of two did, with either upscaler.
    alone = warm_cli.run("-m", "model=tiny", *SMALL, f"prompt={fox}", "batch_size=1", *zipped(JOBS[1:3]), "name=alone", cwd=tmp_path)
    assert alone.returncode == 0, alone.stderr
    single = pd.read_parquet(tmp_path / "outputs" / "sweeps" / "alone" / "manifest.parquet")
    assert set(single.batch_size) == {1} and set(single.image_id) == set(df[df.job_num.isin([1, 2]) & (df.prompt == fox)].image_id)
    by_id = dict(zip(df.image_id, df.path))
    for row in single.itertuples():
        assert np.abs(pixels(tmp_path / "outputs" / "sweeps" / "alone" / row.path) - pixels(sweep / by_id[row.image_id])).max() <= 2, row.hires_upscaler


def test_sd1_hires_renders_larger_with_either_upscaler(tmp_path, warm_cli):
    result = warm_cli.run("-m", "model=tiny-sd", *SMALL, "prompt=a red fox", *zipped(JOBS[:3]), "name=sd1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "sd1"
    df = pd.read_parquet(sweep / "manifest.parquet").sort_values("job_num")
    assert len(df) == 3 and set(df.status) == {"ok"} and set(df.width) == {64}
    plain, latent, lanczos = (pixels(sweep / path) for path in df.path)
    assert plain.shape == (64, 64, 3) and latent.shape == lanczos.shape == (128, 128, 3) and not np.array_equal(latent, lanczos)
    assert a1111(Image.open(sweep / df.path.iloc[2]).text["parameters"])["Hires upscaler"] == "Lanczos"


def test_the_second_pass_runs_at_the_larger_size_for_hires_steps(tmp_path, monkeypatch, fresh_runtime):
    """What really ran, seen from the UNet, the VAE and the scheduler: 2 steps at 8x8 latents, then the
    hires steps at 16x16 on the same model, as A1111 runs them: the last 4 of a schedule of int(4 / 0.5) = 8
    steps; Latent interpolates the latents as A1111's "Latent" (bilinear, no antialiasing), Lanczos decodes
    the first pass and encodes 128 px."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel

    events: list[tuple] = []

    def spy(cls, name, what):
        original = getattr(cls, name)

        def wrapper(self, x, *args, **kwargs):
            events.append((what, *x.shape[-2:]))
            return original(self, x, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)

    spy(UNet2DConditionModel, "forward", "unet")
    spy(AutoencoderKL, "encode", "encode")
    spy(AutoencoderKL, "decode", "decode")
    original_set_timesteps = EulerDiscreteScheduler.set_timesteps

    def set_timesteps(self, num_inference_steps=None, *args, **kwargs):
        events.append(("steps", num_inference_steps))
        return original_set_timesteps(self, num_inference_steps, *args, **kwargs)

    monkeypatch.setattr(EulerDiscreteScheduler, "set_timesteps", set_timesteps)
    interpolate = torch.nn.functional.interpolate

    def upscale(x, *args, **kwargs):
        if x.shape[1] == 4:  # the latents (the UNet's and VAE's own upsampling run on more channels)
            events.append(("interpolate", kwargs.get("mode"), kwargs.get("antialias"), *kwargs["size"]))
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "interpolate", upscale)
    common = ("model=tiny", *SMALL, "prompt=a red fox", "hires.scale=2", "hires.steps=4", "hires.denoise=0.5")
    render_in_process(tmp_path, [composed_job(0, *common, "hires.upscaler=latent"), composed_job(1, *common, "hires.upscaler=lanczos")])
    first = [("steps", 2), ("unet", 8, 8), ("unet", 8, 8)]
    second = [("steps", 8), *[("unet", 16, 16)] * 4, ("decode", 16, 16)]
    latent = [*first, ("interpolate", "bilinear", False, 16, 16), *second]  # A1111's "Latent"
    lanczos = [*first, ("decode", 8, 8), second[0], ("encode", 128, 128), *second[1:]]
    warm_up = [*first, latent[3], ("steps", 4), ("unet", 16, 16), ("unet", 16, 16), ("decode", 16, 16)]  # 2 hires steps, of 4
    assert events == warm_up + latent + lanczos
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert set(df.hires_pass_steps) == {4} and set(df.base_steps) == {2}


REFUSED = [
    (["model=tiny", "mode=img2img", "hires.scale=2"], "invalid hires.scale=2: the hires fix is for txt2img (as in A1111), not mode=img2img"),
    (["model=tiny", "refiner=tiny", "hires.scale=2"], "invalid hires.scale=2: not with refiner=tiny"),
    (["model=tiny", "hires.scale=2", "hires.upscaler=R-ESRGAN"], "invalid hires.upscaler='R-ESRGAN': allowed: latent (A1111's Latent), lanczos (A1111's Lanczos)"),
    (["model=tiny", "hires.scale=0.5"], "invalid hires.scale=0.5: must be null (off) or a number 1 .. 16"),
    (["model=tiny", "hires.scale=2", "hires.denoise=0"], "invalid hires.denoise=0: must be a number in (0, 1]"),
    (["model=tiny", "width=2048", "hires.scale=4"], "invalid hires.scale=4: width=2048 x 4 is over max_size=4096"),
    (["model=tiny-sd", "guidance_rescale=0.5", "hires.scale=2"], "invalid guidance_rescale=0.5: not with hires.scale on SD 1.x"),
    (["model=tiny-flux", "hires.scale=2"], "invalid hires.scale=2: model=tiny-flux is Flux.1 (flux), which ignores it"),
    (["model=tiny-sd35", "hires.scale=2"], "invalid hires.scale=2: model=tiny-sd35 is SD 3.5"),
    (["model=tiny-qwen-image", "hires.scale=2"], "invalid hires.scale=2: model=tiny-qwen-image is Qwen-Image"),
    (["model=tiny-z-image", "hires.scale=2"], "invalid hires.scale=2: model=tiny-z-image is Z-Image"),
    (["model=tiny-flux2-klein", "hires.scale=2"], "invalid hires.scale=2: model=tiny-flux2-klein is Flux.2 Klein"),
    (["model=tiny", "hires.scale=2", "negative_crops_coords_top_left=[0,8]"], "invalid negative_crops_coords_top_left=[0, 8]: diffusers' SDXL img2img pipeline"),
]


def test_what_hires_cannot_do_is_refused_in_one_line_before_anything_loads(tmp_path):
    refused_in_one_line([(["-m", "steps=2", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


def test_hires_steps_null_or_0_is_steps_and_the_size_is_floored_to_a_multiple_of_8():
    def planned(*overrides: str):
        return plan([composed_job(0, "model=tiny", "width=64", "height=72", "steps=3", *overrides)], auto_device="cpu")[0]

    specs = [planned("hires.scale=1.3", f"hires.steps={value}") for value in ("null", "0", "3")]
    assert {spec.hires_steps for spec in specs} == {3} and len({spec.image_id for spec in specs}) == 1
    assert (specs[0].hires_denoise, specs[0].hires_upscaler) == (0.7, "latent")  # the defaults, A1111's
    assert hires.size(specs[0], 8) == (80, 88)  # int(64 * 1.3) = 83 -> 80, int(72 * 1.3) = 93 -> 88
    off = planned("hires.denoise=0.3", "hires.upscaler=lanczos")  # hires.scale null: the rest is not recorded
    assert (off.hires_scale, off.hires_denoise, off.hires_steps, off.hires_upscaler) == (None,) * 4 and off.image_id == planned().image_id
