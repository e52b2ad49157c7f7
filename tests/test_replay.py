"""python -m sweeper.replay IMAGE.png: the PNG's own metadata renders it again, bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

from conftest import plan_config
from sweeper import replay
from sweeper.launching import run
from sweeper.planning.plan import Job


def replay_args(*argv: str):
    """replay's parsed command line for a PNG, as `checked` takes it."""
    import argparse

    args = argparse.Namespace(init_image=None, mask_image=None, model=None, model_config=None, refiner=None, lora=None, download=False)
    for flag, value in zip(argv[::2], argv[1::2]):
        setattr(args, flag.lstrip("-").replace("-", "_"), Path(value))
    return args


def _copy_with_pixels(source: Path, target: Path, change) -> Path:
    """`source`'s text chunks on changed pixels."""
    with Image.open(source) as image:
        pixels = np.asarray(image.convert("RGB")).copy()
        info = PngImagePlugin.PngInfo()
        for key, value in image.text.items():
            info.add_itxt(key, value)
    change(pixels)
    Image.fromarray(pixels).save(target, pnginfo=info)
    return target


def test_every_image_of_a_batched_sweep_replays_bit_identical(tmp_path, tiny_models, capsys):
    jobs = [Job(n, plan_config(prompt=["a cat", "a dog"], seed=seed, batch_size=3)) for n, seed in enumerate((0, 1))]
    run.execute(run.prepare(jobs, tmp_path / "r"), tmp_path / "r")
    pngs = sorted((tmp_path / "r/images").glob("*.png"))
    assert len(pngs) == 4
    batches = []
    for png in pngs:
        recorded = replay.read(png)
        batches.append(len(recorded.call))
        specs = replay.checked(recorded, replay_args())
        assert specs[recorded.index].image_id == recorded.spec.image_id == png.stem
        assert replay.main([str(png)]) == 0
    assert sorted(batches) == [1, 3, 3, 3]  # the call of three is repeated whole, not the image alone
    assert capsys.readouterr().out.count(": identical (64x64") == 4

    again = tmp_path / "again.png"
    assert replay.main([str(pngs[0]), "-o", str(again)]) == 0
    with Image.open(again) as image:
        assert json.loads(image.text["sweeper"])["image_id"] == pngs[0].stem
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(Image.open(pngs[0]).convert("RGB")))

    def nudge(pixels):
        pixels[5, 7, 1] = 0 if pixels[5, 7, 1] > 127 else 255

    tampered = _copy_with_pixels(pngs[1], tmp_path / "tampered.png", nudge)
    assert replay.main([str(tampered)]) == 1
    assert "differs: 1 pixels, at most" in capsys.readouterr().out


def test_a_png_not_written_by_sweeper_is_refused_in_one_line(tmp_path, capsys):
    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert replay.main([str(plain)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sweeper.replay: error:") and "not a PNG written by sweeper" in err[0]


def test_an_img2img_image_replays_from_its_init_image(tmp_path, tiny_models, capsys):
    init = tmp_path / "init.png"
    Image.fromarray((np.indices((48, 80)).sum(axis=0) % 256).astype("uint8")).convert("RGB").save(init)
    config = plan_config(mode="img2img", init_image=str(init), strength=0.6, seed=[3, 4], prompt=["x", "y"])
    prepared = run.prepare([Job(0, config)], tmp_path / "out")
    summary = run.execute(prepared, tmp_path / "out")
    assert summary.rendered == 4 and not summary.failed
    png = next((tmp_path / "out/images").glob("*.png"))
    assert replay.main([str(png)]) == 2  # where the init image is, the user says: a PNG names no local path
    assert "pass --init-image" in capsys.readouterr().err
    for png in (tmp_path / "out/images").glob("*.png"):
        assert replay.main([str(png), "--init-image", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count(": identical") == 4
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (48, 80)).save(elsewhere / "init.png")  # the same name, other pixels
    assert replay.main([str(png), "--init-image", str(elsewhere)]) == 2
    assert "its content is not the recorded image's" in capsys.readouterr().err
