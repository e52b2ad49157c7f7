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

from sweeper.storing import files, manifest, store
from sweeper import replay, report
from sweeper.launching import run
from sweeper.errors import UnsafePath
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan
from sweeper.planning.spec import ImageSpec
from sweeper.planning.prompts import prompt_rows

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
    from sweeper.rendering import pipelines

    with pytest.raises(PlanError, match="not a diffusers scheduler class"):
        pipelines.scheduler_class("AutoModel", {})
    with pytest.raises(PlanError, match="not a diffusers scheduler class"):
        pipelines.scheduler_class("SchedulerMixin", {})


# 2. No write in a sweep dir follows a link


def test_planted_claims_and_merge_locks_are_never_written_through(tmp_path):
    from sweeper.storing import writers

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


# 2b. A folder swapped for a link right after its check redirects nothing
#
# Another user of a shared sweep dir can swap a folder for a link at any moment.
# `swap_for_link` does it at the worst one, deterministically: just before the
# act (open, rename, unlink, replace) that follows every check.


def swap(folder: Path, target: Path, rename=os.rename) -> None:
    """Move `folder` aside (to .NAME-moved) and put a link to `target` in its place."""
    rename(folder, folder.with_name(f".{folder.name}-moved"))
    folder.symlink_to(target)


def swap_for_link(monkeypatch, call: str, trigger: str, folder: Path, target: Path) -> list:
    """Just before the first `os.<call>` on a path naming `trigger`, swap `folder` for a link to `target`."""
    real, real_rename = getattr(os, call), os.rename
    swapped = []

    def hooked(*args, **kwargs):
        if not swapped and trigger in str(args[0]):
            swapped.append(folder)
            swap(folder, target, real_rename)
        return real(*args, **kwargs)

    monkeypatch.setattr(os, call, hooked)
    return swapped


def a_victim(tmp_path: Path, *names: str) -> tuple[Path, dict]:
    """A folder of someone else's files, and what it holds."""
    victim = tmp_path / "victim"
    victim.mkdir(parents=True)
    for name in names:
        (victim / name).write_bytes(b"precious")
    return victim, holding(victim)


def holding(folder: Path) -> dict:
    """Name -> (bytes, inode, ctime): a file moved away and back, or removed and made again, counts as touched."""
    return {path.name: (path.read_bytes(), path.lstat().st_ino, path.lstat().st_ctime_ns) for path in folder.iterdir()}


@pytest.mark.parametrize("act", ["forget_stored", "take_over", "create", "release"])
def test_claims_are_made_and_removed_in_their_folder_even_when_it_is_swapped_for_a_link(tmp_path, monkeypatch, act):
    from sweeper.storing import writers

    (spec,) = plan([Job(0, plan_config())])
    victim, before = a_victim(tmp_path, spec.image_id)
    sweep = tmp_path / "sweep"
    claims = sweep / writers.CLAIMS_DIR
    claims.mkdir(parents=True)
    if act == "forget_stored":  # a claim left on a stored image goes
        (sweep / "images").mkdir()
        (sweep / store.image_path(spec)).write_bytes(b"png")
        (claims / spec.image_id).write_text("a writer killed after storing")
        call, trigger, run_it = "unlink", spec.image_id, lambda: writers.forget_stored(sweep)
    elif act == "take_over":  # a dead writer's claim is moved aside, then replaced
        (claims / spec.image_id).write_text(f"{socket.gethostname()} 999999999")
        call, trigger, run_it = "rename", spec.image_id, lambda: writers.Claims(sweep).take([spec])
    elif act == "create":  # a new claim is written aside, then linked into place
        call, trigger, run_it = "open", f".{spec.image_id}.", lambda: writers.Claims(sweep).take([spec])
    else:
        (claims / spec.image_id).write_text(f"{socket.gethostname()} {os.getpid()}")
        call, trigger, run_it = "unlink", spec.image_id, lambda: writers.Claims(sweep).release([spec])
    swapped = swap_for_link(monkeypatch, call, trigger, claims, victim)
    run_it()
    assert swapped and holding(victim) == before


