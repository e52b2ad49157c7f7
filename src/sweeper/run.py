"""Run: plan every job, say what will happen, render what is not done yet.

    prepare(jobs, out_dir)  -> Prepared   plan + checks + resume; no files, no torch
    announce(prepared)                    the image count and an estimated time
    execute(prepared, ...)  -> Summary    render batches, store PNGs and manifest parts

The Hydra entry point (app.py), the sweeper plugin and the launcher plugin
all go through these three steps.
"""

from __future__ import annotations

import datetime as dt
import secrets
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Sequence

from sweeper import devices, faults, hub, manifest, schedule
from sweeper.plan import ImageSpec, Job, plan
from sweeper.store import BackgroundWriter, image_path

# Drawn once per process (and broadcast from rank 0 under several ranks):
# every plan of this sweep gives seeds of -1 the same random values.
_seed_nonce = secrets.randbelow(2**32)


def set_seed_nonce(value: int) -> None:
    global _seed_nonce
    _seed_nonce = value


def seed_nonce() -> int:
    return _seed_nonce


@dataclass
class Prepared:
    jobs: int
    specs: list[ImageSpec]
    todo: list[ImageSpec]
    dry_run: bool

    @property
    def done(self) -> int:
        return len(self.specs) - len(self.todo)

    def only(self, todo_ids: Sequence[str]) -> Prepared:
        """The same plan with another view of what is still to do (rank 0's, under several ranks)."""
        keep = set(todo_ids)
        return Prepared(self.jobs, self.specs, [spec for spec in self.specs if spec.image_id in keep], self.dry_run)


@dataclass
class Summary:
    rendered: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def prepare(jobs: Sequence[Job], out_dir: Path) -> Prepared:
    """Plan and check every job, and find what `out_dir` already holds. Raises PlanError."""
    specs = plan(jobs, devices.auto_device(), _seed_nonce)
    for key, model_id, revision in sorted({("model.id", s.model_id, s.model_revision) for s in specs} | {("refiner.id", s.refiner_id, s.refiner_revision) for s in specs if s.refiner_id}):
        hub.check_available(key, model_id, revision)
    done = manifest.done_ids(out_dir) if Path(out_dir).is_dir() else set()
    todo = [spec for spec in specs if spec.image_id not in done]
    dry_run = any(bool(job.config.get("dry_run")) for job in jobs)
    return Prepared(jobs=len(jobs), specs=specs, todo=todo, dry_run=dry_run)


def announce(prepared: Prepared, out_dir: Path) -> None:
    seconds = schedule.estimate_seconds(prepared.todo)
    message = (
        f"sweeper: {len(prepared.specs)} images from {prepared.jobs} job(s) into {out_dir}: "
        f"{prepared.done} already done, {len(prepared.todo)} to render"
    )
    if prepared.todo:
        message += f", estimated {dt.timedelta(seconds=round(seconds))} on {prepared.todo[0].device}"
    print(message, file=sys.stderr, flush=True)
    if prepared.dry_run:
        print("sweeper: dry_run=true: stopping before rendering", file=sys.stderr, flush=True)
    elif not prepared.todo:
        print("sweeper: nothing to render: every image is already in the manifest", file=sys.stderr, flush=True)


def execute(prepared: Prepared, out_dir: Path, rank: int = 0, world_size: int = 1, gpu: int = 0, progress: Progress | None = None) -> Summary:
    """Render this rank's share of what is not done; store PNGs and manifest parts.

    `gpu` is the CUDA device index of this rank when the specs ask for cuda.
    `progress` counts images; by default a tqdm bar on rank 0.
    """
    summary = Summary()
    batches = schedule.shard(schedule.make_batches(prepared.todo), rank, world_size)
    if not batches:
        return summary

    import diffusers
    import torch

    from sweeper import __version__, pipelines
    from sweeper.render import render_batch
    from sweeper.store import png_bytes, write_atomic

    pipelines.check_scheduler_classes(prepared.todo)
    out_dir = Path(out_dir)
    versions = {"sweeper": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    facts = dict(rank=rank, world_size=world_size, host=socket.gethostname(), **versions)
    writer = BackgroundWriter()
    total = sum(len(batch.specs) for batch in batches)
    with progress or progress_bar(total, disable=rank != 0) as progress:
        for batch in batches:
            device = f"cuda:{gpu}" if batch.specs[0].device == "cuda" else batch.specs[0].device
            started = dt.datetime.now(dt.timezone.utc)
            tic = time.perf_counter()
            try:
                faults.before_render(batch.specs)
                images, error = render_batch(batch, device), None
            except Exception as exc:  # one failing batch must not stop the sweep
                images, error = None, f"{type(exc).__name__}: {exc}".splitlines()[0][:500]
            seconds = (time.perf_counter() - tic) / len(batch.specs)
            finished = dt.datetime.now(dt.timezone.utc)
            timing = dict(seconds=seconds, started_at=started, finished_at=finished, batch_size=len(batch.specs), device=device)

            def store(batch=batch, images=images, error=error, timing=timing) -> None:
                rows = []
                for index, spec in enumerate(batch.specs):
                    path = image_path(spec)
                    if images is not None:
                        write_atomic(out_dir / path, png_bytes(images[index], spec, versions))
                        faults.event("png")
                    status = "ok" if images is not None else "error"
                    rows.append(manifest.row(spec, path, status, error, batch_index=index, **timing, **facts))
                manifest.write_part(out_dir, rows)
                faults.event("part")

            writer.submit(store)
            if error is None:
                summary.rendered += len(batch.specs)
            else:
                summary.failed.extend((spec.image_id, error) for spec in batch.specs)
                progress.write(f"sweeper: a batch of {len(batch.specs)} failed: {error}")
            progress.update(len(batch.specs))
    writer.close()
    return summary


class Progress(Protocol):
    def update(self, n: int) -> None: ...
    def write(self, message: str) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...


def progress_bar(total: int, disable: bool = False):
    from tqdm import tqdm

    return tqdm(total=total, unit="img", desc="sweeper", disable=disable, dynamic_ncols=True)
