"""Model families (rendering/families): one module each, found by the package alone; moving
SDXL and SD 1.x into that shape changed no image id, PNG text or manifest file."""

from __future__ import annotations

import hashlib
import io
import json

import pyarrow.parquet as pq
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from sweeper.app import config_dir
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan
from sweeper.rendering import families
from sweeper.rendering.tiny import tiny_model_dir, tiny_models
from sweeper.storing import manifest, store

# Ids and a digest of the PNG text chunks, as sweeper made them before families existed (commit 6258720).
PINNED = {
    ("model=tiny",): (["34a0b73146dd1018da5f"], "e3dd21ed99040922"),
    ("model=tiny", "refiner=tiny", "guidance=7", "seed=[1,2]", "prompt=[a cat,a dog]", "negative_prompt=[blurry,dark]"): (
        ["f19e273b606ca4ec08e7", "db1235ba4fd9dde3eb34", "594f19ada00673fbbf9b", "300fc6c8649ab919aff1"], "e405d687761803ab"),
    ("model=tiny", "original_size=[128,128]", "target_size=[64,64]", "prompt_2=second", "scheduler=dpmpp_2m_karras"): (
        ["3dca74d9d161319b27a2"], "ddba38371553edc8"),
    ("model=tiny-sd", "guidance=1", "steps=3", "scheduler=ddim"): (["3aebefd155a9fb2d1609"], "6e187cefab3dd9a3"),
    ("model=sdxl", "dtype=float16", "device=cuda", "batch_size=4", "compile=true"): (["d9a8e7e83897186ebd5a"], "e2d71823d06f323d"),
    ("model=sd15", "width=512", "height=768", "scheduler=euler_a"): (["2f8787bc1b43252dbb48"], "60c97a3d711fa21b"),
}
# The manifest file of an SDXL sweep before families: its schema's digest and column count.
PINNED_SCHEMA = ("4d5eb8cf20c5a0c3", 71)


def _plan(*overrides: str, num: int = 0):
    with initialize_config_dir(config_dir=config_dir(), version_base=None):
        c = OmegaConf.to_container(compose("config", overrides=list(overrides)), resolve=True)
    return plan([Job(num, c, list(overrides))], auto_device="cpu")


@pytest.mark.parametrize("overrides", list(PINNED), ids=lambda o: " ".join(o))
def test_sd_families_make_the_ids_and_png_text_they_always_made(overrides):
    specs = _plan(*overrides, num=list(PINNED).index(overrides))
    digest = hashlib.sha256()
    for spec in specs:
        row = manifest.row(spec, store.image_path(spec), "ok", None, batch_index=0)
        png = store.png_bytes(Image.new("RGB", (8, 8)), spec, {"sweeper": "x", "diffusers": "y", "torch": "z"}, row, store.call_record(specs, 1))
        with Image.open(io.BytesIO(png)) as image:
            digest.update(spec.image_id.encode() + image.text["parameters"].encode() + image.text["sweeper"].encode())
    assert ([s.image_id for s in specs], digest.hexdigest()[:16]) == PINNED[overrides]


def test_an_sdxl_sweeps_manifest_file_has_the_schema_it_always_had(tmp_path):
    (spec,) = _plan("model=tiny")
    manifest.write_part(tmp_path, [manifest.row(spec, store.image_path(spec), "error", "x")])
    manifest.merge(tmp_path)
    schema = pq.read_schema(tmp_path / "manifest.parquet").remove_metadata()
    assert (hashlib.sha256(str(schema).encode()).hexdigest()[:16], len(schema.names)) == PINNED_SCHEMA
    assert set(manifest.read(tmp_path).column_names) == set(manifest.SCHEMA.names)  # read() adds the others as nulls


def test_every_family_module_declares_a_whole_family():
    assert {"sdxl", "sd15"} <= set(families.names())
    for name in families.names():
        family = families.get(name)
        assert family.name == name and family.title
        assert family.pipelines["txt2img"] in family.index_classes
        assert set(family.keys) <= set(families.FAMILY_KEYS), name
        assert family.schedulers in (families.DISCRETE, families.FLOW)
        assert family.tiny and all(tiny_models()[tiny] is family for tiny in family.tiny)


