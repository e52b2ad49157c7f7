"""Variation seeds (issue 32, part 6): `subseed` and `subseed_strength`, A1111's "Variation seed" and
"Variation seed strength", through the real CLI on the tiny SDXL and SD 1.x models (64 px, 2 steps).

The tiny models have random weights: pixel checks compare renders with one another."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import composed_job, refused_in_one_line
from PIL import Image
from test_store import a1111_parse

from sweeper import replay
from sweeper.planning.plan import plan
from sweeper.rendering.variation import slerp

SMALL = ("width=64", "height=64", "steps=2", "prompt=a red fox")


def pixels(folder, path: str) -> np.ndarray:
    return np.asarray(Image.open(folder / path).convert("RGB")).astype(int)


def manifest(tmp_path, name: str) -> tuple:
    sweep = tmp_path / "outputs" / "sweeps" / name
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert set(df.status) == {"ok"}, df.error
    return sweep, df


def test_variation_seeds_blend_the_noise_as_a1111_does_and_replay(tmp_path, warm_cli, capsys):
    def run(name: str, *args: str) -> tuple:
        result = warm_cli.run("-m", "model=tiny", *SMALL, *args, f"name={name}", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        return manifest(tmp_path, name)

    # Each image alone (exact comparisons), and the plain seeds without any variation key.
    sweep, df = run("alone", "seed=1,7", "subseed=7,9", "subseed_strength=0,0.1,1", "batch_size=1")
    plain_sweep, plain = run("plain", "seed=1,7", "batch_size=1")
    assert len(df) == 2 + 4 + 4  # strength 0 is the seed's own image: one per seed, whatever the subseed
    at = {(row.seed, None if pd.isna(row.subseed) else int(row.subseed), None if pd.isna(row.subseed_strength) else row.subseed_strength): row
          for row in df.itertuples()}
    seed_image = {row.seed: pixels(plain_sweep, row.path) for row in plain.itertuples()}

    # Strength 0 = no subseed: the same ids (those of a plan without the keys) and pixels.
    unset = [row for key, row in at.items() if key[1] is None]
    assert all(pd.isna(row.subseed_strength) for row in unset)
    planned = plan([composed_job(0, "model=tiny", *SMALL, "seed=1"), composed_job(1, "model=tiny", *SMALL, "seed=7")], auto_device="cpu")
    assert {row.image_id for row in unset} == {spec.image_id for spec in planned} == set(plain.image_id)
    for row in unset:
        assert np.array_equal(pixels(sweep, row.path), seed_image[row.seed])

    # Strength 1 with subseed S is the image of seed S (Euler draws no noise after the first).
    for seed in (1, 7):
        assert np.array_equal(pixels(sweep, at[seed, 7, 1.0].path), seed_image[7])
        assert not np.array_equal(pixels(sweep, at[seed, 9, 1.0].path), seed_image[seed])
    # A small strength stays near the seed's image: nearer than the subseed's own.
    for seed, subseed in ((1, 7), (1, 9), (7, 9)):
        small, full = (np.abs(pixels(sweep, at[seed, subseed, s].path) - seed_image[seed]).mean() for s in (0.1, 1.0))
        assert 0 < small < full / 2, (seed, subseed, small, full)

    # A1111's keys in the PNG text, read back by A1111's own parser.
    text = a1111_parse(Image.open(sweep / at[7, 9, 0.1].path).text["parameters"])
    assert (text["Seed"], text["Variation seed"], text["Variation seed strength"]) == ("7", "9", "0.1")
    assert "Variation seed" not in Image.open(sweep / at[1, None, None].path).text["parameters"]

    # Images of different subseeds share a call; each is what it is alone, within 2 levels.
    batch_sweep, batched = run("batched", "seed=1,7", "subseed=7,9", "subseed_strength=0.1")
    assert set(batched.batch_size) == {4} and batched.subseed.nunique() == 2
    by_id = {row.image_id: row.path for row in df.itertuples()}
    for row in batched.itertuples():
        assert np.abs(pixels(batch_sweep, row.path) - pixels(sweep, by_id[row.image_id])).max() <= 2

    # Replay: an image alone and one of the batched call (its neighbours' subseeds come from its PNG).
    assert replay.main([str(sweep / at[1, 9, 0.1].path)]) == 0
    assert replay.main([str(batch_sweep / batched.path.iloc[-1])]) == 0
    assert capsys.readouterr().out.count(": identical (") == 2


def test_variation_seeds_on_sd1(tmp_path, warm_cli):
    result = warm_cli.run("-m", "model=tiny-sd", *SMALL, "seed=1,7", "subseed=7", "subseed_strength=0,1", "batch_size=1", "name=sd1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep, df = manifest(tmp_path, "sd1")
    at = {(row.seed, 0.0 if pd.isna(row.subseed_strength) else row.subseed_strength): pixels(sweep, row.path) for row in df.itertuples()}
    assert len(df) == 4 and not np.array_equal(at[1, 0.0], at[7, 0.0])
    assert np.array_equal(at[1, 1.0], at[7, 0.0]) and np.array_equal(at[7, 1.0], at[7, 0.0])  # strength 1: the subseed's image
    assert "Seed: 1, Size: 64x64, Model: tiny-sd, Variation seed: 7, Variation seed strength: 1," in Image.open(
        sweep / df[(df.seed == 1) & (df.subseed_strength == 1)].path.iloc[0]).text["parameters"]


def test_slerp_is_a1111s_per_column_interpolation():
    """Each (channel, column) of the noise is interpolated on the great circle between its two vectors
    (A1111 normalises along dim 1 of a (C, H, W) tensor), and strength 1 is the subseed's noise exactly."""
    low, high = torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(1)), torch.randn(4, 8, 6, generator=torch.Generator().manual_seed(2))
    mixed = slerp(0.3, low, high)
    for c in range(4):
        for w in range(6):
            a, b = low[c, :, w].double(), high[c, :, w].double()
            omega = torch.acos(a.dot(b) / (a.norm() * b.norm()))
            expected = (torch.sin(0.7 * omega) * a + torch.sin(0.3 * omega) * b) / torch.sin(omega)
            assert torch.allclose(mixed[c, :, w].double(), expected, atol=1e-5)
    assert torch.equal(slerp(1.0, low, high), high)
    assert torch.allclose(slerp(0.0, low, high), low, atol=1e-6)


