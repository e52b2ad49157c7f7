"""img2img and inpaint (SDXL and SD 1.x), the safety checker, speed and memory options, single-file
checkpoints: end to end through the CLI (slow; in the session's warm interpreter, conftest.warm_cli),
and in process where that proves the same.

The tiny models have random weights: their VAE's posterior is mostly noise (std ~0.9 around a
mean of ~0.2), so a decoded image never looks like the init image. Pixel checks therefore compare
with the init image as the tiny VAE reproduces it (`vae_round_trip`) and state relative facts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import composed_job, main_per_case, only_dir, plan_config, render_in_process
from PIL import Image

from sweeper.rendering import calls, pipelines
from sweeper.storing import manifest
from sweeper.launching import run
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan
from sweeper.rendering.render import _image, render_batch
from sweeper.rendering.runtime import this_process
from sweeper.planning.schedule import Batch

# --- helpers ------------------------------------------------------------------------------------


def init_png(path: Path, width: int, height: int, seed: int) -> Path:
    """A smooth colour pattern with some noise, different for every seed."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    phase, freq = rng.uniform(0, 6.28, 3), rng.uniform(2, 8, 3)
    channels = [127 + 100 * np.sin(freq[c] * (x if c % 2 else y) * 6.28 + phase[c]) for c in range(3)]
    array = np.stack(channels, -1) + rng.normal(0, 10, (height, width, 3))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.clip(0, 255).astype("uint8")).save(path)
    return path