def test_stale_temps_are_removed_in_their_folder_even_when_it_is_swapped_for_a_link(tmp_path, monkeypatch):
    from sweeper.storing import writers

    victim, _ = a_victim(tmp_path, ".old.tmp")
    old = time.time() - writers.TEMP_STALE_SECONDS - 60
    os.utime(victim / ".old.tmp", (old, old))
    before = holding(victim)
    images = tmp_path / "sweep" / "images"
    images.mkdir(parents=True)
    (images / ".old.tmp").write_bytes(b"left by a killed write")
    os.utime(images / ".old.tmp", (old, old))
    swapped = swap_for_link(monkeypatch, "unlink", ".old.tmp", images, victim)
    writers.remove_stale_temps(tmp_path / "sweep")
    assert swapped and holding(victim) == before
    assert not (tmp_path / "sweep" / ".images-moved" / ".old.tmp").exists()  # removed where it was found


def test_a_write_goes_into_the_folder_checked_even_when_it_is_swapped_for_a_link(tmp_path, monkeypatch):
    (spec,) = plan([Job(0, plan_config())])
    sweep = tmp_path / "sweep"
    victim, before = a_victim(tmp_path)
    swapped = swap_for_link(monkeypatch, "open", "part-", sweep / manifest.PARTS_DIR, victim)  # as the temp file is made
    manifest.write_part(sweep, [manifest.row(spec, store.image_path(spec), "error", "x")])
    assert swapped and holding(victim) == before
    assert [path.name[:5] for path in (sweep / f".{manifest.PARTS_DIR}-moved").iterdir()] == ["part-"]


def test_the_merge_removes_parts_only_in_their_folder_even_when_it_is_swapped_for_a_link(tmp_path, monkeypatch):
    (spec,) = plan([Job(0, plan_config())])
    sweep = tmp_path / "sweep"
    parts = sweep / manifest.PARTS_DIR
    part = manifest.write_part(sweep, [manifest.row(spec, store.image_path(spec), "error", "x")])
    (parts / "part-damaged.parquet").write_bytes(b"not parquet")
    victim, before = a_victim(tmp_path, part.name, "part-damaged.parquet")
    read = manifest.read

    def read_then_swap(*args, **kwargs):
        table = read(*args, **kwargs)
        swap(parts, victim)
        return table

    monkeypatch.setattr(manifest, "read", read_then_swap)  # parts read, then unlinked or moved to damaged/
    with pytest.raises(UnsafePath, match=f"{manifest.PARTS_DIR} is a symbolic link"):
        manifest.merge(sweep)
    assert holding(victim) == before


# A single run, case after case in one interpreter: the run dir is checked in on_run_start, then a
# link appears where Hydra writes its job files; the job only logs a line.
SWAPPED_RUNS = """
import contextlib, io, json, logging, sys
from pathlib import Path
from sweeper import app
from sweeper.launching import run

victim, checked, results = Path(sys.argv[1]), run.check_sweep_dir, []

def job(cfg):
    logging.getLogger("sweeper").info("a line for the job log")

for run_dir, planted in json.loads(sys.argv[2]):
    def check_then_swap(out_dir, planted=Path(run_dir) / planted):
        checked(out_dir)
        planted.parent.mkdir(parents=True)
        planted.symlink_to(victim / (planted.name if planted.suffix else ""))

    run.check_sweep_dir, app.render_job = check_then_swap, job
    sys.argv, err, code = ["sweeper", "model=tiny", "hydra.run.dir=" + run_dir], io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            app.main()
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
print(json.dumps(results))
"""


