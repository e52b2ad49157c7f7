"""Never lose a render: kill -9, failing batches, out of memory, bad output, a full
disk, a busy dir, damaged manifest parts. Faults come from the explicit
SWEEPER_FAULT hook (sweeper/faults.py), not from sleeps and luck."""

from __future__ import annotations

import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from conftest import Started, composed_job, only_dir, plan_config, render_in_process
from PIL import Image

from sweeper.storing import files, manifest, store

SWEEP = ("-m", "model=tiny", "seed=0,1,2,3,4", "steps=2", "batch_size=2")
# SWEEP stopped three ways, each in a `python -m sweeper` of its own (what it leaves is freed by its process's end):
# kill -9 after the 3rd PNG, after the 1st manifest part; a full disk at the 6th write (multirun.yaml, plan.parquet,
# commands.jsonl, the first batch's two PNGs, then its manifest part fails).
STOPS = {"kill:png=3": "kill:png=3", "kill:part=1": "kill:part=1", "full disk": "enospc:write=6"}


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, tiny_models) -> dict[str, tuple]:
    """The three stopped commands, started together: independent processes in dirs of their own, so one
    imports on the second core while another imports on the first, with one thread each to render (three
    torch processes of two threads on two cores wait on each other's threads). Each test waits for its own."""
    runs = {}
    for name, fault in STOPS.items():
        cwd = tmp_path_factory.mktemp(fault.replace(":", "-").replace("=", ""))
        runs[name] = (cwd, Started(*SWEEP, cwd=cwd, env={"SWEEPER_FAULT": fault, "OMP_NUM_THREADS": "1"}))
    yield runs
    for _, started in runs.values():
        started.stop()


def files_of(sweep) -> dict[str, int]:
    """Every file under the sweep dir (lock and report aside) -> its mtime in ns."""
    return {
        str(path.relative_to(sweep)): path.stat().st_mtime_ns
        for path in sweep.rglob("*")
        if path.is_file() and path.name not in (".sweeper.lock", "report.html") and ".thumbs" not in path.parts
    }


def same_command_again(sweep) -> int:
    """SWEEP again into its dir, as the CLI runs it but in process (an interpreter start is ~10 s):
    under the dir's lock, stale temps swept, the manifest merged. Returns how many were already done."""
    from sweeper.launching import launch, run

    jobs = [composed_job(n, "model=tiny", f"seed={seed}", "steps=2", "batch_size=2") for n, seed in enumerate(range(5))]
    prepared = run.prepare(jobs, sweep)
    launch.render(prepared, sweep, processes=1)
    manifest.merge(sweep)
    return prepared.done


def assert_whole(sweep, images: int) -> pd.DataFrame:
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == images and df.image_id.is_unique and set(df.status) == {"ok"}
    for path in df.path:
        with Image.open(sweep / path) as image:
            image.load()  # a torn PNG fails here
    assert sorted(p.name for p in (sweep / "images").iterdir()) == sorted(f"{i}.png" for i in df.image_id)
    assert not list(sweep.rglob("*.tmp")) and not (sweep / ".manifest-parts").exists()
    return df


