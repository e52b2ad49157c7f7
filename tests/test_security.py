"""Shared files are data: never code, never a way out of their folder, always bounded.

Each test builds the crafted input someone could pass around (a PNG, a shared
sweep dir, a wildcard folder, a template, another sweep, a CSV) and checks it
is refused or skipped in one line, with nothing run, read or written where it
should not be.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import plan_config
from PIL import Image

from sweeper import files, manifest, replay, report, run, store
from sweeper.errors import UnsafePath
from sweeper.errors import PlanError
from sweeper.plan import Job, plan
from sweeper.spec import ImageSpec
from sweeper.prompts import prompt_rows

VERSIONS = {"sweeper": "0.1.0", "diffusers": "0.42.1", "torch": "2.13.0"}


def a_spec(**config) -> ImageSpec:
    return plan([Job(0, plan_config(**config))])[0]


def crafted_png(path: Path, spec: ImageSpec, **changes) -> Path:
    """A sweeper PNG whose `sweeper` chunk says `changes` about its spec (as anyone can write one)."""
    row = manifest.row(spec, store.image_path(spec), "ok", None, batch_index=0)
    data = store.png_bytes(Image.new("RGB", (spec.width, spec.height)), spec, VERSIONS, row, store.call_record([spec], 1))
    path.write_bytes(data)
    with Image.open(path) as image:
        chunk = json.loads(image.info["sweeper"])
        parameters = image.info["parameters"]
    chunk["spec"].update(changes)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("parameters", parameters)
    info.add_itxt("sweeper", json.dumps(chunk))
    Image.new("RGB", (spec.width, spec.height)).save(path, pnginfo=info)
    return path


def small_sweep(folder: Path) -> Path:
    """A sweep dir of 4 solid-colour images with their manifest (test_report's fake sweep)."""
    from test_report import fake_sweep

    fake_sweep(folder, guidances=(3.0, 5.0), seeds=range(1), fail=False)
    return folder


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# 1. A PNG never chooses code to run, nor a download


def remote_code_folder(tmp_path: Path, marker: Path) -> Path:
    """A folder whose scheduler config names a Python file to import (transformers' auto_map)."""
    folder = tmp_path / "evil"
    (folder / "scheduler").mkdir(parents=True)
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    config = {"_class_name": "EvilScheduler", "auto_map": {"AutoModel": "evil.EvilScheduler"}}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(config))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionXLPipeline"}))
    return folder


@pytest.mark.parametrize(
    "changes, flags, message",
    [
        ({"scheduler_class": "AutoModel", "scheduler_kwargs": '{"trust_remote_code": true}'}, [], "not a diffusers scheduler class"),
        ({"scheduler_kwargs": '{"trust_remote_code": true}'}, [], "'trust_remote_code' is not a config value of EulerDiscreteScheduler"),
        ({"model_id": "EVIL"}, [], "made with a local model 'EVIL'; pass --model PATH"),
        ({"model_id": "EVIL", "scheduler_class": "AutoModel"}, ["--model", "EVIL"], "not a diffusers scheduler class"),
        ({"model_id": "someone/not-cached"}, [], "not in the local Hugging Face cache; replay downloads what a PNG names only with --download"),
        ({"dtype": "__class__"}, [], "invalid dtype='__class__'"),
        ({"device": "cuda; rm -rf /"}, [], "invalid device="),
        ({"width": 40960, "height": 40960}, [], "over max_size=4096"),
        ({"steps": 10**9}, [], "over max_steps=1000"),
        ({"guidance": float("inf")}, [], "invalid guidance"),
        ({"family": "os"}, [], "invalid model.family='os'"),
    ],
)
def test_a_crafted_png_is_refused_in_one_line_and_runs_nothing(tmp_path, capsys, changes, flags, message):
    marker = tmp_path / "ran.txt"
    folder = remote_code_folder(tmp_path, marker)
    changes = {key: str(folder) if value == "EVIL" else value for key, value in changes.items()}
    flags = [str(folder) if value == "EVIL" else value for value in flags]
    png = crafted_png(tmp_path / "x.png", a_spec(), **changes)
    assert replay.main([str(png), *flags]) == 2
    line = one_error_line(capsys)
    assert line.startswith("sweeper.replay: error:") and message.replace("EVIL", str(folder)) in line, line
    assert not marker.exists()


def test_a_png_naming_a_relative_dir_like_a_hub_id_is_a_local_model(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "org" / "model").mkdir(parents=True)
    png = crafted_png(tmp_path / "x.png", a_spec(), model_id="org/model")
    assert replay.main([str(png)]) == 2
    assert "made with a local model 'org/model'" in one_error_line(capsys)