def test_hydra_job_files_are_not_written_through_links_swapped_in_after_the_check(tmp_path, tiny_models):
    import subprocess
    import sys

    victim, before = a_victim(tmp_path, "config.yaml", "sweeper.log")
    cases = [(str(tmp_path / f"run{n}"), planted) for n, planted in enumerate(["sweeper.log", ".hydra", ".hydra/config.yaml"])]
    result = subprocess.run([sys.executable, "-c", SWAPPED_RUNS, str(victim), json.dumps(cases)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert holding(victim) == before, result.stderr
    assert result.returncode == 0, result.stderr
    for (run_dir, planted), (code, stderr) in zip(cases, json.loads(result.stdout.strip().splitlines()[-1])):
        if planted == ".hydra/config.yaml":  # a link at the file is replaced, as by every write_atomic
            assert code == 0, stderr
            assert not (Path(run_dir) / planted).is_symlink() and "model:" in (Path(run_dir) / planted).read_text()
        else:
            last = stderr.strip().splitlines()[-1]  # after the plan's announcement
            assert code == 2 and last.startswith("sweeper: error: ") and f"{planted} is a symbolic link" in last, stderr


def test_a_wildcard_folder_swapped_for_a_link_after_the_walk_is_not_read(tmp_path, monkeypatch):
    from sweeper.planning import templates

    victim, _ = a_victim(tmp_path)
    (victim / "colors.txt").write_text("password-123\n")
    folder = tmp_path / "wildcards"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "colors.txt").write_text("red\n")
    walked = templates.wildcard_files

    def walk_then_swap(root, fail):
        found = walked(root, fail)
        (folder / "sub").rename(folder / ".sub")  # dot-named: not a wildcard folder
        (folder / "sub").symlink_to(victim)
        return found

    monkeypatch.setattr(templates, "wildcard_files", walk_then_swap)
    with pytest.raises(PlanError, match="sub/colors.txt changed into a link while it was read"):
        prompt_rows({"prompt": "a __sub/colors__ car", "wildcards": str(folder)})


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


# 8. Bombs and hangs: what others made is read with bounds (bounds.py)


def parquet_bomb(path: Path, rows: list[dict], value_bytes: int = 50_000, copies: int = 200) -> Path:
    """Manifest rows whose prompt is one long value repeated `copies` times, dictionary-encoded:
    small on disk, `value_bytes * copies` once read (the real one: 11 KB -> 10 GB)."""
    big = [{**rows[0], "prompt": "x" * value_bytes} for _ in range(copies)]
    pq.write_table(pa.Table.from_pylist(big, schema=manifest.SCHEMA), path, compression="zstd", dictionary_pagesize_limit=10**8)
    assert path.stat().st_size < 50_000
    return path


@pytest.fixture
def small_bounds(monkeypatch):
    """Bounds scaled down 1000 times, so that a bomb of 10 MB trips them as 10 GB trips the real ones."""
    from sweeper.storing import bounds

    monkeypatch.setattr(bounds, "MAX_TABLE_BYTES", 2 * 2**20)


def test_a_planted_parquet_bomb_part_is_skipped_in_one_line_and_moved_aside(tmp_path, capsys, small_bounds):
    sweep = small_sweep(tmp_path / "sweep")
    rows = pq.read_table(sweep / manifest.MANIFEST).to_pylist()
    (sweep / manifest.PARTS_DIR).mkdir()
    bomb = parquet_bomb(sweep / manifest.PARTS_DIR / "part-bomb.parquet", rows)
    assert len(manifest.done_ids(sweep)) == 4  # a re-run: its own four images, nothing of the bomb
    err = capsys.readouterr().err
    assert "part-bomb.parquet: 10" in err and "bytes once decoded (repeated values), over the limit of 2097152" in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert manifest.merge(sweep).num_rows == 4
    assert not bomb.exists() and (bomb.parent / "damaged" / bomb.name).exists()  # kept for a look, out of the way


def test_report_compare_refuses_a_parquet_bomb_manifest_in_one_line(tmp_path, capsys, small_bounds):
    ours = small_sweep(tmp_path / "ours")
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    parquet_bomb(theirs / manifest.MANIFEST, pq.read_table(ours / manifest.MANIFEST).to_pylist())
    with pytest.raises(SystemExit) as exit:
        report.main([str(ours), "--compare", str(theirs)])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert "once decoded (repeated values)" in err and f"no images in {theirs}" in err and "Traceback" not in err, err


def test_the_bounds_hold_rows_columns_and_bytes_on_disk(tmp_path, monkeypatch):
    from sweeper.storing import bounds

    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({f"c{i}": list(range(10)) for i in range(5)}), path)
    assert bounds.read_table(path).num_rows == 10
    for name, value, message in [("MAX_TABLE_ROWS", 9, "10 rows, over the limit of 9"), ("MAX_TABLE_COLUMNS", 4, "5 columns, over the limit of 4"),
                                 ("MAX_TABLE_FILE_BYTES", 100, "over the limit of 100 for a Parquet table"), ("MAX_TABLE_BYTES", 100, "once uncompressed")]:
        with monkeypatch.context() as patch:
            patch.setattr(bounds, name, value)
            with pytest.raises(ValueError, match=message):
                bounds.read_table(path)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero", "bomb"])
