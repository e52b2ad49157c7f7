"""SLURM arrays: long-lived workers that each render their share of a sweep (submitit).

    python -m sweeper -m hydra/launcher=slurm hydra.launcher.workers=8 hydra.launcher.partition=gpu seed='range(0,10000)'
    python -m sweeper -m hydra/launcher=slurm hydra.launcher.cluster=local hydra.launcher.workers=2 ...   # no SLURM: local processes

The sweep is planned and checked once, where the command runs; the plan is in
the sweep dir (plan.parquet). `workers` array tasks each load the model once
and render their cost-balanced share (schedule.shard of the plan's to-do
list), batching across jobs as one process does. On preemption or a time
limit submitit requeues a worker, which renders only what is missing (the
images already stored are left out, writers.Claims); at its last time limit
a worker stores what it rendered and stops. The command waits with one
progress bar for the whole array, read from the sweep dir, unless
`wait=false`; on SLURM it asks squeue itself every few seconds (submitit
asks sacct at most every 10 minutes), shows why tasks are pending, stops at
once on a reason that cannot clear, and cancels the array on Ctrl-C. A
worker that dies is named with SLURM's state for it, its images become error
rows, and the same command renders only what is missing. A command whose
sweep dir has an array still alive waits for that one instead of submitting
another (the array is recorded beside submitit's pickles).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.storing.bounds import MAX_TABLE_FILE_BYTES, parse_table, read_regular
from sweeper.errors import Interrupted, PlanError, SubmitFailed, UnsafePath

CLUSTERS = ("slurm", "local")
# Our settings -> submitit's AutoExecutor parameters for SLURM.
_SUBMITIT = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
    "setup": "slurm_setup", "additional_parameters": "slurm_additional_parameters", "timeout_min": "timeout_min",
    "gpus_per_worker": "gpus_per_node", "cpus_per_worker": "cpus_per_task", "mem_gb": "mem_gb",
}
SIGNAL_SECONDS = 90  # submitit signals a worker this long before its time limit, to requeue it
SQUEUE_SECONDS = 5.0  # how often the waiting command asks SLURM about its array
# Reasons SLURM gives for a pending job that it will never start as submitted.
NEVER_STARTS = {
    "PartitionConfig": "a worker asks for more than a node of the partition has (cpus_per_worker, gpus_per_worker, mem_gb)",
    "PartitionNodeLimit": "a worker asks for more nodes than the partition allows",
    "PartitionTimeLimit": "timeout_min is above the partition's time limit",
    "BadConstraints": "no node of the partition has what the constraint asks for",
    "InvalidAccount": "the account is not valid here",
    "InvalidQOS": "the qos is not valid here",
    "DependencyNeverSatisfied": "it depends on a job that failed",
}
# States of a task that has ended (others may still run: PENDING, RUNNING, REQUEUED, COMPLETING...).
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def check(conf: Mapping[str, Any]) -> None:
    """Refuse bad launcher settings in one line, before anything is submitted."""
    workers = conf.get("workers")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise PlanError(f"invalid hydra.launcher.workers={workers!r}: must be an integer >= 1")
    if conf.get("cluster") not in CLUSTERS:
        raise PlanError(f"invalid hydra.launcher.cluster={conf.get('cluster')!r}: allowed: {', '.join(CLUSTERS)}")
    for key in ("gpus_per_worker", "cpus_per_worker", "mem_gb", "timeout_min"):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise PlanError(f"invalid hydra.launcher.{key}={value!r}: must be null or an integer >= 0")
    if importlib.util.find_spec("submitit") is None:
        raise PlanError("hydra/launcher=slurm needs submitit: pip install submitit")
    if conf["cluster"] == "slurm" and not (shutil.which("sbatch") and shutil.which("srun")):
        raise PlanError("hydra/launcher=slurm: no sbatch/srun here; run it on a SLURM login node, or try it on this machine with hydra.launcher.cluster=local")


def parameters(conf: Mapping[str, Any]) -> dict[str, Any]:
    """submitit's AutoExecutor parameters for our settings (unset ones left to SLURM's defaults)."""
    found = {theirs: conf.get(ours) for ours, theirs in _SUBMITIT.items() if conf.get(ours) not in (None, [], {})}
    found["slurm_array_parallelism"] = conf["workers"]
    found["name"] = "sweeper"
    if conf.get("timeout_min") and conf["timeout_min"] * 60 < 4 * SIGNAL_SECONDS:
        # a 90 s warning in a short limit would come at the start: every task would requeue before rendering
        found["slurm_signal_delay_s"] = conf["timeout_min"] * 60 // 4
    return found


def submitit_folder(conf: Mapping[str, Any], sweep_dir: Path) -> Path:
    """Where submitit keeps its pickles and logs: not the sweep dir, which others may share
    (a pickle there would be code anyone could plant); by default sweeper's cache in your home."""
    if conf.get("submitit_folder"):
        return Path(conf["submitit_folder"]).expanduser()
    from sweeper.rendering.tiny import sweeper_cache

    key = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    return sweeper_cache() / "slurm" / key


