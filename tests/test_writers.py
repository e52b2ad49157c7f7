"""Many writers, one sweep dir: claims, the merge lock, and whole launchers at once.

Hydra's joblib and submitit launchers run each job in a process of its own,
all rendering into one sweep dir; two runs of one command may do the same.
"""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
from conftest import plan_config

from sweeper.storing import files, manifest, store, writers
from sweeper.planning.plan import Job, plan


def specs(count: int):
    return plan([Job(0, plan_config(seed=list(range(count))))])


def test_a_writer_leaves_out_what_another_claimed_or_stored(tmp_path):
    mine, theirs, stored, dead, old = specs(5)
    claims = writers.Claims(tmp_path)
    (tmp_path / writers.CLAIMS_DIR).mkdir()
    (tmp_path / writers.CLAIMS_DIR / theirs.image_id).write_text(f"{socket.gethostname()} {os.getppid()}")  # a live process here
    (tmp_path / writers.CLAIMS_DIR / dead.image_id).write_text(f"{socket.gethostname()} 999999999")  # gone
    (tmp_path / writers.CLAIMS_DIR / old.image_id).write_text("another-host 12")
    hours_ago = time.time() - writers.CLAIM_STALE_SECONDS - 60
    os.utime(tmp_path / writers.CLAIMS_DIR / old.image_id, (hours_ago, hours_ago))
    (tmp_path / "images").mkdir()
    (tmp_path / store.image_path(stored)).write_bytes(b"png")
    assert claims.take([mine, theirs, stored, dead, old]) == [mine, dead, old]
    assert claims.take([mine]) == []  # claimed once: a second take (another writer) gets nothing
    (tmp_path / writers.CLAIMS_DIR / "x").write_text("another-host 12")  # a young claim on another host: never a pid check there
    with files.folder(tmp_path, writers.CLAIMS_DIR) as claims_dir:
        assert writers._left_by_the_dead(claims_dir, "x", writers.CLAIM_STALE_SECONDS) is None
    claims.release([mine, dead, old])
    assert sorted(p.name for p in (tmp_path / writers.CLAIMS_DIR).iterdir()) == sorted([theirs.image_id, "x"])


def test_merges_take_turns_and_a_dead_writers_lock_is_taken_over(tmp_path):
    rows = [manifest.row(spec, store.image_path(spec), "error", "x") for spec in specs(40)]
    for start in range(0, 40, 4):
        manifest.write_part(tmp_path, rows[start : start + 4])
    inside, most = [0], [0]

    def merge() -> None:
        with writers.merging(tmp_path):
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            inside[0] -= 1
        manifest.merge(tmp_path)

    threads = [threading.Thread(target=merge) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert most[0] == 1 and manifest.read(tmp_path).num_rows == 40 and not (tmp_path / manifest.PARTS_DIR).exists()
    (tmp_path / writers.MERGE_LOCK).write_text(f"{socket.gethostname()} 999999999")  # left by a writer killed mid-merge
    with writers.merging(tmp_path, wait_seconds=5):
        pass
    assert not (tmp_path / writers.MERGE_LOCK).exists()


def start(args: list[str], cwd, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "sweeper", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def whole(sweep, images: int) -> pd.DataFrame:
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    assert len(df) == images and df.image_id.is_unique and set(df.status) == {"ok"}
    assert sorted(p.name for p in (sweep / "images").glob("*.png")) == sorted(f"{i}.png" for i in df.image_id)
    assert not (sweep / manifest.PARTS_DIR).exists() and not list((sweep / writers.CLAIMS_DIR).iterdir())
    return df


@pytest.mark.slow
def test_hydras_joblib_and_submitit_launchers_render_into_one_dir_at_once(tmp_path, tiny_models):
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "shared"
    sweep_args = ["-m", "model=tiny", "seed=[0,1]", "steps=1", f"hydra.sweep.dir={sweep}"]
    joblib = start([*sweep_args, "guidance=3,7", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2"], tmp_path)  # 2 jobs at once
    submitit = start([*sweep_args, "guidance=5", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10"], tmp_path)
    for process in (joblib, submitit):
        _, stderr = process.communicate(timeout=240)  # until EOF: no worker process left holding our stderr (joblib's did for 5 min)
        assert process.returncode == 0, stderr
    df = whole(sweep, 6)  # 3 jobs x 2 seeds, each job its own process, every image once
    assert sorted(set(df.guidance)) == [3.0, 5.0, 7.0]


# Put first on a process's PYTHONPATH: every batch it renders is logged, one line per image, so that
# renders can be counted across processes (the manifest keeps one row per image however many there were).
COUNT_RENDERS = """
import os
from sweeper.rendering import render

real = render.render_batch


def render_batch(batch, *args, **kwargs):
    with open(os.environ["SWEEPER_TEST_RENDERS"], "a") as log:  # appends of one short write: lines never mix
        log.write("".join(f"{spec.image_id}\\n" for spec in batch.specs))
    return real(batch, *args, **kwargs)


render.render_batch = render_batch
"""


@pytest.mark.slow
def test_two_runs_of_one_command_at_once_render_every_image_once(tmp_path, tiny_models):
    sweep, hook, renders = tmp_path / "twice", tmp_path / "hook", tmp_path / "renders.txt"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(COUNT_RENDERS)
    path = [str(hook), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {"SWEEPER_TEST_RENDERS": str(renders), "PYTHONPATH": os.pathsep.join(path)}
    command = ["-m", "model=tiny", "seed=range(0,12)", "steps=1", "batch_size=2", f"hydra.sweep.dir={sweep}"]
    runs = [start(command, tmp_path, env), start(command, tmp_path, env)]
    for process in runs:
        _, stderr = process.communicate(timeout=600)
        assert process.returncode == 0, stderr
    df = whole(sweep, 12)
    rendered = renders.read_text().splitlines()
    assert sorted(rendered) == sorted(df.image_id), "an image was rendered twice (or not at all)"


def test_claims_work_where_the_filesystem_has_no_hard_links(tmp_path, monkeypatch):
    def no_links(*args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)
    mine, theirs = specs(2)
    claims = writers.Claims(tmp_path)
    assert claims.take([mine, theirs]) == [mine, theirs]
    assert writers.Claims(tmp_path).take([mine, theirs]) == []  # another writer: already claimed
    assert (tmp_path / writers.CLAIMS_DIR / mine.image_id).read_text() == f"{socket.gethostname()} {os.getpid()}"
    assert sorted(p.name for p in (tmp_path / writers.CLAIMS_DIR).iterdir()) == sorted([mine.image_id, theirs.image_id])  # no temp left