def test_an_array_task_refuses_a_plan_swapped_after_submission_at_once(tmp_path, kind, small_bounds):
    from sweeper.launching import slurm

    sweep = tmp_path / "sweep"
    sweep.mkdir()
    plan_path = sweep / run.PLAN_FILE
    if kind == "fifo":
        os.mkfifo(plan_path)
    elif kind == "dev-zero":
        plan_path.symlink_to("/dev/zero")
    else:
        spec = a_spec()
        rows = [dict(spec.to_dict(), image_id=spec.image_id, prompt="x" * 50_000)] * 200
        pq.write_table(pa.Table.from_pylist(rows), plan_path, compression="zstd", dictionary_pagesize_limit=10**8)
    digest = slurm.plan_digest(sweep) if kind == "bomb" else "0" * 64  # a bomb planted before: its digest is what was submitted
    outcome: list[str] = []

    def read() -> None:
        try:
            slurm.read_plan(sweep, digest)
        except RuntimeError as error:
            outcome.append(str(error))

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(timeout=20)
    assert outcome, "the array task hung or read on"
    expected = {"fifo": "not a regular file", "dev-zero": "a symbolic link", "bomb": "once decoded"}[kind]
    assert outcome[0].startswith("cannot read the plan:") and expected in outcome[0], outcome


