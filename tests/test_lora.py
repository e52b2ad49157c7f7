"""LoRA adapters and their weights as sweep axes (lora, lora_scale).

The LoRA files are made as a user makes one to try (`python -m sweeper.make_lora`):
random peft adapters on the tiny SDXL and SD 1.x UNets, saved with the
pipeline's `save_lora_weights` (diffusers format); one is converted to kohya's
key names.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import composed_job, main_per_case, plan_config, render_in_process
from sweeper import replay
from sweeper.make_lora import make_lora
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

SMALL = dict(width=32, height=32, steps=2, device="cpu")


def _to_kohya(source: Path, target: Path) -> None:
    """The same adapter with kohya's key names: lora_unet_<module>.lora_down/lora_up.weight and .alpha."""
    import torch
    from safetensors.torch import load_file, save_file

    converted = {}
    for key, tensor in load_file(source).items():
        module, kind = key.removeprefix("unet.").rsplit(".lora_", 1)
        name = "lora_unet_" + module.replace(".", "_")
        converted[f"{name}.{'lora_down' if kind.startswith('A') else 'lora_up'}.weight"] = tensor
        if kind.startswith("A"):
            converted[f"{name}.alpha"] = torch.tensor(float(tensor.shape[0]))
    save_file(converted, target)


@pytest.fixture(scope="module")
def loras(tmp_path_factory, tiny_models) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("loras")
    files = {"a": folder / "xl_a.safetensors", "b": folder / "xl_b.safetensors", "sd": folder / "sd_a.safetensors"}
    make_lora(files["a"], "tiny", seed=1)
    make_lora(files["b"], "tiny", seed=2)
    make_lora(files["sd"], "tiny-sd", seed=3)
    files["kohya"] = folder / "sd_kohya.safetensors"
    _to_kohya(files["sd"], files["kohya"])
    return files


def one(**config) -> object:
    (spec,) = plan([Job(0, plan_config(**{**SMALL, **config}))])
    return spec


def manifest(out_dir: Path) -> pd.DataFrame:
    return pd.read_parquet(out_dir / "manifest.parquet")


def pixels(out_dir: Path, row) -> np.ndarray:
    return np.asarray(Image.open(out_dir / row.path).convert("RGB")).astype(int)


# --- planning: ids, checks (no torch) --------------------------------------------------------


def test_without_lora_the_ids_of_earlier_sweeps_stay(tmp_path):
    # Ids planned before LoRA existed (sweeper at main before #19): optional id fields at their default are not hashed.
    assert plan([Job(0, plan_config(**SMALL, seed=[0, 1]))])[1].image_id == "1c3efbe42efd72312c9f"
    spec = one(lora=None, lora_scale=0.5)
    assert (spec.lora, spec.lora_scale, spec.lora_sha) == (None, None, None)
    assert spec.image_id == one().image_id and not {"lora_scale", "lora_sha"} & set(spec.render_fields())


def test_the_id_follows_the_content_and_weight_not_the_path(tmp_path, loras):
    moved = tmp_path / "elsewhere" / "renamed.safetensors"
    moved.parent.mkdir()
    shutil.copy(loras["a"], moved)
    at = {scale: one(lora=str(loras["a"]), lora_scale=scale) for scale in (0, 0.4, 0.8)}
    assert at[0.4].lora == (str(loras["a"]),) and at[0.4].lora_scale == (0.4,)
    assert at[0.4].lora_sha == (hashlib.sha256(loras["a"].read_bytes()).hexdigest()[:20],)
    assert len({spec.image_id for spec in at.values()} | {one().image_id}) == 4  # weight 0 is its own id
    assert one(lora=str(moved), lora_scale=0.4).image_id == at[0.4].image_id
    edited = tmp_path / "edited.safetensors"
    edited.write_bytes(loras["a"].read_bytes()[:-4] + b"\0\0\0\1")
    assert one(lora=str(edited), lora_scale=0.4).image_id != at[0.4].image_id
    both = one(lora=[str(loras["a"]), str(loras["b"])], lora_scale=[0.4, 1])
    assert both.lora_scale == (0.4, 1.0) and len(both.lora_sha) == 2
    assert one(lora=str(loras["a"])).lora_scale == (1.0,)  # the default weight