def mask_png(path: Path, width: int, height: int, white_half: str) -> Path:
    """Black, with the left or right half white (white is repainted)."""
    array = np.zeros((height, width), np.uint8)
    if white_half == "right":
        array[:, width // 2 :] = 255
    else:
        array[:, : width // 2] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:20]


def manifest_of(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "manifest.parquet")


def pixels(out_dir: Path, row) -> np.ndarray:
    return np.asarray(Image.open(out_dir / row["path"]).convert("RGB"), dtype=np.float64)


def vae_round_trip(model_dir: Path, path: str, width: int = 64, height: int = 64) -> np.ndarray:
    """The init image resized as the sweep resizes it, encoded and decoded by the tiny VAE (0..255)."""
    from diffusers import AutoencoderKL
    from diffusers.image_processor import VaeImageProcessor

    vae = AutoencoderKL.from_pretrained(model_dir, subfolder="vae")
    processor = VaeImageProcessor(vae_scale_factor=8)
    with Image.open(path) as image:
        image = image.convert("RGB").resize((width, height), Image.LANCZOS)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(processor.preprocess(image)).latent_dist.mode()).sample
    return processor.postprocess(decoded, output_type="np")[0] * 255


def white(mask_path: str, width: int = 64, height: int = 64) -> np.ndarray:
    with Image.open(mask_path) as mask:
        return np.asarray(mask.convert("L").resize((width, height))) > 127


def check_strength_and_init(out_dir: Path, df: pd.DataFrame, model_dir: Path) -> None:
    """Low strength stays near the init image, strength 1 hardly; each image follows its own init."""
    a, b = sorted(set(df.init_image))
    refs = {path: vae_round_trip(model_dir, path) for path in (a, b)}
    by = {(row.strength, row.init_image): pixels(out_dir, row) for _, row in df.iterrows()}
    for path in (a, b):
        low, full = (np.abs(by[(s, path)] - refs[path]).mean() for s in (0.3, 1.0))
        assert low < 0.6 * full, (path, low, full)  # measured: ~19 vs ~45
    # The same seed gives both inits the same noise, so what differs between the two outputs
    # is the init image: at 0.3 it follows the inits' own difference (measured corr ~0.33;
    # swapped inits would give ~-0.33), at 1.0 it nearly vanishes (6 vs 0.3 levels).
    follows = np.corrcoef((by[(0.3, a)] - by[(0.3, b)]).ravel(), (refs[a] - refs[b]).ravel())[0, 1]
    assert follows > 0.15, follows
    assert np.abs(by[(0.3, a)] - by[(0.3, b)]).mean() > 5 * np.abs(by[(1.0, a)] - by[(1.0, b)]).mean()


def check_inpaint_keeps_the_unmasked_region(out_dir: Path, row, model_dir: Path) -> None:
    diff = np.abs(pixels(out_dir, row) - vae_round_trip(model_dir, row["init_image"]))
    masked = white(row["mask_image"])
    kept, repainted = diff[~masked].mean(), diff[masked].mean()
    # Measured at strength 1: kept 32-40 vs repainted 45-48 (the random decoder mixes regions).
    assert kept < 0.9 * repainted, (row["init_image"], kept, repainted)


@pytest.fixture
def images(tmp_path) -> dict[str, Path]:
    """inits/a.png 64x64, inits/b.png 48x80 (resized to 64x64 by the sweep); masks named like them."""
    return {
        "inits": init_png(tmp_path / "inits" / "a.png", 64, 64, seed=0).parent,
        "b": init_png(tmp_path / "inits" / "b.png", 48, 80, seed=1),
        "masks": mask_png(tmp_path / "masks" / "a.png", 64, 64, "right").parent,
        "mask_b": mask_png(tmp_path / "masks" / "b.png", 48, 80, "left"),
        "mask": mask_png(tmp_path / "mask.png", 64, 64, "right"),
    }


@pytest.fixture
def fresh_cache(tiny_models, fresh_runtime):
    """An empty pipeline cache for this test: what it changes in a pipeline stays here."""


# --- img2img and inpaint through the CLI --------------------------------------------------------


@pytest.mark.slow
def test_sdxl_img2img_folder_by_strength_pixels_and_an_edited_init_renders_again(tmp_path, images, tiny_models, warm_cli):
    args = ("-m", "model=tiny", "mode=img2img", f"init_image={images['inits']}", "strength=0.3,1.0", "steps=4", "name=i2i")
    result = warm_cli.run(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 images from 2 jobs" in result.stderr
    assert "it/s" not in result.stderr, "the img2img pipeline's own progress bar must stay off"
    sweep = tmp_path / "outputs" / "sweeps" / "i2i"
    df = manifest_of(sweep)
    a, b = str(images["inits"] / "a.png"), str(images["b"])
    assert len(df) == 4 and set(df.status) == {"ok"} and set(df["mode"]) == {"img2img"}
    assert sorted(zip(df.strength, df.init_image)) == [(0.3, a), (0.3, b), (1.0, a), (1.0, b)]
    assert all(Path(p).is_absolute() for p in df.init_image)
    assert dict(zip(df.init_image, df.init_image_sha)) == {a: sha(a), b: sha(b)}
    assert df.mask_image.isna().all() and df.mask_image_sha.isna().all()
    assert df.image_id.is_unique
    pngs = sorted(p.name for p in (sweep / "images").glob("*.png"))
    assert pngs == sorted(f"{i}.png" for i in df.image_id)
    assert {Image.open(sweep / p).size for p in df.path} == {(64, 64)}  # b.png (48x80) resized to width x height
    check_strength_and_init(sweep, df, tiny_models["tiny-sdxl"])

    before = {p.name: p.stat().st_mtime_ns for p in (sweep / "images").iterdir()}
    jobs = [composed_job(n, "model=tiny", "mode=img2img", f"init_image={images['inits']}", f"strength={s}", "steps=4") for n, s in enumerate((0.3, 1.0))]
    again = run.prepare(jobs, sweep)  # the same command plans nothing to render (in process: no interpreter start)
    assert again.done == 4 and not again.todo

    init_png(Path(b), 48, 80, seed=2)  # edited in place: same path, new content
    edited = warm_cli.run(*args, cwd=tmp_path)
    assert edited.returncode == 0, edited.stderr
    assert "2 already done, 2 to render" in edited.stderr
    df = manifest_of(sweep)
    assert len(df) == 6 and df.image_id.is_unique and set(df.status) == {"ok"}
    new = df[df.init_image_sha == sha(b)]
    assert len(new) == 2 and set(new.init_image) == {b} and set(new.strength) == {0.3, 1.0}
    assert not set(new.image_id) & {name.removesuffix(".png") for name in before}
    assert len(list((sweep / "images").iterdir())) == 6
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "images").iterdir() if p.name in before} == before