def test_a_planted_multirun_yaml_of_nested_aliases_or_not_utf8_is_skipped_in_one_line(tmp_path, capsys):
    sweep = small_sweep(tmp_path / "sweep")
    lines = ['a: &a ["xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"]']
    lines += [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcde", "bcdef")]  # 9**5 copies: ~5 MB printed
    lines += ["hydra: {overrides: {task: [*f]}}"]
    (sweep / "multirun.yaml").write_text("\n".join(lines) + "\n")
    assert report.sweep_command(sweep) is None
    assert "multirun.yaml: it uses YAML aliases" in one_error_line(capsys)
    (sweep / "multirun.yaml").write_bytes(b"hydra:\n  overrides:\n    task:\n    - prompt=\xff\xfe\n")
    assert report.sweep_command(sweep) is None
    assert "multirun.yaml: 'utf-8' codec can't decode" in one_error_line(capsys)
    (sweep / "multirun.yaml").write_text("hydra:\n  overrides:\n    task:\n    - model=tiny\n    - seed=0,1\n")
    assert report.sweep_command(sweep) == "python -m sweeper -m model=tiny seed=0,1"


def in_thread(call, timeout: float = 20) -> list:
    """`call()`'s result in a list, or an empty list if it hung past `timeout` seconds."""
    outcome: list = []
    worker = threading.Thread(target=lambda: outcome.append(call()), daemon=True)
    worker.start()
    worker.join(timeout=timeout)
    return outcome


def test_fifos_planted_as_a_claim_or_the_merge_lock_are_taken_over_without_a_wait(tmp_path):
    from sweeper.storing import writers

    (spec,) = plan([Job(0, plan_config())])
    (tmp_path / writers.CLAIMS_DIR).mkdir()
    os.mkfifo(tmp_path / writers.CLAIMS_DIR / spec.image_id)
    os.mkfifo(tmp_path / writers.MERGE_LOCK)
    assert in_thread(lambda: writers.Claims(tmp_path).take([spec])) == [[spec]], "a writer hung on a FIFO claim"

    def merge() -> bool:
        with writers.merging(tmp_path, wait_seconds=5):
            return True

    assert in_thread(merge) == [True], "a merge hung on a FIFO lock"
    assert (tmp_path / writers.CLAIMS_DIR / spec.image_id).is_file()


@pytest.mark.parametrize("holder", ["this-host", "another-host"])
def test_claims_and_merge_locks_dated_in_the_future_do_not_hold_for_ever(tmp_path, holder):
    from sweeper.storing import writers

    (spec,) = plan([Job(0, plan_config())])
    text = f"{socket.gethostname()} 1" if holder == "this-host" else "another-host 12"  # pid 1 lives: only the date can free it
    next_year = time.time() + 365 * 86400
    (tmp_path / writers.CLAIMS_DIR).mkdir()
    for path in (tmp_path / writers.CLAIMS_DIR / spec.image_id, tmp_path / writers.MERGE_LOCK):
        path.write_text(text)
        os.utime(path, (next_year, next_year))
    assert writers.Claims(tmp_path).take([spec]) == [spec]
    tic = time.perf_counter()
    with writers.merging(tmp_path, wait_seconds=5):
        pass
    assert time.perf_counter() - tic < 2  # it used to wait out wait_seconds (10 minutes) and fail


def test_a_young_claim_of_another_host_is_left_to_it_and_said(tmp_path, capsys, tiny_models):
    from sweeper.storing import writers

    jobs = [Job(0, plan_config(seed=[0, 1]))]
    prepared = run.prepare(jobs, tmp_path)
    (tmp_path / writers.CLAIMS_DIR).mkdir()
    for spec in prepared.todo:
        (tmp_path / writers.CLAIMS_DIR / spec.image_id).write_text("another-host 12")
    summary = run.execute(prepared, tmp_path)
    assert summary.rendered == 0  # a live writer elsewhere may be rendering them: not twice
    err = capsys.readouterr().err
    assert "2 image(s) were left to another writer that claims them (another-host 12)" in err and "30 min old" in err, err
    for spec in prepared.todo:
        os.utime(tmp_path / writers.CLAIMS_DIR / spec.image_id, (time.time() - writers.CLAIM_STALE_SECONDS - 1,) * 2)
    assert run.execute(prepared, tmp_path).rendered == 2  # its lease is over: the same command renders them


def png_with_chunk(path: Path, chunk_text: str) -> Path:
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("sweeper", chunk_text)
    Image.new("RGB", (8, 8)).save(path, pnginfo=info)
    return path


def test_a_png_whose_json_nests_100000_deep_is_refused_in_one_line(tmp_path, capsys):
    png = png_with_chunk(tmp_path / "x.png", "[" * 100_000)
    assert replay.main([str(png)]) == 2
    assert "not a PNG written by sweeper (ValueError: JSON nested more than 32 deep)" in one_error_line(capsys)
    kwargs_bomb = crafted_png(tmp_path / "y.png", a_spec(), scheduler_kwargs="[" * 100_000)  # JSON inside the JSON
    assert replay.main([str(kwargs_bomb)]) == 2
    assert "must be a JSON object of scheduler config values" in one_error_line(capsys)
    from sweeper.storing.bounds import loads_json

    assert loads_json('{"prompt": "' + "[" * 100 + '\\"{"}') == {"prompt": "[" * 100 + "\"{"}  # brackets in text do not nest


def test_a_planted_png_whose_json_nests_100000_deep_stops_no_rerun_or_report(tmp_path, capsys):
    sweep = small_sweep(tmp_path / "sweep")
    png_with_chunk(sweep / "images" / f"{a_spec(seed=5).image_id}.png", "[" * 100_000)
    assert len(manifest.done_ids(sweep)) == 4
    report.write_report(sweep)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "no valid manifest row in it (ValueError: JSON nested more than 32 deep)" in err, err


def recorded_call_png(path: Path, spec: ImageSpec, images: int, threads: int = 1) -> Path:
    """A PNG of a recorded pipeline call of `images` copies of `spec` (seeds 0..images-1)."""
    from dataclasses import replace

    specs = [replace(spec, seed=seed) for seed in range(images)]
    row = manifest.row(spec, store.image_path(spec), "ok", None, batch_index=0)
    path.write_bytes(store.png_bytes(Image.new("RGB", (8, 8)), specs[0], VERSIONS, row, store.call_record(specs, threads)))
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: crafted_png(p, a_spec(), scheduler_kwargs='{"num_train_timesteps": 1000000000}'), "num_train_timesteps=1000000000 is over 10000 in size"),
        (lambda p: crafted_png(p, a_spec(scheduler="dpmpp_2m"), scheduler_kwargs='{"solver_order": 100000}'), "solver_order=100000 is over 4 in size"),
        (lambda p: crafted_png(p, a_spec(), scheduler_kwargs='{"timestep_spacing": "' + "x" * 1000 + '"}'), "is over 64 characters"),
        (lambda p: crafted_png(p, a_spec(), scheduler_kwargs='{"trained_betas": [' + ", ".join(["0.5"] * 20_000) + "]}"), "a list of at most 10000 numbers"),
        (lambda p: recorded_call_png(p, a_spec(width=4096, height=4096), 64), "renders 64 image(s) of 4096x4096: 1073741824 pixels, over the limit of 67108864"),
        (lambda p: recorded_call_png(p, a_spec(), 1, threads=2048), "2048 threads"),
    ],
)
def test_a_png_asking_for_huge_scheduler_values_images_or_threads_is_refused(tmp_path, capsys, make, message):
    assert replay.main([str(make(tmp_path / "x.png"))]) == 2
    line = one_error_line(capsys)
    assert line.startswith("sweeper.replay: error:") and message in line, line