@pytest.mark.parametrize(
    "changes, named",
    [
        (dict(lora="missing.safetensors"), "invalid lora='missing.safetensors': no such file"),
        (dict(lora="A", lora_scale=[0.5, 0.5]), "invalid lora_scale=[0.5, 0.5]: must be a number, or a list of 1 numbers"),
        (dict(lora="A", lora_scale="strong"), "invalid lora_scale='strong': must be a number"),
        (dict(lora="A", lora_scale=True), "invalid lora_scale=true: must be a number"),
        (dict(lora=None, lora_scale=[0.5]), "invalid lora_scale=[0.5]: a list of weights needs as many adapters"),
        (dict(lora=["A", "A"]), "lists one adapter twice"),
        (dict(lora="A", fuse_qkv=True), "invalid fuse_qkv=true: LoRA adapters act on the separate Q/K/V projections"),
        (dict(lora="PT"), "not a .safetensors file"),
        (dict(lora="EMPTY"), "the folder holds no .safetensors files"),
    ],
)
def test_bad_lora_values_are_refused_in_one_line(tmp_path, loras, changes, named):
    (tmp_path / "empty").mkdir()
    (tmp_path / "old.pt").write_bytes(b"x")
    where = {"A": str(loras["a"]), "PT": str(tmp_path / "old.pt"), "EMPTY": str(tmp_path / "empty")}
    value = changes.get("lora")
    changes["lora"] = [where.get(v, v) for v in value] if isinstance(value, list) else where.get(value, value)
    with pytest.raises(PlanError) as error:
        one(**changes)
    assert named in str(error.value) and "\n" not in str(error.value)


def test_the_cli_refuses_bad_lora_values_with_exit_2_before_torch(tmp_path, loras):
    cases = [
        ["model=tiny", "lora=nowhere.safetensors"],
        ["model=tiny", f"lora={loras['a']}", "lora_scale=[1,2]"],
        ["model=tiny", f"lora={loras['a']}", "lora_scale=much"],
    ]
    out = main_per_case(cases, tmp_path)
    assert [code for code, _ in out["results"]] == [2, 2, 2]
    lines = [stderr.strip() for _, stderr in out["results"]]
    assert all(len(line.splitlines()) == 1 for line in lines), lines
    assert "lora='nowhere.safetensors': no such file" in lines[0] and "lora_scale=[1, 2]" in lines[1] and "lora_scale='much'" in lines[2]
    assert not out["torch"] and not out["outputs"]


# --- rendering --------------------------------------------------------------------------------


