"""`hydra/launcher=slurm` on a real one-node SLURM (scripts/slurm_up.sh brings it up: slurmctld,
slurmd, slurmdbd with MariaDB, munge), through the real sbatch, squeue, sacct, scancel and scontrol.

The node is this machine's CPUs, so the workers render the tiny model at 64x64 on
gpus_per_worker=0, as on a CPU partition. Where the script cannot run (not root, no
apt-get) every test here skips with its one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, Started, main_per_case

from sweeper.storing import manifest
from sweeper import replay
from sweeper.launching import slurm

pytestmark = pytest.mark.slurm
pytest.importorskip("submitit")

CPU = ["-m", "hydra/launcher=slurm", "hydra.launcher.workers=2", "hydra.launcher.gpus_per_worker=0", "model=tiny", "width=64", "height=64", "steps=4"]


@pytest.fixture(scope="session")
def cluster() -> str:
    """The one-node SLURM, up (seconds when it is already)."""
    done = subprocess.run([str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        pytest.skip(done.stderr.strip())
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def stderr_now(started: Started) -> str:
    """What the command said so far (read without moving the offset it writes at)."""
    return os.pread(started.err.fileno(), 1 << 20, 0).decode("utf-8", "replace")


def wait_for(what, timeout: float, started: Started | None = None):
    """`what()`'s first true value, polled every half second."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = what()
        if value:
            return value
        if started is not None and started.process.poll() is not None:
            pytest.fail(f"the command ended first: {stderr_now(started)[-2000:]}")
        time.sleep(0.5)
    pytest.fail(f"not within {timeout} s" + (f": {stderr_now(started)[-2000:]}" if started else ""))


def pngs(sweep: Path) -> dict[str, int]:
    try:
        return {png.name: png.stat().st_mtime_ns for png in (sweep / "images").iterdir() if png.suffix == ".png"}
    except OSError:
        return {}


def array_of(sweep: Path) -> str:
    """The job id of the array recorded for the sweep dir."""
    record = slurm.submitit_folder({}, sweep) / slurm.RECORD
    return wait_for(lambda: record.is_file() and json.loads(record.read_text())["job_id"], 60)


def sacct_states(job: str) -> list[str]:
    out = subprocess.run(["sacct", "-n", "-X", "-D", "-P", "-j", job, "-o", "JobID,State"], capture_output=True, text=True).stdout
    return out.splitlines()