def test_the_scheduler_check_also_guards_the_render_path():
    from sweeper import pipelines

    with pytest.raises(PlanError, match="not a diffusers scheduler class"):
        pipelines.scheduler_class("AutoModel", {})
    with pytest.raises(PlanError, match="not a diffusers scheduler class"):
        pipelines.scheduler_class("SchedulerMixin", {})


# 2. No write in a sweep dir follows a link


def test_planted_claims_and_merge_locks_are_never_written_through(tmp_path):
    from sweeper import writers

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    sweep = tmp_path / "sweep"
    (sweep / writers.CLAIMS_DIR).mkdir(parents=True)
    (spec,) = plan([Job(0, plan_config())])
    (sweep / writers.CLAIMS_DIR / spec.image_id).symlink_to(victim)  # a claim that is a link
    (sweep / writers.MERGE_LOCK).symlink_to(victim)
    assert writers.Claims(sweep).take([spec]) == [spec]  # the planted link is replaced, never written through
    assert not (sweep / writers.CLAIMS_DIR / spec.image_id).is_symlink()
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        run.prepare([Job(0, plan_config())], sweep)
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("planted", ["images", ".manifest-parts", "multirun.yaml", "manifest.parquet", ".hydra/config.yaml", "0/.hydra"])
def test_links_planted_where_sweeper_or_hydra_write_are_refused_before_anything(tmp_path, planted):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "config.yaml").write_text("precious")
    sweep = tmp_path / "sweep"
    (sweep / planted).parent.mkdir(parents=True, exist_ok=True)
    (sweep / planted).symlink_to(victim / "config.yaml" if "." in Path(planted).name[1:] else victim)
    with pytest.raises(UnsafePath, match=f"{planted} is a symbolic link"):
        run.prepare([Job(0, plan_config())], sweep)
    assert [p.name for p in victim.iterdir()] == ["config.yaml"] and (victim / "config.yaml").read_text() == "precious"