def test_a_recorded_call_of_legal_size_still_replays_its_checks(tmp_path):
    from types import SimpleNamespace

    recorded = replay.read(recorded_call_png(tmp_path / "x.png", a_spec(width=1024, height=1024), 64, threads=64))
    args = SimpleNamespace(model=None, model_config=None, refiner=None, lora=None, init_image=None, mask_image=None, download=False)
    assert len(replay.checked(recorded, args)) == 64 and recorded.threads == 64


@pytest.mark.parametrize(
    "content, message",
    [
        ("a cat\n" * 100_001, "the file holds more than 100000 prompts, over the max_images budget"),
        ("\n" * 1_000_001, "1000001 lines, over the limit of 1000000"),
        ("\r\n" * 1_000_001, "1000001 lines, over the limit of 1000000"),
        ("x" * 9_000_000 + "\n", "line 1 is 9000000 characters long, over the limit of 20000 for a prompt"),
    ],
    ids=["100001-prompts", "1000001-lines", "1000001-crlf-lines", "one-9-MB-line"],
)
def test_a_huge_prompt_file_is_refused_before_any_work(tmp_path, content, message):
    path = tmp_path / "prompts.txt"
    path.write_text(content)
    with pytest.raises(PlanError, match=message):
        prompt_rows({"prompt_file": str(path)})


def test_a_huge_csv_prompt_file_is_refused_before_any_work(tmp_path, monkeypatch):
    from sweeper.planning import prompt_files

    path = tmp_path / "prompts.csv"
    path.write_text("prompt,negative_prompt\n" + "a cat,ugly\n" * 11)
    with pytest.raises(PlanError, match="the file holds more than 10 prompts"):
        prompt_rows({"prompt_file": str(path)}, limit=10)
    path.write_text("prompt,negative_prompt\na cat," + "x" * 30_000 + "\n")
    with pytest.raises(PlanError, match="row 1 \\(line 2\\): cell 2 is 30000 characters long, over the limit of 20000"):
        prompt_rows({"prompt_file": str(path)})
    monkeypatch.setattr(prompt_files, "MAX_PROMPT_FILE_BYTES", 100)
    with pytest.raises(PlanError, match="over the limit of 100 for a prompt file"):
        prompt_rows({"prompt_file": str(path)})
    fifo = tmp_path / "fifo.txt"
    os.mkfifo(fifo)
    assert in_thread(lambda: pytest.raises(PlanError, prompt_rows, {"prompt_file": str(fifo)})), "a FIFO prompt file hung planning"


