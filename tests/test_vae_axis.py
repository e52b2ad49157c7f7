"""The `vae` axis (issue 32, part 3): another VAE by diffusers folder or single .safetensors file against the
model's own, on the tiny SDXL and SD 1.x models: it changes the pixels, is part of the id by its content (unset:
the old id), is written under A1111's names, replays exactly, loads once per value, and is refused in one line
where it cannot act.

The second VAE is the tiny model's VAE config with other random weights, saved as a user has one: with
save_pretrained (a folder) and as one file in the original layout (A1111's VAE files), both the same weights."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, refused_in_one_line, render_in_process
from PIL import Image

from sweeper import replay
from sweeper.planning.plan import plan

SMALL = ("width=64", "height=64", "steps=2", "prompt=a red fox")


@pytest.fixture(scope="module")
def vaes(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """The second VAE as a folder (force_upcast false, as the fp16-fixed VAEs ship) and as a single file; a 16-channel one."""
    import torch
    from diffusers import AutoencoderKL
    from safetensors.torch import save_file

    from single_file import vae_to_ldm

    folder = tmp_path_factory.mktemp("vaes")
    config = AutoencoderKL.load_config(str(tiny_models["tiny-sdxl"] / "vae"))
    torch.manual_seed(7)
    vae = AutoencoderKL.from_config({**config, "force_upcast": False})
    vae.save_pretrained(folder / "tinyvae")
    save_file({key: tensor.contiguous() for key, tensor in vae_to_ldm(vae).items()}, folder / "tinyvae.safetensors")
    AutoencoderKL.from_config({**config, "latent_channels": 16}).save_pretrained(folder / "flux-like")
    return {"folder": folder / "tinyvae", "file": folder / "tinyvae.safetensors", "wide": folder / "flux-like"}


def pixels(sweep: Path, path: str) -> np.ndarray:
    return np.asarray(Image.open(sweep / path).convert("RGB")).astype(int)


def test_a_vae_sweep_changes_the_pixels_keeps_the_stock_id_is_written_as_a1111_does_and_replays(tmp_path, warm_cli, vaes, capsys):
    result = warm_cli.run("-m", "model=tiny", *SMALL, "seed=1", f"vae=null,{vaes['folder']},{vaes['file']}", "name=vaes", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "vaes"
    df = pd.read_parquet(sweep / "manifest.parquet").sort_values("job_num")
    assert len(df) == 3 and set(df.status) == {"ok"} and df.image_id.is_unique
    stock, folder, file = df.itertuples()
    assert pd.isna(stock.vae) and pd.isna(stock.vae_sha) and (folder.vae, file.vae) == ("tinyvae", "tinyvae.safetensors")

    # The stock VAE keeps the id of a sweep without the key; another VAE changes the pixels; the same weights from
    # a folder or a single file (the model's VAE config) render the same pixels.
    (before,) = plan([composed_job(0, "model=tiny", *SMALL, "seed=1")])
    assert stock.image_id == before.image_id
    assert np.abs(pixels(sweep, folder.path) - pixels(sweep, stock.path)).max() > 8
    assert np.array_equal(pixels(sweep, folder.path), pixels(sweep, file.path))

    # A1111's keys: the file's sha256 (10 hex digits) and its name.
    text = {row.vae: Image.open(sweep / row.path).text["parameters"] for row in (folder, file)}
    sha = hashlib.sha256(vaes["file"].read_bytes()).hexdigest()
    assert f", VAE hash: {sha[:10]}, VAE: tinyvae.safetensors, " in text["tinyvae.safetensors"] and file.vae_sha == sha[:20]
    assert f", VAE hash: {folder.vae_sha[:10]}, VAE: tinyvae, " in text["tinyvae"]
    assert "VAE" not in Image.open(sweep / stock.path).text["parameters"]

    # Replay: the PNG names the VAE by its base name; --vae says where it is (the file, or a folder holding it).
    assert replay.main([str(sweep / file.path), "--vae", str(vaes["file"])]) == 0
    assert replay.main([str(sweep / folder.path), "--vae", str(vaes["folder"].parent)]) == 0
    assert capsys.readouterr().out.count(": identical (") == 2


def test_a_moved_vae_keeps_its_ids_and_an_edited_one_gets_new_ones(tmp_path, vaes):
    from safetensors.torch import load_file, save_file

    def image_id(path: Path) -> str:
        (spec,) = plan([composed_job(0, "model=tiny", *SMALL, f"vae={path}")])
        return spec.image_id

    moved = tmp_path / "elsewhere.safetensors"
    shutil.copy(vaes["file"], moved)
    assert image_id(moved) == image_id(vaes["file"])
    weights = load_file(moved)
    weights["decoder.conv_out.bias"] = weights["decoder.conv_out.bias"] + 1
    save_file(weights, moved)
    assert image_id(moved) != image_id(vaes["file"])


def test_each_vae_value_loads_once_with_its_own_upcast_on_sd1_and_sdxl(tmp_path, vaes, fresh_runtime):
    """SD 1.x takes a VAE file too. SDXL: two VAE values and the stock one in turns (one image per call), each loaded
    once; the fp16-fix-like VAE keeps its own force_upcast (false), the single file takes the model's VAE config (true)."""
    small = (*SMALL, "seed=[0,1]", "batch_size=1")
    jobs = [composed_job(0, "model=tiny-sd", *SMALL, f"vae={vaes['file']}"), composed_job(1, "model=tiny-sd", *SMALL)]
    values = (str(vaes["folder"]), None, str(vaes["file"]))
    jobs += [composed_job(2 + n, "model=tiny", *small, *([f"vae={value}"] if value else [])) for n, value in enumerate(values)]
    render_in_process(tmp_path, jobs)
    df = pd.read_parquet(tmp_path / "manifest.parquet")
    assert len(df) == 8 and set(df.status) == {"ok"}, df.error.tolist()
    assert [kind for kind, *_ in fresh_runtime.loads] == ["tiny-sd", "vae", "tiny-sdxl", "vae", "vae"], fresh_runtime.loads
    first = {row.job_num: pixels(tmp_path, row.path) for row in df[df.seed == 0].itertuples()}
    assert np.abs(first[0] - first[1]).max() > 8  # SD 1.x
    assert np.array_equal(first[2], first[4])  # the same VAE weights, from a folder or a file
    (resident,) = [resident for key, resident in fresh_runtime.residents.items() if key[0] == "base"]
    assert resident.own_vae.config.force_upcast and [vae.config.force_upcast for vae in resident.vaes.values()] == [False, True]