def test_the_cli_refuses_a_planted_multirun_yaml_link_in_one_line(tmp_path, warm_cli):
    victim = tmp_path / "victim.yaml"
    victim.write_text("precious")
    sweep = tmp_path / "outputs" / "sweeps" / "shared"
    sweep.mkdir(parents=True)
    (sweep / "multirun.yaml").symlink_to(victim)
    result = warm_cli.run("-m", "model=tiny", "name=shared", "seed=0,1", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "multirun.yaml is a symbolic link" in lines[0], result.stderr
    assert victim.read_text() == "precious"


def test_report_and_thumbnail_writes_replace_planted_links_instead_of_following_them(tmp_path):
    sweep = small_sweep(tmp_path / "sweep")
    victim = tmp_path / "victim.html"
    victim.write_text("precious")
    (sweep / report.REPORT).symlink_to(victim)
    for pid in range(os.getpid() - 2, os.getpid() + 3):  # the names the old report used for its temp file
        (sweep / f".{report.REPORT}.{pid}.tmp").symlink_to(victim)
    thumbs = sweep / store.THUMBS_DIR
    thumbs.mkdir()
    ids = manifest.read(sweep).column("image_id").to_pylist()
    for image_id in ids:  # a thumbnail planted as a link, newer than its image: it looks cached
        (thumbs / f"{image_id}{store.THUMB_EXT}").symlink_to(victim)
    report.write_report(sweep)
    assert victim.read_bytes() == b"precious"
    assert not (sweep / report.REPORT).is_symlink() and "<html" in (sweep / report.REPORT).read_text()
    for image_id in ids:  # made again, in place of the link
        thumb = thumbs / f"{image_id}{store.THUMB_EXT}"
        assert not thumb.is_symlink() and Image.open(thumb).format == "WEBP"
    # A thumbnail folder planted as a link out of the sweep dir: nothing is written through it.
    other, outside = small_sweep(tmp_path / "other"), tmp_path / "outside"
    outside.mkdir()
    (other / store.THUMBS_DIR).symlink_to(outside, target_is_directory=True)
    report.write_report(other)
    assert not list(outside.iterdir()) and "<html" in (other / report.REPORT).read_text()


# 3. Wildcard folders stay inside themselves, and are bounded


def test_a_wildcard_linking_outside_its_folder_is_refused(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password-123\n")
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "style.txt").symlink_to(secret)
    with pytest.raises(PlanError, match="style.txt leads outside the folder"):
        prompt_rows({"prompt": "a __style__ car", "wildcards": str(folder)})


def test_a_wildcard_link_loop_is_refused_at_once(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    (folder / "colors.txt").write_text("red\n")
    (folder / "a").symlink_to(".")
    tic = time.perf_counter()
    with pytest.raises(PlanError, match="a leads back to a folder already read"):
        prompt_rows({"prompt": "a __colors__ car", "wildcards": str(folder)})
    assert time.perf_counter() - tic < 5  # a hang guard: it used to walk the loop for ever


def test_a_yaml_alias_bomb_is_refused_at_once(tmp_path):
    folder = tmp_path / "wildcards"
    folder.mkdir()
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")]
    (folder / "bomb.yaml").write_text("\n".join(lines) + "\n")
    assert (folder / "bomb.yaml").stat().st_size < 400
    tic = time.perf_counter()
    with pytest.raises(PlanError, match="bomb.yaml: the YAML expands to more than"):
        prompt_rows({"prompt": "a __i__ car", "wildcards": str(folder)})
    assert time.perf_counter() - tic < 5


def test_structured_wildcards_inside_the_folder_still_work(tmp_path):
    folder = tmp_path / "wildcards"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "pantry.yaml").write_text("animals:\n  cats: [tabby, siamese]\n")
    (folder / "colors.json").write_text('["red", "blue"]')
    (folder / "colors_alias.txt").symlink_to(folder / "colors.json")  # a link inside the folder is fine (not .txt content though)
    rows, _ = prompt_rows({"prompt": "a __colors__ __sub/animals/cats__", "wildcards": str(folder)})
    assert [row.prompt for row in rows] == ["a red tabby", "a red siamese", "a blue tabby", "a blue siamese"]


# 4. Templates that explode


def test_a_template_of_doubling_variables_is_refused_within_seconds():
    names = "abcdefghijk"
    template = "${a={x|y}}" + "".join(f"${{{names[i + 1]}=${{{names[i]}}}${{{names[i]}}}}}" for i in range(10)) + "${k}"
    assert len(template) < 200
    tic = time.perf_counter()
    with pytest.raises(PlanError, match="the template takes too long to expand"):
        prompt_rows({"prompt": template, "dry_run": True})
    assert time.perf_counter() - tic < 5  # the budget is ~1 s; it used to run for minutes and take gigabytes
    assert not [t for t in threading.enumerate() if t.name == "sweeper-template-budget"]  # the watchdog is gone


def test_a_template_that_expands_in_time_is_not_disturbed_by_the_budget():
    rows, _ = prompt_rows({"prompt": "{a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j} {a|b|c|d|e|f|g|h|i|j}"}, limit=1000)
    assert len(rows) == 1000


# 5. A received sweep is data too


def received_sweep(tmp_path: Path, private: Path) -> Path:
    """Another person's sweep: one good image, one row escaping by its id, one by its path,
    a planted PNG with a malformed row, and a small PNG declaring 15000x15000 pixels."""
    sweep = small_sweep(tmp_path / "theirs")
    table = pq.read_table(sweep / manifest.MANIFEST)
    rows = table.to_pylist()
    rows.append({**rows[0], "image_id": "../../../../" + str(tmp_path / "escaped")[1:], "path": "images/x.png"})
    rows.append({**rows[1], "image_id": "0123456789abcdef0123", "path": str(private)})
    pq.write_table(pa.Table.from_pylist(rows, schema=manifest.SCHEMA), sweep / manifest.MANIFEST)
    spec = a_spec(seed=99)
    planted = sweep / "images" / f"{spec.image_id}.png"
    row = {**manifest.row(spec, store.image_path(spec), "ok", None), "seed": "not a number", "started_at": 7}
    planted.write_bytes(store.png_bytes(Image.new("RGB", (8, 8)), spec, VERSIONS, row))
    Image.new("1", (15000, 15000)).save(sweep / "images" / "fedcba9876543210fedc.png")
    bomb = a_spec(seed=100)
    Image.new("1", (15000, 15000)).save(sweep / "images" / f"{bomb.image_id}.png")
    bomb_row = manifest.row(bomb, store.image_path(bomb), "ok", None)
    manifest.write_part(sweep, [bomb_row])
    return sweep


def test_a_received_sweep_cannot_make_the_report_read_or_write_outside_it(tmp_path, capsys):
    private = tmp_path / "private.png"
    Image.new("RGB", (32, 32), (255, 0, 0)).save(private)
    theirs = received_sweep(tmp_path, private)
    ours = small_sweep(tmp_path / "ours")
    before = {p for p in tmp_path.rglob("*")}
    report.main([str(ours), "--compare", str(theirs)])
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "skipping 2 row(s)" in err and "not an image of this sweep dir" in err
    assert "declares more than 67108864 pixels" in err and "no valid manifest row" in err
    new = {p for p in tmp_path.rglob("*")} - before
    assert all(ours in p.parents or theirs in p.parents for p in new), new
    assert not (tmp_path / "escaped.webp").exists()
    thumbs = [p.stem for p in (theirs / report.THUMBS_DIR).iterdir()]
    assert "0123456789abcdef0123" not in thumbs and len(thumbs) == 4  # its own four images only


def test_a_planted_png_with_a_malformed_row_does_not_stop_a_resume(tmp_path, capsys):
    private = tmp_path / "private.png"
    Image.new("RGB", (8, 8)).save(private)
    theirs = received_sweep(tmp_path, private)
    done = manifest.done_ids(theirs)
    assert len(done) == 5  # its four images and the (valid) bomb's row: nothing planted
    assert "Traceback" not in capsys.readouterr().err


def test_images_that_are_links_are_not_done_and_not_read(tmp_path):
    sweep = small_sweep(tmp_path / "sweep")
    table = pq.read_table(sweep / manifest.MANIFEST)
    first = table.column("path")[0].as_py()
    private = tmp_path / "private.png"
    Image.new("RGB", (32, 32)).save(private)
    (sweep / first).unlink()
    (sweep / first).symlink_to(private)
    assert len(manifest.done_ids(sweep)) == table.num_rows - 1


# 6. CSV cells stay in the CSV's folder, rows are bounded, PNGs name no local path


@pytest.mark.parametrize("cell", ["/etc/hosts.png", "../outside.png", "sub/../../outside.png", "link.png"])
def test_csv_image_paths_stay_inside_its_folder_unless_allowed(tmp_path, cell):
    folder = tmp_path / "shared"
    folder.mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "outside.png")
    (folder / "link.png").symlink_to(tmp_path / "outside.png")
    csv = folder / "prompts.csv"
    csv.write_text(f"prompt,init_image\na cat,{cell}\n")
    config = plan_config(prompt_file=str(csv), mode="img2img", strength=0.5)
    with pytest.raises(PlanError, match="leads outside the CSV's folder"):
        plan([Job(0, config)])
    if cell in ("../outside.png", "link.png"):
        specs = plan([Job(0, {**config, "prompt_file_paths": "anywhere"})])
        assert specs[0].init_image == str(tmp_path / ("outside.png" if cell.startswith("..") else "shared/link.png"))