@pytest.mark.slow
def test_sdxl_inpaint_with_a_folder_of_masks_named_like_the_inits(tmp_path, images, tiny_models, warm_cli):
    result = warm_cli.run(
        "-m", "model=tiny", "mode=inpaint", f"init_image={images['inits']}", f"mask_image={images['masks']}",
        "strength=1.0", "steps=4", "seed=[0,1]", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "it/s" not in result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = manifest_of(sweep)
    assert len(df) == 4 and set(df.status) == {"ok"} and set(df["mode"]) == {"inpaint"} and set(df.strength) == {1.0}
    for _, row in df.iterrows():  # each init image with the mask of its name
        assert Path(row["mask_image"]) == images["masks"] / Path(row["init_image"]).name
        assert row["mask_image_sha"] == sha(row["mask_image"]) and row["init_image_sha"] == sha(row["init_image"])
        assert Image.open(sweep / row["path"]).size == (64, 64)
        # a's mask repaints the right half, b's the left: swapped masks fail this for both.
        check_inpaint_keeps_the_unmasked_region(sweep, row, tiny_models["tiny-sdxl"])
    assert len(list((sweep / "images").glob("*.png"))) == 4


@pytest.mark.slow
def test_sd15_img2img_and_inpaint_with_and_without_the_safety_checker(tmp_path, images, tiny_models, warm_cli):
    result = warm_cli.run(
        "-m", "model=tiny-sd", f"init_image={images['inits']}", "mode=img2img,inpaint", f"mask_image=null,{images['mask']}",
        "hydra.sweeper.zip=[[mode,mask_image]]", "strength=0.3,1.0", "safety_checker=auto,false", "steps=4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "16 images from 8 jobs" in result.stderr and "it/s" not in result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = manifest_of(sweep)
    assert len(df) == 16 and set(df.status) == {"ok"} and df.image_id.is_unique
    assert len(list((sweep / "images").glob("*.png"))) == 16
    assert set(df.model_id) == {"tiny-sd"}
    inpaint, img2img = df[df["mode"] == "inpaint"], df[df["mode"] == "img2img"]
    assert len(inpaint) == len(img2img) == 8
    assert set(inpaint.mask_image) == {str(images["mask"])} and set(inpaint.mask_image_sha) == {sha(images["mask"])}
    assert img2img.mask_image.isna().all()
    # tiny-sd ships a checker that flags nothing: auto runs it (nsfw False), false does not (nsfw null).
    checked, unchecked = df[df.safety_checker], df[~df.safety_checker]
    assert len(checked) == len(unchecked) == 8
    assert checked.nsfw.tolist() == [False] * 8 and unchecked.nsfw.isna().all()
    assert checked.warning.isna().all()
    keys = ["mode", "strength", "init_image"]
    for _, row in checked.iterrows():  # the checker changes no pixel here, but it is part of the id
        (twin,) = [r for _, r in unchecked.iterrows() if all(r[k] == row[k] for k in keys)]
        assert np.array_equal(pixels(sweep, row), pixels(sweep, twin)) and row["image_id"] != twin["image_id"]
    check_strength_and_init(sweep, img2img[img2img.safety_checker], tiny_models["tiny-sd"])
    for _, row in inpaint[inpaint.safety_checker & (inpaint.strength == 1.0)].iterrows():
        check_inpaint_keeps_the_unmasked_region(sweep, row, tiny_models["tiny-sd"])


@pytest.mark.slow
def test_bad_mode_image_and_option_values_are_refused_in_one_line_before_anything_loads(tmp_path, images):
    """`sweeper.app.main` (what `python -m sweeper` runs) once per case, all in one subprocess."""
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no image here")
    inits, mask, masks = str(images["inits"]), str(images["mask"]), images["masks"]
    (masks / "b.png").unlink()  # the mask folder lacks b
    cases = [
        (["mode=img2img"], "invalid init_image=null:"),
        (["mode=img2img", f"init_image={inits}", f"mask_image={mask}"], f"invalid mask_image='{mask}': only for mode=inpaint"),
        (["mode=inpaint", f"init_image={inits}"], "invalid mask_image=null: mode=inpaint needs a mask"),
        (["mode=img2img", f"init_image={empty}"], f"invalid init_image='{empty}': the folder holds no image"),
        (["mode=inpaint", f"init_image={inits}", f"mask_image={empty}"], f"invalid mask_image='{empty}': the folder holds no image"),
        (["mode=inpaint", f"init_image={inits}", f"mask_image={masks}"], f"invalid mask_image='{masks}': no mask named b.*"),
        (["mode=img2img", f"init_image={inits}", "strength=0"], "invalid strength=0:"),
        (["mode=img2img", f"init_image={inits}", "strength=1.5"], "invalid strength=1.5:"),
        (["mode=img2img", f"init_image={inits}", "strength=0.2", "steps=4"], "invalid strength=0.2: with steps=4"),  # 0 steps
        ([f"init_image={inits}"], f"invalid init_image='{inits}': only for mode=img2img or mode=inpaint"),
        ([f"mask_image={mask}"], f"invalid mask_image='{mask}': only for mode=img2img or mode=inpaint"),
        (["mode=img2img", f"init_image={inits}", "refiner=tiny"], "invalid refiner=tiny: works with mode=txt2img only"),
        (["mode=sketch"], "invalid mode='sketch': allowed: txt2img, img2img, inpaint"),
        (["offload=model"], "invalid offload='model':"),
        (["channels_last=true,false"], "invalid channels_last="),
        (["fuse_qkv=true", "attention=eager"], "invalid fuse_qkv=true:"),
        (["safety_checker=true"], "invalid safety_checker=true: only Stable Diffusion 1.x"),
        (["model=tiny-sd", "model.id=/no/such/model.safetensors"], "invalid model.id='/no/such/model.safetensors': no such checkpoint file"),
        (["model=tiny-sd", f"model.id={tmp_path / 'x.safetensors'}", "safety_checker=true"], "invalid safety_checker=true: a single-file checkpoint"),
    ]
    (tmp_path / "x.safetensors").write_bytes(b"")
    runs = [(["-m", "model=tiny", *args], named) for args, named in cases]
    runs += [(["model=tiny", *args], named) for args, named in cases if not any("," in a for a in args)]  # single runs too
    report = main_per_case([args for args, _ in runs], tmp_path)
    for (args, named), (code, stderr) in zip(runs, report["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, code, stderr)
        assert lines[0].startswith("sweeper: error: invalid ") and named in lines[0], (args, lines[0])
    assert report["heavy"] == [], "refused before torch, diffusers or transformers were imported"
    assert not report["outputs"], "a refused sweep leaves no files"


# --- speed and memory options -------------------------------------------------------------------


@pytest.mark.slow
def test_speed_and_memory_options_run_are_recorded_and_keep_the_images(tmp_path, tiny_models, fresh_cache):
    options = {"channels_last": True, "fuse_qkv": True, "vae_slicing": True}
    fast = tmp_path / "options"  # composed from conf/ as the CLI does, rendered in process
    render_in_process(fast, [composed_job(0, "model=tiny", "seed=[0,1]", *(f"{k}=true" for k in options))])
    df = manifest_of(fast)
    assert len(df) == 2 and set(df.status) == {"ok"}
    for key in options:
        assert df[key].tolist() == [True, True], key
    assert set(df.attention) == {"sdpa"} and set(df.offload) == {"none"} and set(df["compile"]) == {False}
    # The same images rendered the default way (in process: the same code as the CLI).
    plain = tmp_path / "plain"
    specs = plan([Job(0, plan_config(seed=[0, 1]))])
    assert sorted(s.image_id for s in specs) == sorted(df.image_id), "options are not part of image_id"
    render_in_process(plain, [Job(0, plan_config(seed=[0, 1]))])
    default = manifest_of(plain).set_index("image_id")
    for _, row in df.iterrows():
        levels = np.abs(pixels(fast, row) - pixels(plain, default.loc[row["image_id"]]))
        assert levels.max() <= 3, levels.max()


def test_speed_options_are_applied_to_the_pipeline(fresh_cache):
    options = dict(channels_last=True, fuse_qkv=True, vae_slicing=True, vae_tiling=True, compile="max-autotune")
    (spec,) = plan([Job(0, plan_config(**options))])
    pipe = pipelines.base_pipeline(this_process(), spec, "cpu")
    assert pipe.unet._compiled_call_impl is not None  # nn.Module.compile: compiles at the first call
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"FusedAttnProcessor2_0"}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    (plain,) = plan([Job(0, plan_config())])
    default = pipelines.base_pipeline(this_process(), plain, "cpu")
    assert default is not pipe and not default.vae.use_tiling and default.unet._compiled_call_impl is None
    assert {type(p).__name__ for p in default.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_eager_attention_runs_eager_and_renders_the_same_images(fresh_cache):
    specs = plan([Job(0, plan_config(seed=[0, 1]))])
    eager_specs = plan([Job(0, plan_config(seed=[0, 1], attention="eager"))])
    assert [s.image_id for s in specs] == [s.image_id for s in eager_specs]
    eager = pipelines.base_pipeline(this_process(), eager_specs[0], "cpu")
    assert {type(p).__name__ for p in eager.unet.attn_processors.values()} == {"AttnProcessor"}
    assert {type(p).__name__ for p in eager.vae.attn_processors.values()} == {"AttnProcessor"}
    a = np.round(render_batch(Batch(tuple(specs)), "cpu", this_process()).images * 255)
    b = np.round(render_batch(Batch(tuple(eager_specs)), "cpu", this_process()).images * 255)
    assert np.abs(a - b).max() <= 2
    # Fused projections come only with diffusers' SDPA processor: eager would be dropped silently.
    with pytest.raises(PlanError, match=r"^invalid fuse_qkv=true: .*attention=eager"):
        plan([Job(0, plan_config(attention="eager", fuse_qkv=True))])


# --- the safety checker -------------------------------------------------------------------------


def test_flagged_images_come_out_black_with_nsfw_and_a_warning(tmp_path, fresh_cache, images):
    config = plan_config(model="tiny-sd", seed=[0, 1])
    img2img = plan_config(model="tiny-sd", seed=[0], mode="img2img", init_image=str(images["inits"] / "a.png"), strength=0.5)
    jobs = [Job(0, config), Job(1, img2img)]
    specs = plan(jobs)
    assert all(s.safety_checker for s in specs)
    checker = pipelines.base_pipeline(this_process(), specs[0], "cpu").safety_checker
    assert checker is not None
    checker.concept_embeds_weights.data[:] = -2  # every image is over every threshold
    summary = run.execute(run.prepare(jobs, tmp_path), tmp_path)
    assert summary.rendered == 3 and not summary.failed
    manifest.merge(tmp_path)
    df = manifest_of(tmp_path)
    assert len(df) == 3 and set(df.status) == {"ok"}
    assert df.nsfw.tolist() == [True] * 3 and df.safety_checker.all()
    assert all(calls.SAFETY_WARNING in w for w in df.warning), df.warning.tolist()
    for _, row in df.iterrows():
        assert pixels(tmp_path, row).max() == 0, "flagged images are black"


def test_safety_checker_choice_for_each_kind_of_model(tmp_path):
    assert plan([Job(0, plan_config(model="tiny-sd"))])[0].safety_checker is True  # auto: tiny-sd ships one
    assert plan([Job(0, plan_config(model="tiny-sd", safety_checker=False))])[0].safety_checker is False
    assert plan([Job(0, plan_config())])[0].safety_checker is False  # SDXL has none
    with pytest.raises(PlanError, match=r"^invalid safety_checker=true: only Stable Diffusion 1.x"):
        plan([Job(0, plan_config(safety_checker=True))])
    # A checkpoint file holds no checker: auto is off, true takes the one of model.config.
    checkpoint = tmp_path / "model.safetensors"
    checkpoint.write_bytes(b"")
    single = {"name": "mine", "id": str(checkpoint), "revision": None, "family": "sd15", "config": None}
    assert plan([Job(0, plan_config(model=single))])[0].safety_checker is False
    with pytest.raises(PlanError, match=r"^invalid safety_checker=true: a single-file checkpoint holds no safety checker"):
        plan([Job(0, plan_config(model=single, safety_checker=True))])
    configured = {**single, "config": "tiny-sd"}
    assert plan([Job(0, plan_config(model=configured, safety_checker=True))])[0].safety_checker is True


# --- init images in process ---------------------------------------------------------------------


def test_init_images_are_read_upright_and_resized(tmp_path):
    """A camera's photo (EXIF orientation 6: rotate 90 degrees clockwise) is used upright, as diffusers' load_image reads it."""
    path = tmp_path / "photo.png"
    stored = Image.new("RGB", (32, 16), (255, 0, 0))
    stored.paste((0, 0, 255), (0, 0, 16, 16))  # left half blue as stored; upright, the top half is blue
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, exif=exif)
    image = _image(str(path), sha(path), {"width": 16, "height": 32}, "RGB")
    assert image.size == (16, 32)
    top, bottom = np.asarray(image)[4, 8], np.asarray(image)[28, 8]
    assert tuple(top) == (0, 0, 255) and tuple(bottom) == (255, 0, 0)
    resized = _image(str(path), sha(path), {"width": 64, "height": 64}, "L")
    assert resized.size == (64, 64) and resized.mode == "L"
    planned = sha(path)
    stored.save(path)  # edited after planning
    with pytest.raises(RuntimeError, match="changed since the sweep was planned"):
        _image(str(path), planned, {"width": 16, "height": 32}, "RGB")


# --- single-file checkpoints --------------------------------------------------------------------


@pytest.mark.slow
def test_a_single_file_checkpoint_renders_the_same_pixels_as_its_model(tmp_path, tiny_models, warm_cli):
    from single_file import write_single_file

    checkpoint = write_single_file("tiny-sd", tmp_path / "model.safetensors")
    single = warm_cli.run(
        "model=tiny-sd", f"model.id={checkpoint}", f"model.config={tiny_models['tiny-sd']}", "model.name=mine",
        "safety_checker=true", "seed=[0,1]", "name=single", cwd=tmp_path,
    )
    assert single.returncode == 0, single.stderr
    # The plain model in process (the same render code, without a second interpreter start).
    a, b = tmp_path / "outputs" / "runs" / "single", tmp_path / "plain"
    render_in_process(b, [Job(0, plan_config(model="tiny-sd", guidance=7.5, seed=[0, 1]))])
    mine, theirs = manifest_of(a).set_index("seed"), manifest_of(b).set_index("seed")
    assert set(mine.model) == {"mine"} and set(mine.model_id) == {str(checkpoint)}
    assert set(mine.model_config) == {str(tiny_models["tiny-sd"])}
    assert all(revision.startswith("file:") for revision in mine.model_revision)
    # The checker is not in the file: safety_checker=true took model.config's, and it ran.
    assert mine.safety_checker.all() and mine.nsfw.tolist() == [False, False]
    for seed in (0, 1):
        assert np.array_equal(pixels(a, mine.loc[seed]), pixels(b, theirs.loc[seed])), seed
    assert not set(mine.image_id) & set(theirs.image_id)  # another model, other ids
    # A1111's model hash: the file's sha256 prefix (and its name without the suffix), as civitai knows it.
    text = Image.open(a / mine.iloc[0]["path"]).text["parameters"]
    assert f"Model: model, Model hash: {hashlib.sha256(checkpoint.read_bytes()).hexdigest()[:10]}," in text
    assert "Model hash" not in Image.open(b / theirs.iloc[0]["path"]).text["parameters"]  # a diffusers dir has no one file