def plan_digest(sweep_dir: Path) -> str:
    from sweeper.launching.run import PLAN_FILE

    try:
        return hashlib.sha256(read_regular(Path(sweep_dir) / PLAN_FILE, MAX_TABLE_FILE_BYTES, "a Parquet table", follow_links=False)).hexdigest()
    except ValueError as error:
        raise UnsafePath(f"cannot read the sweep's plan: {error}; remove it") from None


def render(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Submit the array of workers for `prepared.todo` (or find the one still alive for this
    sweep dir) and wait for it, unless `wait=false`. Returns (image_id, error) for the images
    of workers that were lost."""
    from sweeper.launching import run

    array = alive_array(conf, sweep_dir)
    wait_for_it = conf.get("wait", True)
    said = ""
    if array is not None:
        said = f"array {array.job_id} ({len(array.jobs)} workers) still renders this sweep dir{': waiting for it' if wait_for_it else ''} instead of submitting another"
        if wait_for_it:
            print(f"sweeper: {said}", file=sys.stderr, flush=True)
    try:
        if array is None:
            if not (Path(sweep_dir) / run.PLAN_FILE).exists():  # our sweeper wrote it; Hydra's would not have
                run.write_plan(prepared, sweep_dir)
            array = submit(prepared, sweep_dir, conf)
            said = f"submitted array {array.job_id} ({len(array.jobs)} workers)"
        if not wait_for_it:
            print(f"sweeper: {said}; when it ends, `python -m sweeper.report {sweep_dir}` merges the manifest and writes the report",
                  file=sys.stderr, flush=True)
            return []
        return wait(array, prepared, sweep_dir)
    except SubmitFailed:  # refused, or can never start (cancelled): nothing rendered
        _forget_failed_submit(Path(sweep_dir))
        raise


def _forget_failed_submit(sweep_dir: Path) -> None:
    """Nothing was rendered: in a sweep dir that holds nothing rendered yet, take back what the
    command wrote for the sweep (plan.parquet, multirun.yaml, commands.jsonl, the dir itself when it is empty)."""
    from sweeper.storing import commands, manifest
    from sweeper.launching import run

    if any((sweep_dir / name).exists() for name in ("images", manifest.MANIFEST, manifest.PARTS_DIR)):
        return
    for name in (run.PLAN_FILE, "multirun.yaml", commands.COMMANDS_FILE):
        (sweep_dir / name).unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        sweep_dir.rmdir()


@dataclass
class Array:
    """A submitted array, as the command that waits for it sees it: its tasks' submitit jobs
    (rank order) and the image ids it was given (its workers' shares are cut from them)."""

    jobs: list[Any]
    job_id: str
    cluster: str
    todo: list[str]

    def cancel(self) -> None:
        if self.cluster == "slurm":
            subprocess.run(["scancel", self.job_id], capture_output=True, timeout=60)
        else:
            for job in self.jobs:
                job.cancel(check=False)


def submit(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> Array:
    """Submit `workers` array tasks rendering `prepared.todo` (the plan is already in the sweep dir)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    folder = submitit_folder(conf, sweep_dir)
    before = set(folder.glob("*.pkl")) if folder.is_dir() else set()
    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's complaint; ours says it once
            array = _submit(prepared, sweep_dir, conf)
    except (OSError, FailedJobError, FailedSubmissionError) as error:
        for pickle in set(folder.glob("*.pkl")) - before if folder.is_dir() else ():
            pickle.unlink(missing_ok=True)
        said = " ".join(str(error).split())
        hint = ""
        if "generic resource" in said and conf.get("gpus_per_worker"):
            hint = "; on a partition without GPUs set hydra.launcher.gpus_per_worker=0 (the workers render on their CPUs)"
        raise SubmitFailed(f"submitting the array failed: {said[-500:]}{hint}") from None
    if array.cluster == "slurm":
        _record(folder, array, plan_digest(sweep_dir))
    return array


def _submit(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> Array:
    import submitit

    workers, folder = int(conf["workers"]), submitit_folder(conf, sweep_dir)
    todo = [spec.image_id for spec in prepared.todo]
    worker = Worker(str(sweep_dir), plan_digest(sweep_dir), workers, todo, threads=worker_threads(conf, workers, prepared.todo), scoring=prepared.scoring)
    if conf["cluster"] == "slurm":
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm", slurm_max_num_timeout=conf["max_num_timeout"])
        executor.update_parameters(**parameters(conf))
        jobs = executor.map_array(worker, range(workers))
    else:
        executor = submitit.LocalExecutor(folder=folder, max_num_timeout=conf["max_num_timeout"])
        jobs = []
        for rank, gpus in enumerate(local_gpus(workers, conf["gpus_per_worker"], prepared.todo)):
            executor.update_parameters(timeout_min=conf["timeout_min"], setup=conf["setup"] or [], gpus_per_node=len(gpus), visible_gpus=gpus)
            jobs.append(executor.submit(worker, rank))
    return Array(jobs, str(jobs[0].job_id).split("_")[0], conf["cluster"], todo)


RECORD = "array.json"


def _record(folder: Path, array: Array, digest: str) -> None:
    """Which array renders this sweep dir (beside submitit's pickles, in our own folder), so
    that a command run while it is alive waits for it instead of submitting another."""
    from sweeper.storing.files import write_atomic

    record = {"job_id": array.job_id, "workers": len(array.jobs), "digest": digest, "todo": array.todo}
    write_atomic(folder / RECORD, json.dumps(record).encode())


def check_plan(prepared: Any, conf: Mapping[str, Any], sweep_dir: Path) -> None:
    """Refuse a plan other than the one an array still alive for this sweep dir renders, before the
    command writes its plan file over the one that array's (requeued) workers read."""
    from sweeper.launching import run

    alive_array(conf, sweep_dir, hashlib.sha256(run.plan_bytes(prepared)).hexdigest())


def alive_array(conf: Mapping[str, Any], sweep_dir: Path, digest: str | None = None) -> Array | None:
    """The array recorded for this sweep dir, if a task of it is still pending or running on SLURM;
    PlanError if it renders a plan other than the one whose hash is `digest` (by default the dir's plan file)."""
    from submitit import SlurmJob

    from sweeper.launching import run

    folder = submitit_folder(conf, sweep_dir)
    if conf.get("cluster") != "slurm" or not (folder / RECORD).is_file() or not (Path(sweep_dir) / run.PLAN_FILE).is_file():
        return None
    try:
        record = json.loads((folder / RECORD).read_text())
        job_id, workers, recorded, todo = str(int(record["job_id"])), int(record["workers"]), str(record["digest"]), list(map(str, record["todo"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not squeue(job_id):
        return None
    if recorded != (digest or plan_digest(sweep_dir)):
        raise PlanError(f"array {job_id} still renders another plan into {sweep_dir}; wait for it to end, or stop it: scancel {job_id}")
    return Array([SlurmJob(folder, f"{job_id}_{rank}") for rank in range(workers)], job_id, "slurm", todo)


def squeue(job_id: str) -> dict[str, tuple[str, str]] | None:
    """{task id (9_1): (state, reason)} of the array's tasks SLURM still holds (pending, running);
    None when squeue cannot say."""
    try:
        done = subprocess.run(["squeue", "-h", "-r", "-j", job_id, "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0:
        return {} if "Invalid job id" in done.stderr else None  # a job long gone is not known any more
    tasks = {}
    for line in done.stdout.splitlines():
        task, state, reason = (line.split("|") + ["", ""])[:3]
        tasks[task.strip()] = (state.strip(), reason.strip())
    return tasks


def sacct(task: str, tries: int = 10) -> tuple[str, str]:
    """(state, reason) of an ended task from SLURM's accounting (which may lag a few seconds behind)."""
    state, reason = "", ""
    for _ in range(tries):
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            done = subprocess.run(["sacct", "-n", "-X", "-P", "-j", task, "-o", "State,Reason"], capture_output=True, text=True, timeout=60)
            lines = done.stdout.strip().splitlines()
            if lines:
                state, reason = (lines[-1].split("|") + [""])[:2]
                if state.split()[0] in ENDED:
                    break
        time.sleep(1.0)
    return state or "unknown", reason


def worker_threads(conf: Mapping[str, Any], workers: int, specs: Sequence[Any]) -> int | None:
    """CPU threads of each worker rendering on the CPU: on SLURM its cpus_per_worker (a node
    without CPU binding would let torch take every core), locally the cores shared, not fought over."""
    if not specs or specs[0].device != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
    if conf["cluster"] == "slurm":
        return conf.get("cpus_per_worker") or None
    return max(1, (os.cpu_count() or 1) // workers)


def local_gpus(workers: int, per_worker: int, specs: Sequence[Any]) -> list[tuple[int, ...]]:
    """The GPUs each local worker sees: its own, round-robin (submitit's local executor would
    give every worker the first ones); all of them where the config names one (device=cuda:N)."""
    if not specs or specs[0].device != "cuda":
        return [()] * workers
    import torch

    count = torch.cuda.device_count()
    if any(spec.gpu is not None for spec in specs):
        return [tuple(range(count))] * workers
    return [tuple((rank * per_worker + k) % count for k in range(per_worker)) for rank in range(workers)]


class Worker:
    """One array task: render the share `rank` of the to-do list, as one long-lived process.

    Checkpointable: on preemption or a time limit submitit calls `checkpoint` and
    requeues it with the same share; the images stored meanwhile are left out.
    """

    def __init__(self, sweep_dir: str, digest: str, world_size: int, todo: Sequence[str], threads: int | None = None, scoring: Any = None) -> None:
        self.sweep_dir, self.digest, self.world_size, self.todo, self.threads = sweep_dir, digest, world_size, list(todo), threads
        self.scoring = scoring  # `score=[...]`: each batch scored in the worker, right after it renders

    def __call__(self, rank: int) -> dict[str, int]:
        from sweeper.launching import run
        from sweeper.rendering.runtime import Runtime

        os.environ["SWEEPER_WORKER"] = str(rank)  # for the fault hook (tests)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        specs = read_plan(Path(self.sweep_dir), self.digest)
        wanted = set(self.todo)
        todo = [spec for spec in specs if spec.image_id in wanted]
        _check_device(todo)
        prepared = run.Prepared(jobs=len({spec.job_num for spec in specs}), specs=specs, todo=todo, dry_run=False, scoring=self.scoring)
        with _last_time_limit() as stopped:
            try:
                summary = run.execute(prepared, Path(self.sweep_dir), rank, self.world_size, gpu=0, progress=_Quiet(), stop=stopped, runtime=Runtime())
            except Interrupted:
                return {"stopped": stopped.reason}
        return {"rendered": summary.rendered, "failed": len(summary.failed)}

    def checkpoint(self, rank: int) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, rank)


class _Stop:
    """Set when the worker is to stop after its batch in flight, with the reason."""

    def __init__(self) -> None:
        self.reason = ""

    def is_set(self) -> bool:
        return bool(self.reason)


@contextlib.contextmanager
def _last_time_limit() -> Any:
    """submitit's time-limit signal, but at the last one (no requeue left), instead of its
    UncompletedJobError landing in whatever runs (a pipeline call, which would store the
    batch's good images as errors), the worker stores what is done and stops."""
    from submitit.core.utils import UncompletedJobError

    stop = _Stop()
    theirs = signal.getsignal(signal.SIGUSR2)
    if not callable(theirs):  # not started by submitit (called in a test)
        yield stop
        return

    def ours(signum: int, frame: Any) -> None:
        try:
            theirs(signum, frame)  # checkpoints and requeues (exiting), or raises at the last time limit
        except UncompletedJobError as error:
            stop.reason = f"its time limit, with no requeue left ({' '.join(str(error).split())})"

    signal.signal(signal.SIGUSR2, ours)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGUSR2, theirs)


def _check_device(specs: Sequence[Any]) -> None:
    from sweeper.rendering.devices import cuda_problem

    if specs and specs[0].device == "cuda":
        problem = cuda_problem(specs[0].gpu)
        if problem:
            raise RuntimeError(f"this worker cannot render on {specs[0].device}: {problem}")


def read_plan(sweep_dir: Path, digest: str) -> list[Any]:
    """The specs of the sweep dir's plan.parquet, if it is the one submitted (its digest)."""
    from sweeper.planning.spec import FIELD_NAMES, ImageSpec
    from sweeper.launching.run import PLAN_FILE

    path = Path(sweep_dir) / PLAN_FILE
    try:  # a FIFO or a link to /dev/zero put there since the submission must not hang or fill a worker
        data = read_regular(path, MAX_TABLE_FILE_BYTES, "a Parquet table", follow_links=False)
    except (OSError, ValueError) as error:
        raise RuntimeError(f"cannot read the plan: {error}; submit the sweep again") from None
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"{path} changed since the array was submitted; submit the sweep again")
    try:
        table = parse_table(data, path, list(FIELD_NAMES))
    except ValueError as error:
        raise RuntimeError(f"cannot read the plan: {error}; submit the sweep again") from None
    return [ImageSpec.from_dict(row) for row in table.to_pylist()]


class _Quiet:
    """Progress of a worker: the command that waits draws the bar (from the sweep dir)."""

    def update(self, n: int) -> None:
        pass

    def write(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def __enter__(self) -> _Quiet:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def wait(array: Array, prepared: Any, sweep_dir: Path, poll_seconds: float = 1.0) -> list[tuple[str, str]]:
    """One progress bar for the whole array (PNGs appearing in the sweep dir) until every task ends.

    On SLURM the bar says why tasks are pending; a reason that cannot clear
    cancels the array and raises SubmitFailed. Ctrl-C cancels the array and
    raises Interrupted. Returns (image_id, error) for the images of workers
    that were lost or stopped: they are error rows by then, so the summary,
    the exit code and a re-run know.
    """
    from sweeper.launching import run

    images = Path(sweep_dir) / "images"
    start = _count(images)
    given = set(array.todo)
    total = sum(spec.image_id in given for spec in prepared.todo)  # an array attached to may have stored some already
    watch, lost, told = _Watch(array), [], set()
    with run.progress_bar(total) as bar:
        try:
            while True:
                ended, pending = watch.poll()
                for rank in sorted(ended - told):  # said as soon as it is known, not when the others end
                    told.add(rank)
                    reason = watch.failure(rank, array.jobs[rank])
                    if reason is not None:
                        bar.write(f"sweeper: {reason}")
                        lost.extend(_record_lost(prepared, array, sweep_dir, rank, reason))
                stored = max(0, min(total, _count(images) - start))
                if stored > bar.n:
                    bar.update(stored - bar.n)
                never = next((reason for reason in pending if reason in NEVER_STARTS), None)
                if never:
                    array.cancel()
                    raise SubmitFailed(f"array {array.job_id} can never start: SLURM keeps it pending with reason {never} "
                                       f"({NEVER_STARTS[never]}); cancelled it")
                waiting = ""
                if pending:
                    reason = max(set(pending), key=pending.count)
                    waiting = f"{len(pending)} pending" + (f": {reason}" if reason not in ("", "None") else "")
                if waiting != (bar.postfix or ""):
                    bar.set_postfix_str(waiting)
                if len(ended) == len(array.jobs):
                    break
                time.sleep(poll_seconds)
        except KeyboardInterrupt:
            array.cancel()
            bar.write(f"sweeper: Ctrl-C: cancelled array {array.job_id} ({len(array.jobs)} workers); what they stored is kept")
            raise Interrupted(sweep_dir, len(prepared.specs)) from None
    return lost


class _Watch:
    """Which tasks of an array have ended, and why the others wait. On SLURM from squeue
    every SQUEUE_SECONDS (a task it no longer lists has ended), not from submitit's
    sacct polls, which come minutes apart on a long array."""

    def __init__(self, array: Array) -> None:
        self.array = array
        self._asked = float("-inf")
        self._ended: set[int] = set()
        self._pending: list[str] = []

    def poll(self) -> tuple[set[int], list[str]]:
        """(ranks ended, pending reason of each task waiting to start)."""
        if self.array.cluster != "slurm":
            return {rank for rank, job in enumerate(self.array.jobs) if job.done()}, []
        for rank, job in enumerate(self.array.jobs):
            if job.paths.result_pickle.exists():
                self._ended.add(rank)
        if time.monotonic() - self._asked >= SQUEUE_SECONDS:
            self._asked = time.monotonic()
            tasks = squeue(self.array.job_id)
            if tasks is not None:
                self._ended |= {rank for rank in range(len(self.array.jobs)) if f"{self.array.job_id}_{rank}" not in tasks}
                self._pending = [reason for state, reason in tasks.values() if state == "PENDING"]
        return self._ended, self._pending

    def failure(self, rank: int, job: Any) -> str | None:
        """Why a worker ended without rendering its share (None: it did)."""
        name = f"worker {rank} (job {job.job_id})"
        if self.array.cluster == "slurm" and not job.paths.result_pickle.exists():
            state, reason = sacct(job.job_id)
            said = f"SLURM says {state}" + (f" ({reason})" if reason and reason != "None" else "")
            return f"{name} was lost: {said}{_log_tail(job)}"
        error = job.exception()
        if error is not None:
            return f"{name} was lost: {' '.join(str(error).split())[-300:]}"
        result = job.result()
        if isinstance(result, dict) and result.get("stopped"):
            return f"{name} stopped at {result['stopped']}; it stored what it rendered"
        return None


def _log_tail(job: Any) -> str:
    """The end of the task's error log: what it said last, for the cause behind SLURM's state."""
    try:
        text = " ".join(Path(job.paths.stderr).read_text(errors="replace").split())
    except OSError:
        return ""
    return f"; its log ends: {text[-200:]}" if text else ""


def _count(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".png"))
    except OSError:
        return 0


def _record_lost(prepared: Any, array: Array, sweep_dir: Path, rank: int, reason: str) -> list[tuple[str, str]]:
    """Error rows for what a worker's share left undone (its share cut as the worker cut it, from the array's to-do list)."""
    from sweeper.storing import manifest
    from sweeper.planning import schedule
    from sweeper.storing.store import image_path

    world_size = len(array.jobs)
    given = set(array.todo)
    todo = [spec for spec in prepared.specs if spec.image_id in given]  # in plan order, as the worker reads them
    done = manifest.done_ids(sweep_dir)
    share = [spec for batch in schedule.shard(schedule.make_batches(todo), rank, world_size) for spec in batch.specs]
    lost = [spec for spec in share if spec.image_id not in done]
    if lost:
        error = f"not rendered: {reason}; the same command renders it"
        manifest.write_part(sweep_dir, [manifest.row(spec, image_path(spec), "error", error, rank=rank, world_size=world_size) for spec in lost])
    return [(spec.image_id, reason) for spec in lost]
