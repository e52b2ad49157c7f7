"""store.py (PNG + metadata, atomic writes) and manifest.py (part files, merge, resume)."""

from __future__ import annotations

import dataclasses

import datetime as dt
import io
import json
import os
import re
import threading
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from conftest import CONTRACT_COLUMNS, plan_config

from sweeper.storing import manifest, store
from sweeper.planning.plan import Job, plan
from sweeper.planning.spec import ImageSpec
from sweeper.storing.files import write_atomic
from sweeper.storing.store import BackgroundWriter, image_path, parameters_text, png_bytes

VERSIONS = {"sweeper": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"}


def spec_of(job_num: int = 0, **changes) -> ImageSpec:
    (spec,) = plan([Job(job_num, plan_config(**changes))])
    return spec


def specs_of(n: int, job_num: int = 0, **changes) -> list[ImageSpec]:
    return plan([Job(job_num, plan_config(**changes, seed=list(range(n))))])


# AUTOMATIC1111's reader (modules/infotext_utils.py: parse_generation_parameters), reduced to the
# prompt / negative prompt / key-value parts: what other SD tools do with a `parameters` chunk.
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def a1111_parse(text: str) -> dict[str, str]:
    res: dict[str, str] = {}
    prompt, negative, done_with_prompt = "", "", False
    *lines, lastline = text.strip().split("\n")
    if len(_RE_PARAM.findall(lastline)) < 3:
        lines.append(lastline)
        lastline = ""
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            done_with_prompt = True
            line = line[16:].strip()
        if done_with_prompt:
            negative += ("" if negative == "" else "\n") + line
        else:
            prompt += ("" if prompt == "" else "\n") + line
    res["Prompt"] = prompt
    res["Negative prompt"] = negative
    for key, value in _RE_PARAM.findall(lastline):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        res[key] = value
    return res


# --- parameters text ---------------------------------------------------------------------------------


def test_parameters_text_has_the_a1111_layout():
    spec = spec_of(negative_prompt="blurry, low quality", seed=1234, guidance=7.5, steps=20, width=64, height=128)
    text = parameters_text(spec, VERSIONS)
    lines = text.split("\n")
    assert lines[0] == "a photograph of an astronaut riding a horse"
    assert lines[1] == "Negative prompt: blurry, low quality"
    assert len(lines) == 3
    assert lines[2].startswith("Steps: 20, Sampler: Euler, CFG scale: 7.5, Seed: 1234, Size: 64x128, Model: tiny-sdxl")
    assert "Version: sweeper 0.1.0" in lines[2]


def test_parameters_text_without_negative_prompt_has_two_lines():
    text = parameters_text(spec_of(guidance=5.0), VERSIONS)
    prompt, params = text.split("\n")
    assert prompt == plan_config()["prompt"]
    assert "Negative prompt" not in text
    assert params.startswith("Steps: 4, Sampler: Euler, CFG scale: 5, Seed: 0, Size: 64x64, Model: tiny-sdxl")


def test_a1111_reads_back_prompt_negative_and_every_value():
    refiner = {"name": "tiny", "id": "tiny-sdxl-refiner", "revision": None, "split": 0.75, "mode": "ensemble"}
    scheduler = {"name": "dpmpp_2m_karras", "class_name": "DPMSolverMultistepScheduler", "label": "DPM++ 2M Karras",
                 "kwargs": {"use_karras_sigmas": True}}
    spec = spec_of(prompt="a castle, at dawn: golden hour", negative_prompt="ugly, blurry", seed=2**40, guidance=6.5,
                   steps=25, width=96, height=64, refiner=refiner, scheduler=scheduler)
    parsed = a1111_parse(parameters_text(spec, VERSIONS))
    assert parsed["Prompt"] == "a castle, at dawn: golden hour"
    assert parsed["Negative prompt"] == "ugly, blurry"
    assert parsed["Steps"] == "25"
    assert parsed["Sampler"] == "DPM++ 2M Karras"
    assert float(parsed["CFG scale"]) == 6.5
    assert parsed["Seed"] == str(2**40)
    assert parsed["Size"] == "96x64"
    assert parsed["Model"] == "tiny-sdxl"
    assert parsed["Refiner"] == "tiny-sdxl-refiner"
    assert float(parsed["Refiner switch at"]) == 0.75
    assert parsed["Version"] == "sweeper 0.1.0"


@pytest.mark.parametrize(
    "model_id, shown",
    [
        ("stabilityai/stable-diffusion-xl-base-1.0", "stabilityai/stable-diffusion-xl-base-1.0"),
        ("/models/my model, v2.safetensors", "my model, v2"),  # a comma and a space; a local path by its name only
        ("C:/models/sd:xl.safetensors", "sd:xl"),  # a colon, no space
        ("/models/sdxl,v2.safetensors", "sdxl,v2"),  # a comma, no space
    ],
)
def test_a1111_reads_back_a_model_name_with_separators(model_id, shown):
    spec = dataclasses.replace(spec_of(), model="local", model_id=model_id)  # planning would want the file
    parsed = a1111_parse(parameters_text(spec, VERSIONS))
    assert parsed["Model"] == shown
    assert parsed["Seed"] == "0" and parsed["Size"] == "64x64"


def test_multi_line_prompts_are_read_back():
    spec = spec_of(prompt="line one\nline two", negative_prompt="neg one\nneg two")
    parsed = a1111_parse(parameters_text(spec, VERSIONS))
    assert parsed["Prompt"] == "line one\nline two"
    assert parsed["Negative prompt"] == "neg one\nneg two"
    assert parsed["Steps"] == "4"


# --- PNG bytes ----------------------------------------------------------------------------------------


def gradient(width: int = 16, height: int = 8) -> Image.Image:
    image = Image.new("RGB", (width, height))
    image.putdata([(x * 13 % 256, y * 29 % 256, (x + y) % 256) for y in range(height) for x in range(width)])
    return image


def test_png_round_trip_carries_parameters_and_the_full_spec():
    spec = spec_of(negative_prompt="blurry", seed=77, original_size=[128, 128], crops_coords_top_left=[0, 8], batch_size=2)
    image = gradient()
    data = png_bytes(image, spec, VERSIONS)
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    opened = Image.open(io.BytesIO(data))
    assert opened.size == (16, 8)
    assert list(opened.convert("RGB").getdata()) == list(image.getdata())  # lossless
    assert opened.text["parameters"] == parameters_text(spec, VERSIONS)
    meta = json.loads(opened.text["sweeper"])
    assert meta["image_id"] == spec.image_id
    assert meta["versions"] == VERSIONS
    back = ImageSpec.from_json(json.dumps(meta["spec"]))
    assert back == spec
    assert back.image_id == spec.image_id
    assert back.original_size == (128, 128)


def test_non_ascii_prompt_survives_both_chunks():
    prompt = "東京の夜景, café crème — naïve 🚀"
    spec = spec_of(prompt=prompt, negative_prompt="ぼやけた")
    opened = Image.open(io.BytesIO(png_bytes(gradient(), spec, VERSIONS)))
    assert opened.text["parameters"].split("\n")[0] == prompt
    assert opened.text["parameters"].split("\n")[1] == "Negative prompt: ぼやけた"
    meta = json.loads(opened.text["sweeper"])
    assert meta["spec"]["prompt"] == prompt
    assert ImageSpec.from_json(json.dumps(meta["spec"], ensure_ascii=False)).image_id == spec.image_id


def test_image_path_is_named_by_the_content_id():
    spec = spec_of(seed=3)
    assert image_path(spec) == f"images/{spec.image_id}.png"
    assert image_path(spec_of(seed=3, batch_size=4)) == image_path(spec)
    assert image_path(spec_of(seed=4)) != image_path(spec)


# --- atomic writes ---------------------------------------------------------------------------------------


def test_write_atomic_creates_dirs_writes_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "x.png"
    write_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    assert sorted(os.listdir(target.parent)) == ["x.png"]
    write_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(os.listdir(target.parent)) == ["x.png"]


def test_write_atomic_fsyncs_and_renames_over_the_target(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")
    calls = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        calls.append("fsync")
        return real_fsync(fd)

    def replace(src, dst, *, src_dir_fd, dst_dir_fd):
        calls.append("replace")
        assert dst == target.name and src_dir_fd == dst_dir_fd  # in the target's own folder: the rename is atomic
        assert os.path.samestat(os.fstat(dst_dir_fd), os.stat(target.parent))
        assert target.read_bytes() == b"old"  # the target is untouched until the rename
        assert (target.parent / src).read_bytes() == b"new"
        return real_replace(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    write_atomic(target, b"new")
    assert calls == ["fsync", "replace"]
    assert target.read_bytes() == b"new"


def test_write_atomic_failure_keeps_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.bin"
    target.write_bytes(b"old")

    def broken_replace(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_background_writer_runs_every_task_and_reraises_a_failure(tmp_path):
    writer = BackgroundWriter(workers=2, max_pending=2)
    for i in range(10):
        writer.submit(lambda i=i: write_atomic(tmp_path / f"{i}.bin", bytes([i])))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(f"{i}.bin" for i in range(10))

    gate = threading.Event()

    def fail():
        gate.wait(5)
        raise RuntimeError("write failed")

    writer = BackgroundWriter(workers=1, max_pending=4)
    writer.submit(fail)
    gate.set()
    with pytest.raises(RuntimeError, match="write failed"):
        writer.close()


# --- manifest ------------------------------------------------------------------------------------------------

T0 = dt.datetime(2025, 1, 1, 12, 0, tzinfo=dt.timezone.utc)


def facts(minute: int = 0, batch_index: int = 0, **more) -> dict:
    out = dict(
        rank=0, world_size=1, device="cpu", batch_size=1, batch_index=batch_index, seconds=0.5,
        started_at=T0 + dt.timedelta(minutes=minute), finished_at=T0 + dt.timedelta(minutes=minute, seconds=30),
        host="testhost", sweeper="0.1.0", diffusers="0.42.1", torch="2.13.0",
    )
    out.update(more)
    return out


def ok_row(out_dir: Path, spec: ImageSpec, minute: int = 0, write_file: bool = True, **more) -> dict:
    path = image_path(spec)
    if write_file:
        write_atomic(out_dir / path, b"png")
    return manifest.row(spec, path, "ok", None, **facts(minute, **more))


def error_row(spec: ImageSpec, error: str, minute: int = 0) -> dict:
    return manifest.row(spec, image_path(spec), "error", error, **facts(minute))


def test_schema_has_every_column_of_the_contract():
    contract = CONTRACT_COLUMNS | {"prompt_file"}
    assert contract <= set(manifest.SCHEMA.names)


def test_row_holds_the_spec_columns_and_the_run_facts():
    spec = spec_of(job_num=3, original_size=[128, 96], negative_prompt="n", seed=9)
    row = manifest.row(spec, image_path(spec), "ok", None, **facts())
    assert row["image_id"] == spec.image_id
    assert row["path"] == image_path(spec)
    assert (row["status"], row["error"]) == ("ok", None)
    assert row["original_size"] == [128, 96]
    assert (row["model"], row["model_id"], row["scheduler"], row["seed"], row["job_num"]) == ("tiny", "tiny-sdxl", "euler", 9, 3)
    assert (row["refiner"], row["refiner_split"]) == ("none", None)
    assert row["device"] == "cpu" and row["host"] == "testhost"


def test_write_part_then_read_gives_the_rows(tmp_path):
    specs = specs_of(3, original_size=[128, 96])
    rows = [ok_row(tmp_path, s, batch_index=i) for i, s in enumerate(specs)]
    part = manifest.write_part(tmp_path, rows)
    assert part.parent == tmp_path / manifest.PARTS_DIR
    assert part.name.startswith("part-") and part.suffix == ".parquet"
    assert [p.name for p in part.parent.iterdir()] == [part.name]  # no temp file left
    table = manifest.read(tmp_path)
    assert table.schema.equals(manifest.SCHEMA)
    assert table.column("image_id").to_pylist() == [s.image_id for s in specs]
    assert table.column("seed").to_pylist() == [0, 1, 2]
    assert table.column("original_size").to_pylist() == [[128, 96]] * 3
    assert table.column("finished_at").to_pylist()[0] == T0 + dt.timedelta(seconds=30)
    assert manifest.read(tmp_path / "nothing-here").num_rows == 0


def test_best_row_ok_beats_a_later_error_and_the_latest_wins(tmp_path):
    a, b, c, d = specs_of(4)
    manifest.write_part(tmp_path, [error_row(a, "OOM", minute=0), ok_row(tmp_path, b, minute=0)])
    manifest.write_part(tmp_path, [ok_row(tmp_path, a, minute=5), error_row(b, "later failure", minute=9)])
    manifest.write_part(tmp_path, [error_row(c, "first error", minute=1), ok_row(tmp_path, d, minute=1, host="old")])
    manifest.write_part(tmp_path, [error_row(c, "second error", minute=2), ok_row(tmp_path, d, minute=3, host="new")])
    table = manifest.read(tmp_path).to_pylist()
    best = {r["image_id"]: r for r in table}
    assert len(table) == 4
    assert best[a.image_id]["status"] == "ok"  # a retry that worked
    assert best[b.image_id]["status"] == "ok"  # ok beats an error, even a later one
    assert (best[c.image_id]["status"], best[c.image_id]["error"]) == ("error", "second error")  # later wins
    assert best[d.image_id]["host"] == "new"  # later ok wins
    assert sorted(manifest.failed(tmp_path)) == [(c.image_id, "second error")]
    assert manifest.done_ids(tmp_path) == {a.image_id, b.image_id, d.image_id}


def test_best_row_is_the_latest_whatever_the_row_order(tmp_path):
    a, b = specs_of(2)
    # Later rows first, in one part and across parts: the order of rows must not matter.
    manifest.write_part(tmp_path, [error_row(a, "later", minute=9), error_row(a, "earlier", minute=1),
                                   ok_row(tmp_path, b, minute=9, host="later"), ok_row(tmp_path, b, minute=1, host="earlier")])
    best = {r["image_id"]: r for r in manifest.read(tmp_path).to_pylist()}
    assert best[a.image_id]["error"] == "later"
    assert best[b.image_id]["host"] == "later"
    manifest.merge(tmp_path)
    manifest.write_part(tmp_path, [error_row(a, "earliest", minute=0)])
    assert manifest.failed(tmp_path) == [(a.image_id, "later")]


def test_merge_writes_one_manifest_and_removes_the_parts(tmp_path):
    first, second = specs_of(2, job_num=1), specs_of(3, job_num=0, steps=2)
    manifest.write_part(tmp_path, [ok_row(tmp_path, s, minute=1, batch_index=i) for i, s in enumerate(first)])
    manifest.write_part(tmp_path, [ok_row(tmp_path, s, minute=2, batch_index=i) for i, s in enumerate(second)])
    merged = manifest.merge(tmp_path)
    path = tmp_path / manifest.MANIFEST
    assert path.is_file() and merged.equals(manifest.read(tmp_path))
    assert not (tmp_path / manifest.PARTS_DIR).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["images", "manifest.parquet"]  # no temp file
    frame = pd.read_parquet(path)
    assert len(frame) == 5
    assert frame["image_id"].is_unique
    # Sorted by job, then render order.
    assert frame["job_num"].tolist() == [0, 0, 0, 1, 1]
    assert frame["image_id"].tolist() == [s.image_id for s in second + first]
    # Other families' keys are no columns of an SDXL sweep's file (read() adds them as nulls).
    stored = [name for name in manifest.SCHEMA.names if name not in manifest.SPARSE_COLUMNS]
    assert pq.read_table(path).schema.equals(pa.schema([manifest.SCHEMA.field(name) for name in stored]))
    # Merging again with no new parts changes nothing.
    before = path.read_bytes()
    assert manifest.merge(tmp_path).equals(merged)
    assert path.read_bytes() == before


def test_merge_of_an_empty_dir_writes_nothing(tmp_path):
    assert manifest.merge(tmp_path).num_rows == 0
    assert list(tmp_path.iterdir()) == []


def test_read_combines_the_manifest_with_new_parts_and_merge_folds_them_in(tmp_path):
    a, b, c = specs_of(3)
    manifest.write_part(tmp_path, [ok_row(tmp_path, a), error_row(b, "boom")])
    manifest.merge(tmp_path)
    assert manifest.failed(tmp_path) == [(b.image_id, "boom")]
    # A re-run renders b again and a new image c; its parts sit beside the manifest.
    manifest.write_part(tmp_path, [ok_row(tmp_path, b, minute=5), ok_row(tmp_path, c, minute=5)])
    table = manifest.read(tmp_path)
    assert sorted(table.column("image_id").to_pylist()) == sorted([a.image_id, b.image_id, c.image_id])
    assert set(table.column("status").to_pylist()) == {"ok"}
    assert manifest.failed(tmp_path) == []
    assert manifest.done_ids(tmp_path) == {a.image_id, b.image_id, c.image_id}
    manifest.merge(tmp_path)
    assert not (tmp_path / manifest.PARTS_DIR).exists()
    frame = pd.read_parquet(tmp_path / manifest.MANIFEST)
    assert len(frame) == 3 and set(frame["status"]) == {"ok"}


def test_done_ids_need_an_ok_row_and_the_file(tmp_path):
    a, b, c = specs_of(3)
    manifest.write_part(tmp_path, [ok_row(tmp_path, a), ok_row(tmp_path, b, write_file=False), error_row(c, "x")])
    write_atomic(tmp_path / image_path(c), b"stale")  # a file without an ok row is not done
    assert manifest.done_ids(tmp_path) == {a.image_id}
    (tmp_path / image_path(a)).unlink()
    assert manifest.done_ids(tmp_path) == set()
    assert manifest.failed(tmp_path) == [(c.image_id, "x")]


def test_manifest_keeps_non_ascii_and_null_columns(tmp_path):
    spec = spec_of(prompt="東京の夜景 🚀", negative_prompt=None)
    manifest.write_part(tmp_path, [ok_row(tmp_path, spec)])
    manifest.merge(tmp_path)
    frame = pd.read_parquet(tmp_path / manifest.MANIFEST)
    assert frame.loc[0, "prompt"] == "東京の夜景 🚀"
    assert frame.loc[0, "negative_prompt"] == ""  # none given: the empty prompt ran (CFG), so joins on it match
    assert pq.read_table(tmp_path / manifest.MANIFEST).column("strength").to_pylist() == [None]  # txt2img: none ran
    assert frame.loc[0, "refiner"] == "none"
    assert frame.loc[0, "path"] == f"images/{spec.image_id}.png"
    assert (tmp_path / frame.loc[0, "path"]).is_file()  # paths are relative to the manifest
    assert store.IMAGES_DIR == "images"
