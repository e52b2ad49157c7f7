"""`hydra/launcher=slurm`: settings refused before submitting, the sbatch script a
cluster would get (written by submitit through a stand-in `sbatch`), requeued
workers, and whole arrays on submitit's local executor."""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import itertools
import os
import pickle
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, main_per_case, plan_config, render_in_process, run_cli
from PIL import Image

from sweeper.storing import manifest, scores, writers
from sweeper import replay
from sweeper.launching import run, slurm
from sweeper.planning import schedule
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

pytest.importorskip("submitit")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch) -> Path:
    """`sbatch` and `srun` stand-ins: sbatch keeps a copy of the script it is given and answers as SLURM does
    (refusing partition `nope`)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/sh\n"
        f'if grep -q -- --partition=nope "$1"; then echo "sbatch: error: invalid partition specified: nope" >&2; exit 1; fi\n'
        f'cp "$1" {tmp_path / "sbatch.sh"}\necho "Submitted batch job 4242"\n'
    )
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir


def test_bad_launcher_settings_are_refused_in_one_line_before_anything_is_submitted(tmp_path, fake_slurm, monkeypatch):
    sweep = tmp_path / "sweep"
    base = ["-m", "model=tiny", "seed=0,1", "hydra/launcher=slurm", f"hydra.sweep.dir={sweep}"]
    cases = {
        "hydra.launcher.worker=2": "unknown key hydra.launcher.worker; did you mean hydra.launcher.workers?",
        "hydra.launcher.workers=0": "invalid hydra.launcher.workers=0: must be an integer >= 1",
        "hydra.launcher.cluster=pbs": "invalid hydra.launcher.cluster='pbs': allowed: slurm, local",
        "hydra.launcher.mem_gb=-4": "invalid hydra.launcher.mem_gb=-4: must be null or an integer >= 0",
        "hydra.launcher.additional_parameters={qos:high}": (  # a dict takes new keys with a +, as Hydra says
            "Could not override 'hydra.launcher.additional_parameters'. To append to your config use +hydra.launcher.additional_parameters={qos:high}"
        ),
    }
    refused = [*base[:-1], f"hydra.sweep.dir={tmp_path / 'refused'}", "hydra.launcher.partition=nope", f"hydra.launcher.submitit_folder={tmp_path / 'sub'}"]
    results = main_per_case([*([*base, case] for case in cases), refused], tmp_path, env={"PATH": f"{fake_slurm}:{os.environ['PATH']}"})
    for (case, line), (code, stderr) in zip(cases.items(), results["results"]):
        assert code == 2 and stderr.strip().splitlines() == [f"sweeper: error: {line}"], (case, stderr)
    assert not sweep.exists() and not results["torch"]
    code, stderr = results["results"][-1]  # the cluster said no: nothing runs
    assert code == 1 and stderr.strip().splitlines()[-1] == "sweeper: error: submitting the array failed: sbatch: error: invalid partition specified: nope", stderr
    assert "sbatch: error" not in "".join(stderr.strip().splitlines()[:-1])
    assert not (tmp_path / "refused").exists() and not list((tmp_path / "sub").glob("*.pkl"))  # no plan, multirun.yaml, pickles

    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(PlanError, match="no sbatch/srun here; run it on a SLURM login node, or .* hydra.launcher.cluster=local"):
        slurm.check({"workers": 2, "cluster": "slurm"})
    slurm.check({"workers": 2, "cluster": "local"})
    monkeypatch.setitem(sys.modules, "submitit", None)  # not installed
    with pytest.raises(PlanError, match=r"needs submitit: pip install submitit"):
        slurm.check({"workers": 2, "cluster": "local"})


def test_cluster_slurm_submits_one_array_of_workers_whose_requeue_renders_only_what_is_missing(tmp_path, tiny_models, fake_slurm, monkeypatch, warm_cli):
    sweep, folder = tmp_path / "sweep", tmp_path / "submitit"
    overrides = ["model=tiny", "steps=1", "batch_size=2", "device=cpu", "score=[clip,aesthetic]", "scorer=tiny"]  # the nodes would have a GPU; here the workers run on this CPU
    result = run_cli(
        "-m", *overrides, "seed=range(0,6)", "hydra/launcher=slurm", "hydra.launcher.workers=2", "hydra.launcher.partition=gpu",
        "hydra.launcher.account=lab", "hydra.launcher.timeout_min=90", "hydra.launcher.cpus_per_worker=8", "hydra.launcher.mem_gb=32",
        "hydra.launcher.setup=[module load cuda,source venv/bin/activate]", "+hydra.launcher.additional_parameters={mail-user:me@lab.org}",
        "hydra.launcher.wait=false", f"hydra.launcher.submitit_folder={folder}", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path, env={"PATH": f"{fake_slurm}:{os.environ['PATH']}"},
    )
    assert result.returncode == 0, result.stderr
    assert f"submitted array 4242 (2 workers); when it ends, `python -m sweeper.report {sweep}` merges" in result.stderr
    script = (tmp_path / "sbatch.sh").read_text()
    for line in (
        "#SBATCH --array=0-1%2", "#SBATCH --partition=gpu", "#SBATCH --account=lab", "#SBATCH --gpus-per-node=1", "#SBATCH --time=90",
        "#SBATCH --cpus-per-task=8", "#SBATCH --mem=32GB", "#SBATCH --mail-user=me@lab.org", "#SBATCH --job-name=sweeper",
        "#SBATCH --signal=USR2@90", "module load cuda\nsource venv/bin/activate\n", f"-m submitit.core._submit {folder}",
    ):
        assert line in script
    assert sorted(p.name for p in sweep.iterdir()) == ["commands.jsonl", "multirun.yaml", run.PLAN_FILE]  # the plan; nothing rendered here

    # What each array task unpickles and runs (on the cluster: `srun ... submitit.core._submit`).
    tasks = [pickle.loads((folder / f"4242_{rank}_submitted.pkl").read_bytes()) for rank in (0, 1)]
    assert [task.args for task in tasks] == [(0,), (1,)] and all(isinstance(task.function, slurm.Worker) for task in tasks)
    worker = tasks[0].function
    assert worker.threads == 8  # the CPU threads it asked SLURM for (device=cpu)
    worker.threads = tasks[1].function.threads = None  # here, this process's threads stay as they are
    jobs = [composed_job(num, *overrides, f"seed={seed}") for num, seed in enumerate(range(6))]
    prepared = run.prepare(jobs, sweep)
    assert worker.todo == [spec.image_id for spec in prepared.todo] and worker.world_size == 2
    share = [spec for batch in schedule.shard(schedule.make_batches(prepared.todo), 0, 2) for spec in batch.specs]
    render_in_process(sweep, [jobs[share[0].job_num]])  # stored before the worker was preempted

    monkeypatch.setenv("SWEEPER_WORKER", "")  # the worker sets it; restored after the test
    requeued = tasks[0].function.checkpoint(*tasks[0].args)  # what submitit requeues on preemption or a time limit
    assert requeued.function is worker and requeued.args == (0,)
    assert requeued.function(*requeued.args) == {"rendered": len(share) - 1, "failed": 0}
    assert tasks[1].function(*tasks[1].args)["failed"] == 0
    assert warm_cli.run(str(sweep), cwd=tmp_path, module="sweeper.report").returncode == 0  # what the message said to run
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    assert sorted(df.seed) == list(range(6)) and set(df.status) == {"ok"} and (sweep / "report.html").exists()
    assert sorted(df.loc[df.world_size == 2, "rank"].unique()) == [0, 1]
    scored = scores.read_scores(sweep)  # each worker scored the images it rendered
    assert len(scored) == 12 and set(scored.image_id) == set(df.image_id) and set(scored.metric) == {"clip", "aesthetic"}


def test_a_local_array_names_a_lost_worker_and_the_same_command_finishes_with_one_process_pixels(tmp_path, tiny_models):
    sweep = tmp_path / "sweep"
    overrides = ["model=tiny", "steps=2", "guidance=3,7"]
    command = ["-m", *overrides, "seed=range(0,4)", "hydra/launcher=slurm", "hydra.launcher.cluster=local", "hydra.launcher.workers=2",
               f"hydra.launcher.submitit_folder={tmp_path / 'submitit'}", f"hydra.sweep.dir={sweep}"]
    killed = run_cli(*command, cwd=tmp_path, env={"SWEEPER_FAULT": "kill:png=1", "SWEEPER_FAULT_WORKER": "1"})
    assert killed.returncode == 1 and "sweeper: worker 1 (job " in killed.stderr and "was lost" in killed.stderr, killed.stderr
    first = pd.read_parquet(sweep / manifest.MANIFEST)
    lost = first[first.status == "error"]
    assert len(first) == 8 and len(lost) >= 1 and set(lost["rank"]) == {1}
    assert all("the same command renders it" in error for error in lost.error)
    kept = {row.image_id: (sweep / row.path).stat().st_mtime_ns for row in first[first.status == "ok"].itertuples()}

    again = run_cli(*command, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"{len(lost)} to render" in again.stderr
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    assert len(df) == 8 and df.image_id.is_unique and set(df.status) == {"ok"}
    assert {image_id: (sweep / "images" / f"{image_id}.png").stat().st_mtime_ns for image_id in kept} == kept  # not rendered twice
    assert not list((sweep / writers.CLAIMS_DIR).iterdir())

    share = max(1, os.cpu_count() // 2)
    assert {replay.read(sweep / path).threads for path in df.path} == {share}  # the two local workers split the cores

    import torch

    alone, threads = tmp_path / "alone", torch.get_num_threads()
    jobs = [composed_job(num, "model=tiny", "steps=2", f"guidance={g}", f"seed={s}") for num, (g, s) in enumerate((g, s) for g in (3, 7) for s in range(4))]
    torch.set_num_threads(share)  # on the CPU, pixels depend on it
    try:
        render_in_process(alone, jobs)
    finally:
        torch.set_num_threads(threads)
    for image_id in df.image_id:
        ours, theirs = (np.asarray(Image.open(d / "images" / f"{image_id}.png")).astype(int) for d in (sweep, alone))
        if image_id in kept:  # the workers' batches are the one process's batches: bit-identical
            assert np.array_equal(ours, theirs), image_id
        else:  # re-rendered in a smaller batch; CPU kernels round by batch size
            assert np.abs(ours - theirs).max() <= 2, image_id


def test_settings_map_onto_submitits_and_local_workers_get_their_own_gpu(tmp_path, monkeypatch):
    conf = {"workers": 3, "cluster": "slurm", "partition": "gpu", "gpus_per_worker": 1, "cpus_per_worker": None, "setup": [], "additional_parameters": {}}
    assert slurm.parameters(conf) == {"slurm_partition": "gpu", "gpus_per_node": 1, "slurm_array_parallelism": 3, "name": "sweeper"}
    assert slurm.parameters({**conf, "timeout_min": 240})["timeout_min"] == 240 and "slurm_signal_delay_s" not in slurm.parameters({**conf, "timeout_min": 240})
    assert slurm.parameters({**conf, "timeout_min": 1})["slurm_signal_delay_s"] == 15  # submitit's 90 s would come at the start
    folder = slurm.submitit_folder({}, tmp_path / "sweep")
    assert tmp_path not in folder.parents  # pickles are code: never in a sweep dir that others may write to

    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    on_cuda = [store_spec(device="cuda")]
    assert slurm.local_gpus(3, 1, on_cuda) == [(0,), (1,), (0,)]
    assert slurm.local_gpus(2, 2, on_cuda) == [(0, 1), (0, 1)]
    assert slurm.local_gpus(2, 1, [store_spec(device="cuda", gpu=1)]) == [(0, 1), (0, 1)]  # device=cuda:1 names a GPU of all
    assert slurm.local_gpus(2, 1, [store_spec(device="cpu")]) == [(), ()]


def store_spec(**changes):
    (spec,) = plan([Job(0, plan_config())])
    return dataclasses.replace(spec, **changes)


def test_every_manifest_reader_takes_any_mix_of_rows_writers_can_leave(tmp_path):
    """Up to three rows per image in every order of: ok, error, a lost worker's error row (no times),
    an ok row without times; some merged into manifest.parquet, the rest in parts. One row per image,
    the best one (ok over error, then the latest finish), and the same command, a dry run and the report read it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from sweeper.storing.files import write_atomic
    from sweeper.report.cli import main as report
    from sweeper.storing.store import image_path

    kinds = ("ok", "error", "lost", "ok untimed")
    combos = [combo for n in (1, 2, 3) for combo in itertools.product(kinds, repeat=n)]
    jobs = [Job(num, plan_config(seed=num)) for num in range(len(combos))]
    specs = plan(jobs, "cpu")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    merged, parts, expected = [], [], {}
    (tmp_path / "images").mkdir()
    for number, (spec, combo) in enumerate(zip(specs, combos)):
        rows = []
        for order, kind in enumerate(combo):
            timed = kind in ("ok", "error")
            at = start + dt.timedelta(minutes=order) if timed else None
            status = "ok" if kind.startswith("ok") else "error"
            rows.append(manifest.row(spec, image_path(spec), status, None if status == "ok" else f"{kind} {order}", started_at=at, finished_at=at))
        if any(kind.startswith("ok") for kind in combo):  # its PNG, as the writer stored it before its row
            Image.new("RGB", (64, 64)).save(tmp_path / image_path(spec))
        (merged if number % 2 else parts).append(rows[0])
        parts.extend(rows[1:])
        best_status = "ok" if any(kind.startswith("ok") for kind in combo) else "error"
        times = [row["finished_at"] for row in rows if row["status"] == best_status and row["finished_at"] is not None]
        expected[spec.image_id] = (best_status, max(times) if times else None)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(merged, schema=manifest.SCHEMA), buffer)
    write_atomic(tmp_path / manifest.MANIFEST, buffer.getvalue())
    for row in parts:  # one part per row: parts are read in any order
        manifest.write_part(tmp_path, [row])

    def best(table):
        return {r["image_id"]: (r["status"], r["finished_at"]) for r in table.select(["image_id", "status", "finished_at"]).to_pylist()}

    table = manifest.read(tmp_path)
    assert table.num_rows == len(combos) and best(table) == expected
    assert manifest.done_ids(tmp_path) == {image_id for image_id, (status, _) in expected.items() if status == "ok"}
    assert {image_id for image_id, _ in manifest.failed(tmp_path)} == {i for i, (status, _) in expected.items() if status == "error"}
    prepared = run.prepare(jobs, tmp_path, auto_device="cpu")  # what the same command and a dry run do first
    assert {spec.image_id for spec in prepared.todo} == {i for i, (status, _) in expected.items() if status == "error"}
    assert best(manifest.merge(tmp_path)) == expected and not (tmp_path / manifest.PARTS_DIR).exists()
    assert best(pq.read_table(tmp_path / manifest.MANIFEST)) == expected
    assert report([str(tmp_path)]) == 0 and (tmp_path / "report.html").exists()