@pytest.mark.parametrize("tiny, family", [("tiny-sd", "sd15"), ("tiny-sdxl", "sdxl")])
def test_another_model_id_is_planned_as_the_family_its_model_index_names(tiny_models, tiny, family):
    # model=tiny (SDXL) with the SD 1.x dir as model.id: the dir's model_index.json wins over the preset
    (spec,) = _plan("model=tiny" if family == "sd15" else "model=tiny-sd", f"model.id={tiny_models[tiny]}")
    assert spec.family == family
    (spec,) = _plan("model=tiny", f"model.id={tiny_models['tiny-sd']}", "model.family=sdxl")  # said outright: as said
    assert spec.family == "sdxl"


def test_a_model_index_of_no_known_family_is_refused_in_one_line(tmp_path):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "WanPipeline"}))
    with pytest.raises(PlanError) as error:
        _plan("model=tiny", f"model.id={tmp_path}")
    assert "\n" not in str(error.value) and "WanPipeline is of no family sweeper knows" in str(error.value)


@pytest.mark.parametrize("key, value", [("true_cfg", "4"), ("max_sequence_length", "256"), ("shift", "3"), ("slg_layers", "[7,8]"),
                                        ("prompt_3", "t5"), ("dynamic_shift", "true")])  # clip_skip: SDXL takes it
def test_a_key_sdxl_would_ignore_is_refused_naming_the_family_and_its_keys(key, value):
    with pytest.raises(PlanError) as error:
        _plan("model=tiny", f"{key}={value}")
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"invalid {key}=") and "model=tiny is SDXL (sdxl), which ignores it" in message
    assert "the keys of its own: negative_prompt, prompt_2" in message


def test_a_tiny_model_is_built_by_its_family_into_its_recipe_dir(tiny_models):
    path = tiny_model_dir("tiny-sd")
    assert path.parent.name == families.get("sd15").tiny_version
    assert json.loads((path / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"


def test_sigmas_is_a_key_of_the_sd_families_too(tiny_models):
    from sweeper.planning.schedule import Batch
    from sweeper.rendering import pipelines
    from sweeper.rendering.render import render_batch
    from sweeper.rendering.runtime import this_process

    (plain,) = _plan("model=tiny", "steps=4", "scheduler=dpmpp_2m")
    (karras,) = _plan("model=tiny", "steps=4", "scheduler=dpmpp_2m", "sigmas=karras")
    assert (plain.sigmas, karras.sigmas) == (None, "karras") and plain.image_id != karras.image_id
    (default,) = _plan("model=tiny", "steps=4", "scheduler=dpmpp_2m", "sigmas=default")
    assert default.image_id == plain.image_id  # `default` is the scheduler's own schedule: one picture, one id
    images = [render_batch(Batch((spec,)), "cpu", this_process()).images[0] for spec in (plain, karras)]
    assert abs(images[0] - images[1]).max() > 0.02
    (ddim,) = _plan("model=tiny", "scheduler=ddim", "sigmas=karras")
    with pytest.raises(PlanError, match="use_karras_sigmas' is not a config value of DDIMScheduler"):
        pipelines.check_scheduler_classes([ddim])


@pytest.mark.parametrize("model", ["tiny-sd35", "tiny-flux2-klein"])
@pytest.mark.parametrize("scheduler", ["flow_unipc", "flow_dpmpp_2m"])
def test_a_flow_scheduler_a_family_cannot_run_is_refused_in_one_line(model, scheduler):
    with pytest.raises(PlanError) as error:
        _plan(f"model={model}", f"scheduler={scheduler}")
    assert "\n" not in str(error.value) and f"invalid scheduler={scheduler!r}: " in str(error.value)
    assert "FlowMatchEulerDiscreteScheduler only (tried here): auto, flow_euler" in str(error.value)