@pytest.mark.slow
@pytest.mark.parametrize("point", ["png=3", "part=1"])  # torn temp files: test_stale_temp_files_...
def test_kill_9_then_the_same_command_finishes_without_loss_or_rework(stopped, point):
    cwd, started = stopped[f"kill:{point}"]
    killed = started.finish()
    assert killed.returncode == -9, killed.stderr
    sweep = only_dir(cwd / "outputs" / "sweeps")
    before = files_of(sweep)
    pngs_before = {name: mtime for name, mtime in before.items() if name.endswith(".png")}

    assert same_command_again(sweep) == len(pngs_before)
    assert_whole(sweep, 5)
    after = files_of(sweep)
    assert all(after[name] == mtime for name, mtime in pngs_before.items()), "a finished image was written again"


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_nan_output_is_an_error(tmp_path, warm_cli, monkeypatch, capsys):
    result = warm_cli.run(
        "-m", "model=tiny", "seed=0,1,2,3", "steps=2", "batch_size=4", "prompt='../../../escaped, /etc/passwd" + " and more" * 10 + "'",
        "prompt_syntax=plain",  # as text, cut at 77 tokens (A1111's syntax would chunk it)
        cwd=tmp_path, env={"SWEEPER_FAULT": "oom:batch=1"},
    )
    assert result.returncode == 0, result.stderr
    assert "out of memory with 4 images per call; retrying with 2" in result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = assert_whole(sweep, 4)
    assert set(df.batch_size) == {1}
    assert set(df.warning) == {"prompt truncated to 77 tokens"}  # the tiny tokenizer reads characters
    # A path-like prompt names no file: everything stays inside the sweep dir.
    assert [p for p in tmp_path.rglob("*") if p.is_file() and sweep not in p.parents] == []

    # NaN output, in process (the CLI's planning, rendering and exit check, without an interpreter start).
    from sweeper.app import exit_if_failed

    monkeypatch.setenv("SWEEPER_FAULT", "nan:seed=9")
    sweep = tmp_path / "nan"
    render_in_process(sweep, [composed_job(n, "model=tiny", f"seed={seed}", "steps=2", "batch_size=4") for n, seed in enumerate((0, 1, 2, 3, 9))])
    with pytest.raises(SystemExit) as exit:
        exit_if_failed(sweep)
    assert exit.value.code == 1
    assert "1 image(s) failed (first: NaN in the output" in capsys.readouterr().err
    df = pd.read_parquet(sweep / "manifest.parquet").set_index("seed")
    assert df.loc[9, "status"] == "error" and "float16" in df.loc[9, "error"]
    assert not (sweep / df.loc[9, "path"]).exists() and (df.drop(index=9).status == "ok").all()


@pytest.mark.slow
def test_a_full_disk_stops_with_one_line_and_keeps_what_was_stored(stopped):
    # A process of its own: the claims it leaves are taken over once it has exited, as the re-run shows.
    cwd, started = stopped["full disk"]
    full = started.finish()
    assert full.returncode == 1
    assert full.stderr.strip().splitlines()[-1].startswith("sweeper: error: cannot write into")
    assert "No space left on device" in full.stderr and "Traceback" not in full.stderr
    sweep = only_dir(cwd / "outputs" / "sweeps")
    kept = sorted(p.name for p in (sweep / "images").glob("*.png"))
    assert len(kept) == 2

    assert same_command_again(sweep) == 2
    assert_whole(sweep, 5)


def spec(seed: int):
    from sweeper.planning.plan import Job, plan

    return plan([Job(0, plan_config(seed=seed, steps=2, device="cpu"))])[0]


def test_a_damaged_part_is_reported_and_set_aside_and_the_rest_kept(tmp_path, capsys):
    rows = [manifest.row(spec(seed), f"images/{spec(seed).image_id}.png", "error", "x", rank=0) for seed in range(3)]
    good = manifest.write_part(tmp_path, rows[:2])
    damaged = manifest.write_part(tmp_path, rows[2:])
    damaged.write_bytes(damaged.read_bytes()[:40])  # torn by a crash of another tool, say
    table = manifest.read(tmp_path)
    assert sorted(table.column("seed").to_pylist()) == [0, 1]
    assert f"skipping damaged manifest file {damaged}" in capsys.readouterr().err
    manifest.merge(tmp_path)
    assert pa.parquet.read_table(tmp_path / manifest.MANIFEST).num_rows == 2
    assert not good.exists() and (damaged.parent / "damaged" / damaged.name).is_file()


def test_a_damaged_manifest_is_rebuilt_from_the_pngs(tmp_path):
    specs = [spec(seed) for seed in range(3)]
    versions = {"sweeper": "t", "diffusers": "t", "torch": "t"}
    for s in specs:
        row = manifest.row(s, store.image_path(s), "ok", None, rank=0, batch_size=3, seconds=0.5)
        files.write_atomic(tmp_path / store.image_path(s), store.png_bytes(Image.new("RGB", (8, 8)), s, versions, row))
    (tmp_path / manifest.MANIFEST).write_bytes(b"PAR1 not really")
    assert manifest.done_ids(tmp_path) == {s.image_id for s in specs}
    manifest.merge(tmp_path)
    df = pd.read_parquet(tmp_path / manifest.MANIFEST)
    assert sorted(df.seed) == [0, 1, 2] and set(df.batch_size) == {3} and set(df.seconds) == {0.5}


