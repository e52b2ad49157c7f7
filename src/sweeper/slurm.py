"""SLURM arrays: long-lived workers that each render their share of a sweep (submitit).

    python -m sweeper -m hydra/launcher=slurm hydra.launcher.workers=8 hydra.launcher.partition=gpu seed='range(0,10000)'
    python -m sweeper -m hydra/launcher=slurm hydra.launcher.cluster=local hydra.launcher.workers=2 ...   # no SLURM: local processes

The sweep is planned and checked once, where the command runs; the plan is in
the sweep dir (plan.parquet). `workers` array tasks each load the model once
and render their cost-balanced share (schedule.shard of the plan's to-do
list), batching across jobs as one process does. On preemption or a time
limit submitit requeues a worker, which renders only what is missing (the
images already stored are left out, writers.Claims). The command waits with
one progress bar for the whole array, read from the sweep dir, unless
`wait=false`; a worker that dies is named, its images stay to do or become
error rows, and the same command renders only what is missing.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.errors import PlanError, SubmitFailed

CLUSTERS = ("slurm", "local")
# Our settings -> submitit's AutoExecutor parameters for SLURM.
_SUBMITIT = {
    "partition": "slurm_partition", "account": "slurm_account", "qos": "slurm_qos", "constraint": "slurm_constraint",
    "setup": "slurm_setup", "additional_parameters": "slurm_additional_parameters", "timeout_min": "timeout_min",
    "gpus_per_worker": "gpus_per_node", "cpus_per_worker": "cpus_per_task", "mem_gb": "mem_gb",
}


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
    return found


def submitit_folder(conf: Mapping[str, Any], sweep_dir: Path) -> Path:
    """Where submitit keeps its pickles and logs: not the sweep dir, which others may share
    (a pickle there would be code anyone could plant); by default sweeper's cache in your home."""
    if conf.get("submitit_folder"):
        return Path(conf["submitit_folder"]).expanduser()
    from sweeper.tiny import sweeper_cache

    key = hashlib.sha1(str(Path(sweep_dir).resolve()).encode()).hexdigest()[:12]
    return sweeper_cache() / "slurm" / key


def plan_digest(sweep_dir: Path) -> str:
    from sweeper.run import PLAN_FILE

    return hashlib.sha256((Path(sweep_dir) / PLAN_FILE).read_bytes()).hexdigest()