@pytest.mark.parametrize("key", ["prompt", "negative_prompt"])
def test_a_plain_prompt_is_bounded_in_length(key):
    config = plan_config(**{key: "x" * 4_000_000})
    with pytest.raises(PlanError, match=f"invalid {key}='x.*: 4000000 characters long, over the limit of 20000 for a prompt"):
        plan([Job(0, config)])


def test_the_template_budget_holds_for_a_whole_prompt_file(tmp_path, monkeypatch):
    from sweeper.planning import templates

    # A file's allowance made small, so that 300 templates each well inside their own 1 s budget
    # surely overrun it on any machine (the real one: 2 s + 50 ms a template; the crafted file planned for 101 s).
    monkeypatch.setattr(templates, "ALL_TEMPLATES_SECONDS", 0.5)
    monkeypatch.setattr(templates, "SECONDS_PER_TEMPLATE", 0.001)
    names = "abcde"
    slow = "${a=x}" + "".join(f"${{{names[i + 1]}=${{{names[i]}}}${{{names[i]}}}}}" for i in range(4)) + "${e}"  # ~0.1 s, one prompt
    path = tmp_path / "prompts.txt"
    path.write_text("".join(f"{number} {slow}\n" for number in range(300)))  # each well in its own budget: it planned for 30 s
    tic = time.perf_counter()
    with pytest.raises(PlanError, match="the templates take too long to expand in all"):
        prompt_rows({"prompt_file": str(path)})
    assert time.perf_counter() - tic < 30  # a hang guard: the budget is under a second
    rows, _ = prompt_rows({"prompt": [f"{number} {{red|blue}} car" for number in range(300)]})  # real templates: ~10 ms each
    assert len(rows) == 600


def test_a_long_word_in_a_grid_label_is_ellipsized_in_a_few_measures(monkeypatch):
    from sweeper.report import grid_png

    style = grid_png._Style(256)
    measured = []
    width = style.width
    monkeypatch.setattr(style, "width", lambda text: measured.append(text) or width(text))
    lines = grid_png.wrap("a " + "w" * 3000 + " c", style, 200)
    assert lines[-1].endswith("…") and all(width(line) <= 200 for line in lines)
    assert len(measured) < 100  # it dropped one character per measure: 5,000 characters took 39 s
    text = "w" * 3000
    fits = grid_png._ellipsize(text, style, 200)
    assert width(fits) <= 200 < width(text[: len(fits)] + "…")  # the longest start that fits, as before


@pytest.mark.parametrize("length", [2**63, 2**40])
def test_a_lora_whose_header_length_is_absurd_is_refused_in_one_line(tmp_path, capsys, length):
    from sweeper.planning import lora_files

    lora = tmp_path / "style.safetensors"
    lora.write_bytes(length.to_bytes(8, "little") + b"{}" + b"\0" * 64)
    with pytest.raises(PlanError, match=f"invalid lora='{lora}': {lora}: not a safetensors file \\(its header says {length} bytes"):
        plan([Job(0, plan_config(lora=str(lora)))])
    png = crafted_png(tmp_path / "x.png", a_spec(), lora=["style.safetensors"], lora_scale=[1.0], lora_sha=["0" * 20])
    assert replay.main([str(png), "--lora", str(lora)]) == 2
    assert "not a safetensors file" in one_error_line(capsys)
    assert lora_files.MAX_HEADER_BYTES == 100_000_000


def test_a_wildcard_folder_is_bounded_in_total_size(tmp_path, monkeypatch):
    from sweeper.planning import wildcards

    folder = tmp_path / "wildcards"
    folder.mkdir()
    for name in ("a", "b", "c"):
        (folder / f"{name}.txt").write_text("x" * 40 + "\n")
    monkeypatch.setattr(wildcards, "WILDCARD_TOTAL_BYTES", 100)  # 256 MB, scaled down
    with pytest.raises(PlanError, match="its wildcard files hold more than 100 bytes in all"):
        prompt_rows({"prompt": "a __a__ car", "wildcards": str(folder)})