REFUSED = [
    (["model=tiny-flux", "subseed=1", "subseed_strength=0.5"], "invalid subseed=1: model=tiny-flux is Flux.1 (flux), which ignores it"),
    (["model=tiny-sd35", "subseed=1", "subseed_strength=0.5"], "invalid subseed=1: model=tiny-sd35 is SD 3.5 (sd3), which ignores it"),
    (["model=tiny", "subseed_strength=0.5"], "invalid subseed_strength=0.5: blends in the noise of a variation seed: set subseed too"),
    (["model=tiny", "subseed=3"], "invalid subseed=3: changes nothing without subseed_strength"),
    (["model=tiny", "subseed=3", "subseed_strength=1.5"], "invalid subseed_strength=1.5: must be a number 0 .. 1"),
    (["model=tiny-sd", "subseed=-1", "subseed_strength=0.5"], "invalid subseed=-1: must be an integer 0 .."),
    (["model=tiny", "mode=img2img", "init_image=photo.png", "subseed=3", "subseed_strength=0.5"],
     "invalid subseed_strength=0.5: variation seeds vary the initial noise of txt2img; not with mode=img2img"),
]


def test_what_cannot_act_is_refused_in_one_line_before_anything_loads(tmp_path):
    Image.new("RGB", (64, 64), "gray").save(tmp_path / "photo.png")
    refused_in_one_line([(["-m", "steps=2", "seed=0,1", *args], expected) for args, expected in REFUSED], tmp_path)


@pytest.mark.parametrize("strength", ["0", "0.0"])
def test_strength_0_is_no_variation(strength):
    (spec,) = plan([composed_job(0, "model=tiny", "subseed=5", f"subseed_strength={strength}")], auto_device="cpu")
    (plain,) = plan([composed_job(0, "model=tiny")], auto_device="cpu")
    assert (spec.subseed, spec.subseed_strength, spec.image_id) == (None, None, plain.image_id)