def test_img2img_and_the_refiner_decode_with_the_vae(tmp_path, vaes, fresh_runtime):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.indices((64, 64)).sum(axis=0) * 2 % 256).astype("uint8")).convert("RGB").save(photo)
    refined = ("model=tiny", "refiner=tiny", "width=64", "height=64", "steps=4", "prompt=a red fox")
    img2img = ("model=tiny", *SMALL, "mode=img2img", f"init_image={photo}")
    jobs = [composed_job(n, *common, *([f"vae={vaes['folder']}"] if n % 2 else [])) for n, common in enumerate((refined, refined, img2img, img2img))]
    render_in_process(tmp_path / "out", jobs)
    df = pd.read_parquet(tmp_path / "out" / "manifest.parquet").sort_values("job_num")
    assert len(df) == 4 and set(df.status) == {"ok"}, df.error.tolist()
    refiner_stock, refiner_vae, img2img_stock, img2img_vae = (pixels(tmp_path / "out", path) for path in df.path)
    assert np.abs(refiner_vae - refiner_stock).max() > 8 and np.abs(img2img_vae - img2img_stock).max() > 8
    assert [kind for kind, *_ in fresh_runtime.loads].count("vae") == 1


@pytest.mark.parametrize("key", ["folder", "file"])
def test_a_vae_loads_in_the_specs_dtype(vaes, tiny_models, key):
    import torch
    from diffusers import AutoencoderKL

    from sweeper.rendering import vaes as loading

    (spec,) = plan([composed_job(0, "model=tiny", *SMALL, "dtype=bfloat16", f"vae={vaes[key]}")])
    own = AutoencoderKL.from_pretrained(str(tiny_models["tiny-sdxl"] / "vae"), dtype=torch.bfloat16)
    assert loading._load(spec, own, "cpu").dtype == torch.bfloat16


def test_a_hub_vae_comes_from_the_local_cache_and_offload_is_refused(tmp_path, vaes, monkeypatch):
    """Offline, a hub id is its snapshot in the local Hugging Face cache: the same files, the same hash."""
    from huggingface_hub import constants

    from sweeper.errors import PlanError

    repo = tmp_path / "hub" / "models--someone--tinyvae"
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in ("config.json", "diffusion_pytorch_model.safetensors"):
        shutil.copy(vaes["folder"] / name, snapshot / name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    (hub,) = plan([composed_job(0, "model=tiny", *SMALL, "vae=someone/tinyvae")])
    (local,) = plan([composed_job(0, "model=tiny", *SMALL, f"vae={vaes['folder']}")])
    assert (hub.vae, hub.vae_sha, hub.image_id) == ("someone/tinyvae", local.vae_sha, local.image_id)
    with pytest.raises(PlanError, match="invalid vae=.*: not with offload=model; use offload=none"):
        plan([composed_job(0, "model=tiny", *SMALL, "device=cuda", "offload=model", f"vae={vaes['folder']}")])


REFUSED = [
    (["model=tiny-flux", "vae={folder}"], "invalid vae="),
    (["model=tiny", "vae={wide}"], "its latents have 16 channels, model=tiny's have 4: a VAE made for another model family"),
    (["model=tiny", "vae=nobody/no-such-vae"], "invalid vae='nobody/no-such-vae': not in the local Hugging Face cache"),
    (["model=tiny", "vae={folder}/config.json"], "not a .safetensors file"),
    (["model=tiny-sd", "vae={folder}/nothing.safetensors"], "no such file"),
]


def test_what_cannot_act_is_refused_in_one_line_before_anything_loads(tmp_path, vaes):
    answers = refused_in_one_line([(["-m", "steps=2", "seed=0,1", *(arg.format(**vaes) for arg in args)], expected) for args, expected in REFUSED], tmp_path)
    assert "model=tiny-flux is Flux.1 (flux), which ignores it" in answers["results"][0][1]