def render(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Submit the array of workers for `prepared.todo` and wait for it, unless `wait=false`.
    Returns (image_id, error) for the images of workers that were lost."""
    from sweeper import run

    if not (Path(sweep_dir) / run.PLAN_FILE).exists():
        run.write_plan(prepared, sweep_dir)
    array = submit(prepared, sweep_dir, conf)
    if not conf.get("wait", True):
        print(
            f"sweeper: submitted array {array.job_id} ({len(array.jobs)} workers); when it ends, "
            f"`python -m sweeper.report {sweep_dir}` merges the manifest and writes the report",
            file=sys.stderr, flush=True,
        )
        return []
    return wait(array, prepared, sweep_dir)


@dataclass
class Array:
    """A submitted array, as the command that submitted it sees it."""

    jobs: list[Any]
    job_id: str


def submit(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> Array:
    """Submit `workers` array tasks rendering `prepared.todo` (the plan is already in the sweep dir)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        with contextlib.redirect_stderr(io.StringIO()):  # submitit echoes sbatch's complaint; ours says it once
            return _submit(prepared, sweep_dir, conf)
    except (OSError, FailedJobError, FailedSubmissionError) as error:
        raise SubmitFailed(f"submitting the array failed: {' '.join(str(error).split())[-500:]}") from None


def _submit(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> Array:
    import submitit

    workers, folder = int(conf["workers"]), submitit_folder(conf, sweep_dir)
    todo = [spec.image_id for spec in prepared.todo]
    worker = Worker(str(sweep_dir), plan_digest(sweep_dir), workers, todo, threads=local_threads(conf, workers, prepared.todo))
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
    return Array(jobs, str(jobs[0].job_id).split("_")[0])


def local_threads(conf: Mapping[str, Any], workers: int, specs: Sequence[Any]) -> int | None:
    """CPU threads of each local worker rendering on the CPU: the cores shared, not fought over
    (on SLURM, cpus_per_worker decides)."""
    if conf["cluster"] != "local" or not specs or specs[0].device != "cpu" or "OMP_NUM_THREADS" in os.environ:
        return None
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

    def __init__(self, sweep_dir: str, digest: str, world_size: int, todo: Sequence[str], threads: int | None = None) -> None:
        self.sweep_dir, self.digest, self.world_size, self.todo, self.threads = sweep_dir, digest, world_size, list(todo), threads

    def __call__(self, rank: int) -> dict[str, int]:
        from sweeper import run
        from sweeper.runtime import Runtime

        os.environ["SWEEPER_WORKER"] = str(rank)  # for the fault hook (tests)
        if self.threads:
            import torch

            torch.set_num_threads(self.threads)
        specs = read_plan(Path(self.sweep_dir), self.digest)
        wanted = set(self.todo)
        todo = [spec for spec in specs if spec.image_id in wanted]
        _check_device(todo)
        prepared = run.Prepared(jobs=len({spec.job_num for spec in specs}), specs=specs, todo=todo, dry_run=False)
        summary = run.execute(prepared, Path(self.sweep_dir), rank, self.world_size, gpu=0, progress=_Quiet(), runtime=Runtime())
        return {"rendered": summary.rendered, "failed": len(summary.failed)}

    def checkpoint(self, rank: int) -> Any:
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(self, rank)


def _check_device(specs: Sequence[Any]) -> None:
    from sweeper.devices import cuda_problem

    if specs and specs[0].device == "cuda":
        problem = cuda_problem(specs[0].gpu)
        if problem:
            raise RuntimeError(f"this worker cannot render on {specs[0].device}: {problem}")


def read_plan(sweep_dir: Path, digest: str) -> list[Any]:
    """The specs of the sweep dir's plan.parquet, if it is the one submitted (its digest)."""
    import pyarrow.parquet as pq

    from sweeper.spec import FIELD_NAMES, ImageSpec
    from sweeper.run import PLAN_FILE

    data = (Path(sweep_dir) / PLAN_FILE).read_bytes()
    if hashlib.sha256(data).hexdigest() != digest:
        raise RuntimeError(f"{Path(sweep_dir) / PLAN_FILE} changed since the array was submitted; submit the sweep again")
    table = pq.read_table(io.BytesIO(data), columns=list(FIELD_NAMES))
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

    Returns (image_id, error) for the images of workers that were lost: they
    are error rows by then, so the summary, the exit code and a re-run know.
    """
    from sweeper import run

    images = Path(sweep_dir) / "images"
    start = _count(images)
    with run.progress_bar(len(prepared.todo)) as bar:
        while True:
            finished = all(job.done() for job in array.jobs)
            stored = max(0, min(len(prepared.todo), _count(images) - start))
            if stored > bar.n:
                bar.update(stored - bar.n)
            if finished:
                break
            time.sleep(poll_seconds)
    lost = []
    for rank, job in enumerate(array.jobs):
        error = job.exception()
        if error is not None:
            reason = f"worker {rank} (job {job.job_id}) was lost: {' '.join(str(error).split())[-300:]}"
            print(f"sweeper: {reason}", file=sys.stderr, flush=True)
            lost.extend(_record_lost(prepared, sweep_dir, rank, len(array.jobs), reason))
    return lost


def _count(folder: Path) -> int:
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.name.endswith(".png"))
    except OSError:
        return 0


def _record_lost(prepared: Any, sweep_dir: Path, rank: int, world_size: int, reason: str) -> list[tuple[str, str]]:
    from sweeper import manifest, schedule
    from sweeper.store import image_path

    done = manifest.done_ids(sweep_dir)
    share = [spec for batch in schedule.shard(schedule.make_batches(prepared.todo), rank, world_size) for spec in batch.specs]
    lost = [spec for spec in share if spec.image_id not in done]
    if lost:
        error = f"not rendered: {reason}; the same command renders it"
        manifest.write_part(sweep_dir, [manifest.row(spec, image_path(spec), "error", error, rank=rank, world_size=world_size) for spec in lost])
    return [(spec.image_id, reason) for spec in lost]