def test_slurm_up_is_idempotent_and_quick_when_the_cluster_is_up_and_says_where_it_cannot_run(cluster):
    tic = time.monotonic()
    again = subprocess.run([str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and again.stdout.startswith("slurm_up: up in "), again.stdout + again.stderr
    assert time.monotonic() - tic < 20
    user = subprocess.run(["runuser", "-u", "nobody", "--", "bash", str(REPO / "scripts" / "slurm_up.sh")], capture_output=True, text=True)
    assert (user.returncode, user.stdout, user.stderr) == (3, "", "slurm_up: cannot run here: needs root (it installs packages and starts daemons)\n")


def test_the_readme_cpu_example_renders_and_a_requeued_worker_renders_only_what_is_missing(tmp_path, tiny_models, cluster):
    sweep = tmp_path / "sweep"
    started = Started(*CPU, "seed=range(0,24)", "batch_size=2", "hydra.launcher.cpus_per_worker=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    try:
        job = array_of(sweep)
        wait_for(lambda: pngs(sweep), 180, started)
        subprocess.run(["scontrol", "suspend", f"{job}_0"], check=True, capture_output=True)  # stopped mid-share, then
        before = pngs(sweep)
        subprocess.run(["scontrol", "requeue", f"{job}_0"], check=True, capture_output=True)  # requeued, as a preemption would
        wait_for(lambda: "1 pending: JobHeldAdmin" in stderr_now(started), 60, started)  # requeued while suspended: held
        subprocess.run(["scontrol", "release", f"{job}_0"], check=True, capture_output=True)
        subprocess.run(["scontrol", "update", f"jobid={job}_0", "starttime=now"], check=True, capture_output=True)  # not 2 minutes later
        result = started.finish(timeout=300)
    finally:
        started.stop()
    assert result.returncode == 0, result.stderr
    assert "to render, estimated" in result.stderr and "on cpu" in result.stderr and "cuda" not in result.stderr
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    assert len(df) == 24 and df.image_id.is_unique and set(df.status) == {"ok"} and sorted(df["rank"].unique()) == [0, 1]
    assert {replay.read(sweep / path).threads for path in df.path} == {1}  # cpus_per_worker
    after = pngs(sweep)
    assert {name: after[name] for name in before} == before  # what was stored before the requeue was not rendered again
    assert wait_for(lambda: sacct_states(f"{job}_0") == [f"{job}_0|REQUEUED", f"{job}_0|COMPLETED"], 30)  # accounting lags a little


def test_a_worker_at_its_last_time_limit_stores_what_it_rendered_and_every_command_reads_the_dir(tmp_path, tiny_models, cluster, warm_cli):
    """timeout_min=1 with no requeue left (max_num_timeout=0: the last of the requeues the issue saw).
    SLURM sends submitit's signal from its time-limit check (every 30 s); the test also sends it
    (scancel --signal, what submitit's own tests do) once PNGs land, so it surely comes mid-render."""
    sweep = tmp_path / "sweep"
    command = [*CPU, "seed=range(0,200)", "hydra.launcher.timeout_min=1", "hydra.launcher.max_num_timeout=0", f"hydra.sweep.dir={sweep}"]
    started = Started(*command, cwd=tmp_path)
    try:
        job = array_of(sweep)
        wait_for(lambda: pngs(sweep) or started.process.poll() is not None, 150)
        subprocess.run(["scancel", "--signal=USR2", job], capture_output=True)
        result = started.finish(timeout=240)
    finally:
        started.stop()
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    script = (slurm.submitit_folder({}, sweep) / f"{job}_submission.sh").read_text()
    assert "#SBATCH --signal=USR2@15" in script and "#SBATCH --time=1" in script  # a quarter of the limit, not 90 s of 60
    for rank in (0, 1):
        assert f"sweeper: worker {rank} (job {job}_{rank}) stopped at its time limit, with no requeue left" in result.stderr
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    stored = {name[:-4] for name in pngs(sweep)}
    assert len(df) == 200 and df.image_id.is_unique and stored
    assert set(df.loc[df.status == "ok", "image_id"]) == stored  # no good image became an error row
    assert all("stopped at its time limit" in error for error in df.loc[df.status == "error", "error"])

    dry = warm_cli.run(*command, "dry_run=true", cwd=tmp_path)  # the same command plans on this dir
    assert dry.returncode == 0 and f"{len(stored)} already done, {200 - len(stored)} to render" in dry.stderr, dry.stderr
    report = warm_cli.run(str(sweep), cwd=tmp_path, module="sweeper.report")
    assert report.returncode == 0 and (sweep / "report.html").exists(), report.stderr


def test_a_lost_worker_is_named_with_its_slurm_state_within_a_minute(tmp_path, tiny_models, cluster):
    sweep = tmp_path / "sweep"
    started = Started(*CPU, "seed=range(0,32)", "batch_size=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    try:
        job = array_of(sweep)
        wait_for(lambda: pngs(sweep), 180, started)
        subprocess.run(["scontrol", "suspend", f"{job}_1"], check=True, capture_output=True)  # mid-share, then lost
        subprocess.run(["scancel", f"{job}_1"], check=True, capture_output=True)
        tic = time.monotonic()
        line = f"sweeper: worker 1 (job {job}_1) was lost: SLURM says CANCELLED by 0"
        wait_for(lambda: line in stderr_now(started), 60, started)
        noticed = time.monotonic() - tic
        result = started.finish(timeout=300)
    finally:
        started.stop()
    assert noticed < 60 and result.returncode == 1, result.stderr
    df = pd.read_parquet(sweep / manifest.MANIFEST)
    lost = df[df.status == "error"]
    assert len(df) == 32 and len(lost) and set(lost["rank"]) == {1} and all(line[len("sweeper: "):] in error for error in lost.error)


def test_a_pending_array_shows_why_attaches_a_second_command_and_is_cancelled_by_ctrl_c(tmp_path, tiny_models, cluster, warm_cli):
    sweep = tmp_path / "sweep"
    command = [*CPU, "seed=range(0,8)", "+hydra.launcher.additional_parameters={hold:true}", f"hydra.sweep.dir={sweep}"]
    first = warm_cli.run(*command, "hydra.launcher.wait=false", cwd=tmp_path)
    assert first.returncode == 0 and "sweeper: submitted array " in first.stderr, first.stderr
    job = array_of(sweep)
    second = warm_cli.run(*command, "hydra.launcher.wait=false", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert f"sweeper: array {job} (2 workers) still renders this sweep dir instead of submitting another; when it ends" in second.stderr
    plan = (sweep / "plan.parquet").read_bytes()
    other = warm_cli.run(*[arg.replace("range(0,8)", "range(0,9)") for arg in command], "hydra.launcher.wait=false", cwd=tmp_path)
    assert other.returncode == 2 and other.stderr.strip().splitlines()[-1] == (
        f"sweeper: error: array {job} still renders another plan into {sweep}; wait for it to end, or stop it: scancel {job}"
    ), other.stderr
    assert (sweep / "plan.parquet").read_bytes() == plan  # the plan its requeued workers read is left alone
    again = Started(*command, cwd=tmp_path)  # the same command, while the array is alive (held)
    try:
        wait_for(lambda: "2 pending: JobHeldUser" in stderr_now(again), 60, again)
        assert f"sweeper: array {job} (2 workers) still renders this sweep dir: waiting for it instead of submitting another" in stderr_now(again)
        again.process.send_signal(signal.SIGINT)
        result = again.finish(timeout=60)
    finally:
        again.stop()
    assert result.returncode == 130, result.stderr
    assert f"sweeper: Ctrl-C: cancelled array {job} (2 workers); what they stored is kept" in result.stderr
    assert json.loads((slurm.submitit_folder({}, sweep) / slurm.RECORD).read_text())["job_id"] == job  # no second array
    assert not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()
    wait_for(lambda: all("|CANCELLED" in state for state in sacct_states(job)) and sacct_states(job), 30)


def test_an_array_that_can_never_start_and_a_refused_submit_stop_in_one_line_leaving_no_files(tmp_path, tiny_models, cluster):
    cases = {  # the node has fewer CPUs than 64; a partition that is not there; GPUs asked of a node without any
        "hydra.launcher.cpus_per_worker=64": "can never start: SLURM keeps it pending with reason PartitionConfig",
        "hydra.launcher.partition=nope": "submitting the array failed: sbatch: error: invalid partition specified: nope",
        "hydra.launcher.gpus_per_worker=1": "Invalid generic resource (gres) specification; on a partition without GPUs set hydra.launcher.gpus_per_worker=0",
    }
    args = [[*CPU, "seed=range(0,2)", case, f"hydra.sweep.dir={tmp_path / str(n)}"] for n, case in enumerate(cases)]
    tic = time.monotonic()
    results = main_per_case(args, tmp_path)["results"]
    assert time.monotonic() - tic < 90
    for n, ((case, said), (code, stderr)) in enumerate(zip(cases.items(), results)):
        last = stderr.strip().splitlines()[-1]
        assert code == 1 and last.startswith("sweeper: error: ") and said in last, (case, stderr)
        assert not (tmp_path / str(n)).exists(), case  # no plan.parquet, no multirun.yaml
        if "never start" not in said:  # refused: no pickles either (those of the cancelled array stay, with its logs)
            assert not list(slurm.submitit_folder({}, tmp_path / str(n)).glob("*.pkl")), case
    job = results[0][1].split("array ")[-1].split()[0]
    assert not subprocess.run(["squeue", "-h", "-j", job], capture_output=True, text=True).stdout.strip()  # cancelled