@pytest.mark.parametrize(
    "pixels, error, warning",
    [(np.full((4, 4, 3), 0.5), None, None), (np.zeros((4, 4, 3)), None, "all black"), (np.full((4, 4, 3), np.nan), store.NAN_ERROR, None)],
)
def test_bad_output_is_flagged(pixels, error, warning):
    assert store.problem(pixels) == (error, warning)


def test_stale_temp_files_of_a_killed_write_are_removed_but_never_a_live_writers(tmp_path):
    from sweeper.storing import writers

    (tmp_path / "images").mkdir()
    stale = tmp_path / "images" / ".abc.png.x1.tmp"
    stale.write_bytes(b"half")
    old = time.time() - writers.TEMP_STALE_SECONDS - 60
    os.utime(stale, (old, old))
    live = tmp_path / "images" / ".def.png.x2.tmp"  # another writer is writing it right now
    live.write_bytes(b"half")
    keep = tmp_path / "images" / "abc.png"
    keep.write_bytes(b"whole")
    writers.remove_stale_temps(tmp_path)
    assert not stale.exists() and live.exists() and keep.exists()


def test_temps_left_by_a_killed_writer_go_at_once_but_never_a_live_or_remote_writers(tmp_path):
    """kill -9 between writing a temp and renaming or linking it into place (SWEEP's png=3 kill in CI left
    a claim's temp: another thread was claiming the next batch), or while a dead claim is aside in a
    take-over: empty or whole, a temp's name says whose it is. The age rule for the rest: the test above."""
    import socket
    import subprocess
    import sys

    from sweeper.storing import files, writers

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True).stdout.strip()
    here = files.temp_name("x").split(".")[2].split("-")[0]
    assert files.temp_name("x").startswith(f".x.{here}-{os.getpid()}.")
    temps = {
        f"images/.a.png.{here}-{gone}.0123456789ab.tmp": True,  # killed before its write
        f".claims/.b.{here}-{gone}.0123456789ab.tmp": True,
        f".claims/.b.{here}-{gone}.0123456789ab.dead.tmp": True,
        f"images/.c.png.{here}-{os.getpid()}.0123456789ab.tmp": False,  # live: between its write and its rename
        f".claims/.d.{'0' * 8}-{gone}.0123456789ab.tmp": False,  # another host's: its pids are not ours to check
        "images/.e.png.0123456789abcdef.tmp": False,  # no writer in its name
    }
    for name in temps:
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_text("")
    writers.remove_stale_temps(tmp_path)
    assert {name: not (tmp_path / name).exists() for name in temps} == temps
    assert here == __import__("hashlib").sha256(socket.gethostname().encode()).hexdigest()[:8]


def test_a_report_that_cannot_be_built_fails_the_command_in_one_line_and_keeps_the_images(tmp_path, warm_cli):
    """Every run ends with report.html (README): a run whose report cannot be built says so in its exit status."""
    sweep = tmp_path / "sweep"
    (sweep / "report.html").mkdir(parents=True)  # in the report's way
    result = warm_cli.run("-m", "model=tiny", "seed=0,1", "steps=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("sweeper: error: no report: ") and "Traceback" not in result.stderr, result.stderr
    assert lines[-1].endswith(f"the images and manifest.parquet are kept in {sweep}; python -m sweeper.report {sweep} builds it")
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 2 and set(df.status) == {"ok"} and all((sweep / path).is_file() for path in df.path)
    # Failed images too: one line says both.
    result = warm_cli.run("-m", "model=tiny", "seed=0,1,2", "steps=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path, env={"SWEEPER_FAULT": "render:seed=2"})
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("sweeper: error: 1 image(s) failed (first: ") and "; and no report: " in last, result.stderr
