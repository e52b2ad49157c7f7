"""Launch: who renders the prepared work, on which device.

    this process                      plain `python -m sweeper`, one device
    the ranks that already exist      `accelerate launch` / torchrun
    N workers spawned here            `hydra.launcher.num_processes=N` (auto: one per GPU)

Every rank or worker computes the same assignment of batches (schedule.shard),
so nobody talks while rendering. Under `accelerate launch` rank 0's view of
what is already done is broadcast first: a rank that looked at the sweep dir
later could see rank 0's fresh images and take a different share. Each
process renders on GPU `local rank % GPUs` (or the one `device=cuda:N` pins).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from sweeper.rendering import devices
from sweeper.launching import distributed, run, stops
from sweeper.storing import manifest
from sweeper.planning import schedule
from sweeper.errors import DeviceFailed, Interrupted, PlanError, RankLost
from sweeper.rendering.runtime import Runtime
from sweeper.storing.store import image_path
from sweeper.storing.writers import remove_stale_temps


def num_processes(value: Any) -> int:
    """`auto`: one per GPU torch can use, 1 without one; else a positive int."""
    if value == "auto":
        return max(1, devices.usable_gpus())
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PlanError(f"invalid hydra.launcher.num_processes={value!r}: allowed: auto or an integer >= 1")
    return value


def render(prepared: run.Prepared, out_dir: Path, processes: int, runtime: Runtime | None = None) -> run.Summary:
    """Render what is to do (other writers may render into `out_dir` at the same time: writers.py);
    in this process with `runtime`'s pipelines, or in spawned workers with their own."""
    if distributed.launched():
        return _render_as_rank(prepared, out_dir, runtime)
    remove_stale_temps(out_dir)
    if processes == 1 or len(prepared.todo) <= 1:
        return run.execute(prepared, out_dir, gpu=_gpu(0), runtime=runtime)
    return _spawn(prepared, out_dir, processes)


def _gpu(local_rank: int) -> int:
    """The GPU index of a process on this machine (several processes share one only when asked)."""
    return local_rank % max(1, devices.usable_gpus())


def _render_as_rank(prepared: run.Prepared, out_dir: Path, runtime: Runtime | None) -> run.Summary:
    rank, world_size = distributed.rank(), distributed.world_size()
    todo_ids = None
    if rank == 0:
        remove_stale_temps(out_dir)
        todo_ids = [spec.image_id for spec in prepared.todo]
    share = prepared.only(distributed.broadcast(todo_ids))
    failure: BaseException | None = None
    try:
        with distributed.heartbeat():
            summary = run.execute(share, out_dir, rank, world_size, gpu=_gpu(distributed.local_rank()), runtime=runtime)
    except (DeviceFailed, OSError, RuntimeError) as error:  # say so to the others before stopping
        failure = error
    try:
        distributed.finish_together(failed=failure is not None)
    except RankLost as lost:
        if rank == 0:
            _record_losses(share, out_dir, world_size, str(lost))
        raise lost from None
    if failure is not None:
        raise failure
    return summary


def _record_losses(prepared: run.Prepared, out_dir: Path, world_size: int, reason: str) -> None:
    """On rank 0, after a rank was lost: error rows for what nobody rendered, one merged manifest."""
    written = set(manifest.read(out_dir).column("image_id").to_pylist())
    lost = [spec for spec in prepared.todo if spec.image_id not in written]
    if lost:
        rows = [manifest.row(spec, image_path(spec), "error", f"not rendered: {reason}", world_size=world_size, device=spec.device) for spec in lost]
        manifest.write_part(out_dir, rows)
    manifest.merge(out_dir)


def _spawn(prepared: run.Prepared, out_dir: Path, processes: int) -> run.Summary:
    """Render with `processes` workers of this machine; one progress bar here.

    Ctrl-C (here, or at the terminal: the workers ignore it) tells every worker
    to stop after its batch in flight; a second one ends them at once.
    """
    context = multiprocessing.get_context("spawn")  # CUDA cannot be forked
    with stops.held():  # the workers (and multiprocessing's resource tracker) are told to stop, not signalled
        done = context.Value("i", 0)
        results = context.Queue()
        stop = context.Event()
        workers = [
            context.Process(target=_worker, args=(prepared, out_dir, rank, processes, done, results, stop), name=f"sweeper-rank-{rank}")
            for rank in range(processes)
        ]
        for worker in workers:
            worker.start()
    summary = run.Summary()
    with run.progress_bar(len(prepared.todo)) as bar, _stop_workers(bar, stop, workers):
        while any(worker.is_alive() for worker in workers) or not results.empty():
            while not results.empty():
                part = results.get()
                summary.rendered += part.rendered
                summary.failed.extend(part.failed)
            if done.value > bar.n:
                bar.update(done.value - bar.n)
            time.sleep(0.1)
    for rank, worker in enumerate(workers):
        worker.join()
        if worker.exitcode != 0:
            summary.failed.extend(_record_lost_share(prepared, out_dir, rank, processes, worker.exitcode))
    if stop.is_set():
        raise Interrupted(out_dir, len(prepared.specs))
    return summary


@contextlib.contextmanager
def _stop_workers(progress: run.Progress, stop, workers: list) -> Iterator[None]:
    def first(signum: int, frame: Any) -> None:
        stop.set()
        progress.write("sweeper: stopping after the batches in flight (Ctrl-C again to stop at once)")
        signal.signal(signal.SIGINT, second)

    def second(signum: int, frame: Any) -> None:
        for worker in workers:
            worker.kill()  # they ignore SIGTERM (a terminal or `timeout` signals the whole group)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _worker(prepared: run.Prepared, out_dir: Path, rank: int, world_size: int, done, results, stop) -> None:
    import torch

    stops.ignore()  # the parent says when to stop (`stop`), after the batch in flight
    if prepared.todo[0].device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))  # share the cores, don't fight
    try:
        summary = run.execute(prepared, out_dir, rank, world_size, gpu=_gpu(rank), progress=_SharedCount(done), stop=stop, runtime=Runtime())
    except Interrupted:
        return
    except DeviceFailed as error:  # its images are error rows already
        print(f"sweeper: error: {error}", file=sys.stderr, flush=True)
        raise SystemExit(1) from None
    results.put(summary)


class _SharedCount:
    """Progress of a spawned worker: a counter the parent's bar reads."""

    def __init__(self, value) -> None:
        self._value = value

    def update(self, n: int) -> None:
        with self._value.get_lock():
            self._value.value += n

    def write(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    def __enter__(self) -> _SharedCount:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def _record_lost_share(prepared: run.Prepared, out_dir: Path, rank: int, world_size: int, exitcode: int) -> list[tuple[str, str]]:
    """Error rows for the images of a worker that died, so the summary and a re-run know."""
    error = f"worker rank {rank} died (exit code {exitcode}) before rendering this image"
    written = set(manifest.read(out_dir).column("image_id").to_pylist())
    lost = [spec for batch in schedule.shard(schedule.make_batches(prepared.todo), rank, world_size) for spec in batch.specs if spec.image_id not in written]
    if lost:
        rows = [manifest.row(spec, image_path(spec), "error", error, rank=rank, world_size=world_size, device=spec.device) for spec in lost]
        manifest.write_part(out_dir, rows)
    return [(spec.image_id, error) for spec in lost]