def test_csv_paths_resolve_against_the_csv_folder(tmp_path, monkeypatch):
    folder = tmp_path / "shared"
    (folder / "inits").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(folder / "inits" / "a.png")
    (folder / "prompts.csv").write_text("prompt,init_image\na cat,inits/a.png\na dog,inits\n")
    monkeypatch.chdir(tmp_path)  # not the CSV's folder
    specs = plan([Job(0, plan_config(prompt_file="shared/prompts.csv", mode="img2img", strength=0.5))])
    assert [s.init_image for s in specs] == [str(folder / "inits" / "a.png")] * 2


@pytest.mark.parametrize("column, value, message", [("width", 8192, "over max_size=4096"), ("steps", 5000, "over max_steps=1000")])
def test_csv_rows_are_bounded_in_size_and_steps(tmp_path, column, value, message):
    csv = tmp_path / "p.csv"
    csv.write_text(f"prompt,{column}\na cat,{value}\n")
    with pytest.raises(PlanError, match=message):
        plan([Job(0, plan_config(prompt_file=str(csv)))])
    assert plan([Job(0, plan_config(prompt_file=str(csv), max_size=8192, max_steps=5000))])


def test_a_png_carries_no_absolute_path_host_name_or_command_line(tmp_path):
    init = tmp_path / "photos" / "init.png"
    init.parent.mkdir()
    Image.new("RGB", (64, 64)).save(init)
    spec = plan([Job(0, plan_config(mode="img2img", init_image=str(init), strength=0.5), (f"init_image={init}",))])[0]
    row = manifest.row(spec, store.image_path(spec), "ok", None, host=socket.gethostname(), batch_index=0)
    data = store.png_bytes(Image.new("RGB", (64, 64)), spec, VERSIONS, row, store.call_record([spec], 1))
    assert str(tmp_path).encode() not in data and socket.gethostname().encode() not in data
    assert b'"init_image": "init.png"' in data


# 7. Regular files only, of bounded size


@pytest.mark.parametrize("kind", ["dev-zero", "fifo", "huge"])
def test_replay_reads_init_images_only_from_bounded_regular_files(tmp_path, capsys, monkeypatch, kind):
    init = tmp_path / "init.png"
    Image.new("RGB", (64, 64)).save(init)
    png = crafted_png(tmp_path / "x.png", a_spec(mode="img2img", init_image=str(init), strength=0.5))
    if kind == "dev-zero":
        given = Path("/dev/zero")
    elif kind == "fifo":
        given = tmp_path / "fifo.png"
        os.mkfifo(given)
    else:
        given = tmp_path / "huge.png"
        with open(given, "wb") as handle:
            handle.truncate(files.MAX_IMAGE_BYTES + 1)
    outcome: list[int] = []
    worker = threading.Thread(target=lambda: outcome.append(replay.main([str(png), "--init-image", str(given)])), daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert outcome == [2], "replay hung or read on"
    assert "error:" in one_error_line(capsys)