def test_a_weight_sweep_loads_the_model_and_the_adapter_once(tmp_path, loras, fresh_runtime):
    out = tmp_path / "sweep"
    small = ("model=tiny", "width=32", "height=32", "steps=2")
    jobs = [composed_job(0, *small)] + [composed_job(n, *small, f"lora={loras['a']}", f"lora_scale={s}") for n, s in ((1, 0), (2, 0.5), (3, 1))]
    render_in_process(out, jobs)
    df = manifest(out)
    assert len(df) == 4 and set(df.status) == {"ok"}
    assert [kind for kind, *_ in fresh_runtime.loads] == ["tiny-sdxl", "lora"], fresh_runtime.loads  # no reload per weight
    by = {None if pd.isna(scale) else scale: row for row, scale in zip(df.itertuples(), df.lora_scale)}
    assert np.array_equal(pixels(out, by[0.0]), pixels(out, by[None])), "weight 0 renders as no LoRA"
    assert by[0.0].image_id != by[None].image_id
    assert np.abs(pixels(out, by[1.0]) - pixels(out, by[None])).max() > 8
    with_lora = df[df.lora.notna()]
    assert set(with_lora.lora) == {"xl_a.safetensors"}  # names; where they are is in plan.parquet


    # The PNG text as A1111 writes it: the tag in the prompt line and the short hash civitai looks up.
    image = Image.open(out / by[0.5].path)
    data = loras["a"].read_bytes()
    short = hashlib.sha256(data[8 + int.from_bytes(data[:8], "little"):]).hexdigest()[:12]
    first, _, settings = image.text["parameters"].partition("\n")
    assert first.endswith(" <lora:xl_a:0.5>")
    assert f'Lora hashes: "xl_a: {short}"' in settings and set(with_lora.lora_sha) == {short}  # the manifest's too
    assert json.loads(image.text["sweeper"])["spec"]["lora"] == ["xl_a.safetensors"]  # no local path in a PNG

    # Resume: the same sweep again renders and loads nothing.
    before = {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    render_in_process(out, jobs)
    assert len(fresh_runtime.loads) == 2 and len(manifest(out)) == 4
    assert {p.name: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == before


def test_two_adapters_apply_together_and_weight_0_drops_one(tmp_path, loras, fresh_runtime):
    a, b = str(loras["a"]), str(loras["b"])
    jobs = [Job(n, plan_config(**SMALL, **config)) for n, config in enumerate([
        dict(lora=a, lora_scale=1), dict(lora=b, lora_scale=1), dict(lora=[a, b], lora_scale=[1, 1]), dict(lora=[a, b], lora_scale=[1, 0]),
    ])]
    render_in_process(tmp_path, jobs)
    df = manifest(tmp_path).sort_values("job_num")
    assert set(df.status) == {"ok"} and df.image_id.is_unique
    only_a, only_b, both, a_and_0 = (pixels(tmp_path, row) for row in df.itertuples())
    assert not np.array_equal(both, only_a) and not np.array_equal(both, only_b)
    assert np.array_equal(a_and_0, only_a)
    # Several adapters in the manifest: names joined; one shared weight a number, else each weight with its name.
    assert df.lora.tolist()[2:] == ["xl_a.safetensors, xl_b.safetensors", "xl_a.safetensors:1, xl_b.safetensors:0"]
    assert df.lora_scale.tolist()[2] == 1.0 and pd.isna(df.lora_scale.tolist()[3]) and df.lora_sha.str.count(", ").tolist() == [0, 0, 1, 1]
    assert [kind for kind, *_ in fresh_runtime.loads] == ["tiny-sdxl", "lora", "lora"]


def test_sd15_kohya_and_diffusers_files_of_one_adapter_render_alike_and_every_mode_takes_it(tmp_path, loras, fresh_runtime):
    photo = tmp_path / "photo.png"
    Image.fromarray((np.indices((32, 32)).sum(axis=0) * 4 % 256).astype("uint8")).convert("RGB").save(photo)
    mask = tmp_path / "mask.png"
    Image.new("L", (32, 32), 255).save(mask)
    sd, kohya = str(loras["sd"]), str(loras["kohya"])
    configs = [
        dict(lora=None), dict(lora=sd), dict(lora=kohya),
        dict(lora=sd, mode="img2img", init_image=str(photo)), dict(lora=sd, mode="inpaint", init_image=str(photo), mask_image=str(mask)),
    ]
    render_in_process(tmp_path / "out", [Job(n, plan_config(**SMALL, model="tiny-sd", strength=1.0, **c)) for n, c in enumerate(configs)])
    df = manifest(tmp_path / "out").sort_values("job_num")
    assert len(df) == 5 and set(df.status) == {"ok"}, df.error.tolist()
    plain, diffusers_format, kohya_format = (pixels(tmp_path / "out", row) for row in list(df.itertuples())[:3])
    assert np.abs(diffusers_format - plain).max() > 8
    assert np.abs(kohya_format - diffusers_format).max() <= 2  # the same weights under kohya's names
    assert [kind for kind, *_ in fresh_runtime.loads] == ["tiny-sd", "lora", "lora"]


def test_the_refiner_takes_no_lora_and_the_base_does(tmp_path, loras, fresh_runtime):
    jobs = [Job(n, plan_config(**{**SMALL, "steps": 4}, refiner="tiny", lora=lora)) for n, lora in enumerate((None, str(loras["a"])))]
    render_in_process(tmp_path, jobs)
    df = manifest(tmp_path).sort_values("job_num")
    assert set(df.status) == {"ok"}
    plain, with_lora = (pixels(tmp_path, row) for row in df.itertuples())
    assert np.abs(with_lora - plain).max() > 8
    refiner = next(p for key, r in fresh_runtime.residents.items() if key[0] == "refiner" for p in [r.pipe])
    assert not refiner.get_list_adapters().get("unet")


def test_a_lora_of_another_family_is_refused_at_planning_from_its_header_in_one_whole_line(tmp_path, loras):
    cases = [
        ["-m", "model=tiny", f"lora={loras['sd']}", "seed=0,1"],  # SD 1.x on SDXL, diffusers format
        ["-m", "model=tiny", f"lora={loras['kohya']}", "lora_scale=0.5,1"],  # ... kohya's
        ["-m", "model=tiny-sd", f"lora={loras['a']}"],  # SDXL on SD 1.x
        ["-m", "model=tiny", f"lora=[{loras['a']},{loras['sd']}]"],  # one of a list
    ]
    out = main_per_case(cases, tmp_path)
    for args, (code, stderr) in zip(cases, out["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, stderr)
        assert lines[0].startswith("sweeper: error: invalid lora=") and "made for another model family: its cross-attention takes" in lines[0]
        assert "again" not in lines[0] and lines[0].endswith(("use a LoRA made for model=tiny", "use a LoRA made for model=tiny-sd"))
    assert "takes 32-wide text embeddings, model=tiny takes 80-wide" in out["results"][0][1]
    assert not out["torch"] and not out["outputs"]  # before any model loads, and nothing written


def test_a_lora_of_another_family_that_its_header_cannot_tell_fails_its_images_in_one_line(tmp_path, loras, fresh_runtime):
    from safetensors.torch import load_file, save_file

    hidden = tmp_path / "sd_no_to_k.safetensors"  # the weight planning reads the family from, left out
    save_file({key: value for key, value in load_file(loras["sd"]).items() if "attn2.to_k" not in key}, hidden)
    jobs = [Job(0, plan_config(**SMALL, lora=str(hidden))), Job(1, plan_config(**SMALL))]
    render_in_process(tmp_path, jobs)
    df = manifest(tmp_path).sort_values("job_num")
    assert list(df.status) == ["error", "ok"]
    error = df.error.iloc[0]
    assert error.startswith("LoraMismatch: lora=sd_no_to_k.safetensors: its weights do not fit the sdxl model") and "\n" not in error


def test_replay_repeats_the_lora_and_checks_the_file(tmp_path, loras, fresh_runtime, capsys):
    render_in_process(tmp_path / "r", [Job(0, plan_config(**SMALL, lora=str(loras["a"]), lora_scale=0.7))])
    (png,) = (tmp_path / "r" / "images").glob("*.png")
    assert replay.main([str(png), "--lora", str(loras["a"].parent)]) == 0
    assert replay.main([str(png), "--lora", str(loras["a"])]) == 0
    assert ": identical" in capsys.readouterr().out
    assert replay.main([str(png)]) == 2
    assert "the image was made with the LoRA 'xl_a.safetensors'; pass --lora" in capsys.readouterr().err
    other = tmp_path / "other" / "xl_a.safetensors"
    other.parent.mkdir()
    shutil.copy(loras["b"], other)  # the recorded name, other content
    assert replay.main([str(png), "--lora", str(other.parent)]) == 2
    assert "invalid lora_sha" in capsys.readouterr().err


def test_make_lora_refuses_a_name_that_is_not_safetensors_before_loading_anything(tmp_path, capsys):
    from sweeper import make_lora as maker

    assert maker.main([str(tmp_path / "style.pt")]) == 2
    assert capsys.readouterr().err.strip() == f"sweeper: error: invalid output {tmp_path / 'style.pt'}: must end in .safetensors"
    assert maker.main([str(tmp_path / "style.safetensors"), "--rank", "0"]) == 2 and not list(tmp_path.iterdir())
