"""Run: plan every job, say what will happen, render what is not done yet.

    prepare(jobs, out_dir)  -> Prepared   plan + checks + resume; no files, no torch
    announce(prepared)                    the image count and an estimated time
    execute(prepared, ...)  -> Summary    render batches, store PNGs and manifest parts

The Hydra entry point (app.py), the sweeper plugin and the launcher plugin
all go through these three steps.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import os
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

from sweeper.rendering import devices
from sweeper.launching import distributed
from sweeper import hub
from sweeper.planning import schedule
from sweeper.rendering.calls import render_backing_off, store, store_errors
from sweeper.errors import DeviceFailed, Interrupted, PlanError, StorageError, UnsafePath
from sweeper.storing.files import check_sweep_dir
from sweeper.storing.writers import CLAIM_STALE_SECONDS, Claims
from sweeper.planning.plan import Job, plan
from sweeper.rendering.runtime import Runtime, this_process
from sweeper.planning.spec import ImageSpec

# manifest (pyarrow), store (numpy, PIL) and torch are imported where used:
# planning a sweep needs none of them.

@dataclass
class Prepared:
    jobs: int
    specs: list[ImageSpec]
    todo: list[ImageSpec]
    dry_run: bool
    random_nonce: int = 0  # what seed=random:N drew from; kept in the plan file for the next command
    scoring: Any = None  # scoring.models.Scoring of `score=[...]`, or None: not part of the specs (it changes no pixel)

    @property
    def done(self) -> int:
        return len(self.specs) - len(self.todo)

    def only(self, todo_ids: Sequence[str]) -> Prepared:
        """The same plan with another view of what is still to do (rank 0's, under several ranks)."""
        keep = set(todo_ids)
        return Prepared(self.jobs, self.specs, [spec for spec in self.specs if spec.image_id in keep], self.dry_run, self.random_nonce, self.scoring)


@dataclass
class Summary:
    rendered: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)


def prepare(
    jobs: Sequence[Job], out_dir: Path, processes: int = 1, processes_per_gpu: int = 1, auto_device: str | None = None, devices_here: bool = True,
    runtime: Runtime | None = None,
) -> Prepared:
    """Plan and check every job, and find what `out_dir` already holds. Raises PlanError, UnsafePath.

    `processes` (and `processes_per_gpu`) are the workers the launcher will spawn
    here: check_devices refuses more than the GPUs can take. A launcher whose
    workers run elsewhere (SLURM) says what `device: auto` means there and that
    this machine's devices are not the ones to check (`devices_here=False`).
    Seeds of -1 come from `runtime`'s seed nonce (this process's runtime by default).
    """
    _check_writable(Path(out_dir))
    check_sweep_dir(Path(out_dir))
    seed_nonce = (runtime or this_process()).seed_nonce
    random_nonce = recorded_nonce(Path(out_dir))
    random_nonce = seed_nonce if random_nonce is None else random_nonce
    specs = plan(jobs, auto_device or devices.auto_device(), seed_nonce, random_nonce)
    if devices_here:
        check_devices(specs, processes, processes_per_gpu)
    to_check = set()
    for model_id, revision, refiner_id, refiner_revision, config in {(s.model_id, s.model_revision, s.refiner_id, s.refiner_revision, s.model_config) for s in specs}:
        to_check.add(("model.id", model_id, revision))
        if refiner_id:
            to_check.add(("refiner.id", refiner_id, refiner_revision))
        if config:
            to_check.add(("model.config", config, None))
    for key, model_id, revision in sorted(to_check, key=str):
        hub.check_available(key, model_id, revision)
    scoring = _scoring(jobs)
    done = set()
    if Path(out_dir).is_dir():
        from sweeper.storing import manifest

        done = manifest.done_ids(out_dir)
    todo = [spec for spec in specs if spec.image_id not in done]
    dry_run = any(bool(job.config.get("dry_run")) for job in jobs)
    return Prepared(jobs=len(jobs), specs=specs, todo=todo, dry_run=dry_run, random_nonce=random_nonce, scoring=scoring)


def _scoring(jobs: Sequence[Job]) -> Any:
    """The sweep's `score` and `scorer` (one for all its jobs), its models checked to be here; None when off."""
    from sweeper.scoring import models

    found = {models.scoring(job.config) for job in jobs}
    if len(found) > 1:
        raise PlanError("invalid score/scorer: the jobs of one sweep differ in them; scores do not change the images, so score a sweep once per scorer")
    scoring = found.pop() if found else None
    if scoring is not None:
        models.check_available(scoring)
    return scoring


def check_devices(specs: Sequence[ImageSpec], processes: int = 1, processes_per_gpu: int = 1) -> None:
    """Refuse, before anything loads, devices this machine cannot give the processes that will render.

    `processes`: workers this command spawns (1 under `accelerate launch`, whose
    ranks are counted from its environment). Raises PlanError (one line).
    """
    if isinstance(processes_per_gpu, bool) or not isinstance(processes_per_gpu, int) or processes_per_gpu < 1:
        raise PlanError(f"invalid hydra.launcher.processes_per_gpu={processes_per_gpu!r}: must be an integer >= 1")
    ranks, local = (distributed.world_size(), distributed.local_world_size()) if distributed.launched() else (processes, processes)
    for device, gpu in sorted({(spec.device, spec.gpu) for spec in specs}, key=str):
        if device != "cuda":
            continue
        shown = "cuda" if gpu is None else f"cuda:{gpu}"
        problem = devices.cuda_problem(gpu)
        if problem:
            raise PlanError(f"invalid device={shown}: {problem}")
        if gpu is not None and ranks > 1:
            raise PlanError(f"invalid device={shown}: it pins one GPU, but {ranks} processes render; use device=cuda (each process takes its own GPU)")
        gpus = devices.usable_gpus()
        if gpu is None and local > gpus * processes_per_gpu:
            raise PlanError(
                f"{local} processes would render on this machine's {gpus} GPU(s); start at most {gpus * processes_per_gpu}, "
                "or share GPUs on purpose with hydra.launcher.processes_per_gpu=N"
            )


PLAN_FILE = "plan.parquet"


def write_plan(prepared: Prepared, out_dir: Path) -> None:
    """Every image the sweep asks for, as a table of specs in the sweep dir: what is still
    to do is the plan less the manifest (the report says it)."""
    from sweeper.storing.files import write_atomic

    write_atomic(Path(out_dir) / PLAN_FILE, plan_bytes(prepared))


def plan_bytes(prepared: Prepared) -> bytes:
    """The plan file's bytes: the same plan gives the same bytes (a SLURM array knows its plan by their hash)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [dict(spec.to_dict(), image_id=spec.image_id) for spec in prepared.specs]
    table = pa.Table.from_pylist(rows)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), _NONCE_KEY: str(prepared.random_nonce).encode()})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


_NONCE_KEY = b"sweeper.random_nonce"


def recorded_nonce(out_dir: Path) -> int | None:
    """The nonce the sweep dir's seed=random:N seeds were drawn from (in its plan file), so the same
    command draws the same seeds again and resumes; None in a dir without one."""
    path = out_dir / PLAN_FILE
    if not path.is_file() or path.is_symlink():
        return None
    import pyarrow.parquet as pq

    try:
        value = (pq.read_schema(path).metadata or {}).get(_NONCE_KEY, b"")
    except (OSError, ValueError) as error:  # pyarrow's errors are both
        print(f"sweeper: warning: cannot read {path} ({error}): seed=random:N draws new seeds", file=sys.stderr, flush=True)
        return None
    return int(value) % 2**32 if value.isdigit() and len(value) <= 20 else None


def _check_writable(out_dir: Path) -> None:
    """Refuse an output dir that cannot be made or written, before anything renders."""
    existing = out_dir.absolute()
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        reason = "is not a directory" if not existing.is_dir() else "is not writable"
        raise PlanError(f"invalid output dir {out_dir}: {existing} {reason}")


# The keys a sweep can vary, in the order the start line and the report's page name them (seed last).
AXES = (
    "prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "prompt_3", "negative_prompt_3", "prompt_syntax", "init_image", "mask_image", "model",
    "refiner", "refiner_split", "refiner_mode", "scheduler", "mode", "strength", "hires_scale", "hires_denoise", "hires_steps",
    "hires_upscaler", "guidance", "true_cfg", "guidance_rescale", "steps", "max_sequence_length",
    "shift", "dynamic_shift", "sigmas", "clip_skip", "slg_layers", "slg_scale", "slg_start", "slg_stop", "width", "height",
    "original_size", "target_size", "crops_coords_top_left", "negative_original_size", "negative_target_size",
    "negative_crops_coords_top_left", "dtype", "watermark", "safety_checker", "vae_tiling", "lora", "lora_scale", "vae", "embeddings", "subseed_strength", "subseed", "seed",
)


def axes(specs: Sequence[ImageSpec]) -> str:
    """`prompt (2) x guidance (3) x seed (3) = 18 images`: the keys that vary and how many values each has.

    Keys that vary together (zipped, or set per CSV row) are joined: `scheduler+steps (2)`.
    A prompt split at a comma by Hydra shows here, before anything renders.
    """
    values = {name: [getattr(spec, name) for spec in specs] for name in AXES}
    counts = {name: len(set(column)) for name, column in values.items()}
    varying = [name for name in AXES if counts[name] > 1]
    groups: list[list[str]] = []
    for name in varying:
        for group in groups:
            if counts[group[0]] == counts[name] == len(set(zip(values[group[0]], values[name]))):  # one to one
                group.append(name)
                break
        else:
            groups.append([name])
    product = 1
    for group in groups:
        product *= counts[group[0]]
    total = _count(len(specs), "image")
    if not groups:
        return total
    text = " x ".join(f"{'+'.join(group)} ({counts[group[0]]})" for group in groups)
    return f"{text} = {total}" if product == len(specs) else f"{text}: {total}"


# Sigma schedules that crowd the low-noise end: where they cut, only the render knows.
_SIGMA_OPTIONS = ("use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas")


def notes(specs: Sequence[ImageSpec]) -> list[str]:
    """What the user should know before rendering: refiner splits that cut the schedule
    in the same place render the same pictures under different ids."""
    from collections import defaultdict

    from sweeper.planning.validate import split_steps

    splits: dict[tuple, set[float]] = defaultdict(set)
    for steps, mode, split, kwargs in {(s.steps, s.refiner_mode, s.refiner_split, s.scheduler_kwargs) for s in specs if s.refiner_id}:
        options = json.loads(kwargs)
        if mode == "ensemble" and any(options.get(name) for name in _SIGMA_OPTIONS):
            continue
        spacing = options.get("timestep_spacing", "leading")
        splits[(steps, mode, spacing, split_steps(steps, split, mode, spacing))].add(split)
    return [
        f"refiner.split {' and '.join(f'{s:g}' for s in sorted(same))} give the base the same {cut[0]} and the refiner the same "
        f"{cut[1]} of {steps} steps (refiner.mode={mode}): the same pictures under {len(same)} image ids"
        for (steps, mode, _, cut), same in sorted(splits.items(), key=str)
        if len(same) > 1
    ]


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def announce(prepared: Prepared, out_dir: Path) -> None:
    seconds = schedule.startup_seconds(prepared.todo) + schedule.estimate_seconds(prepared.todo)
    message = (
        f"sweeper: {axes(prepared.specs)} from {_count(prepared.jobs, 'job')} into {out_dir}: "
        f"{prepared.done} already done, {len(prepared.todo)} to render"
    )
    if prepared.todo:
        message += f", estimated {dt.timedelta(seconds=round(seconds))} on {prepared.todo[0].device}"
    print(message, file=sys.stderr, flush=True)
    for note in notes(prepared.specs):
        print(f"sweeper: note: {note}", file=sys.stderr, flush=True)
    if prepared.dry_run:
        print("sweeper: dry_run=true: stopping before rendering", file=sys.stderr, flush=True)
    elif not prepared.todo:
        print("sweeper: nothing to render: every image is already in the manifest", file=sys.stderr, flush=True)


def execute(
    prepared: Prepared, out_dir: Path, rank: int = 0, world_size: int = 1, gpu: int = 0, progress: Progress | None = None, stop: Any = None,
    runtime: Runtime | None = None,
) -> Summary:
    """Render this rank's share of what is not done; store PNGs and manifest parts.

    `gpu` is the CUDA device index of this rank when the specs ask for cuda
    (device=cuda:N pins it). `progress` counts images; by default a tqdm bar on rank 0.
    `stop` (with `is_set()`) ends the work after the batch in flight; by default
    Ctrl-C sets it (a second Ctrl-C stops at once). Raises Interrupted then, with
    everything rendered so far stored; DeviceFailed when a CUDA error leaves this
    process unable to render on: its images not rendered are error rows by then.
    The pipelines are `runtime`'s (this process's runtime by default): loaded once, kept for later calls.
    """
    summary = Summary()
    batches = schedule.shard(schedule.make_batches(prepared.todo), rank, world_size)
    if not batches:
        _score_earlier(prepared, Path(out_dir), rank, world_size, gpu, progress)
        return summary

    import diffusers
    import torch

    from sweeper import __version__
    from sweeper.storing import manifest
    from sweeper.rendering import pipelines
    from sweeper.scoring.sweep import AfterEachCall
    from sweeper.storing.store import BackgroundWriter

    pipelines.check_scheduler_classes(prepared.todo)
    runtime = runtime or this_process()
    out_dir = Path(out_dir)
    versions = {"sweeper": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    facts = dict(rank=rank, world_size=world_size, host=socket.gethostname(), **versions)
    writer, parts, claims = BackgroundWriter(), manifest.PartWriter(out_dir), Claims(out_dir)
    scorer = AfterEachCall(prepared.scoring, out_dir)
    threads = torch.get_num_threads()  # on the CPU, pixels depend on it (replay repeats it)
    total = sum(len(batch.specs) for batch in batches)
    left_out: list[ImageSpec] = []  # claimed by another writer
    with progress or progress_bar(total, disable=rank != 0) as progress, _storage_errors(out_dir), _ctrl_c(progress, stop) as stop:
        for number, batch in enumerate(batches):
            if stop.is_set():
                _drain(writer, parts, scorer)
                raise Interrupted(out_dir, len(prepared.specs))
            mine = claims.take(batch.specs)  # another writer may have rendered or claimed some since the plan
            if len(mine) < len(batch.specs):
                left_out.extend(spec for spec in batch.specs if spec not in mine)
                progress.update(len(batch.specs) - len(mine))
                if not mine:
                    continue
                batch = schedule.Batch(tuple(mine))
            device = render_device(batch.specs[0], gpu)
            for done in render_backing_off(batch, device, progress, runtime):
                writer.submit(lambda done=done: store(done, out_dir, versions, dict(facts, device=device), threads, parts, claims))
                scorer.add(done, device, progress)
                for spec, error in zip(done.batch.specs, done.errors):
                    if error is None:
                        summary.rendered += 1
                    else:
                        summary.failed.append((spec.image_id, error))
                if done.batch_error:
                    progress.write(f"sweeper: a batch of {len(done.batch.specs)} failed: {done.batch_error}")
                progress.update(len(done.batch.specs))
                if done.fatal:
                    rest = [spec for later in batches[number + 1 :] for spec in later.specs]
                    reason = f"not rendered: rank {rank} stopped after a CUDA error ({done.batch_error})"
                    writer.submit(lambda: store_errors(rest, reason, out_dir, dict(facts, device=device)))
                    _drain(writer, parts, scorer)
                    summary.failed.extend((spec.image_id, reason) for spec in rest)
                    raise DeviceFailed(
                        f"rank {rank} on {device}: {done.batch_error}; the CUDA context cannot be used any more, so this process "
                        f"stopped ({len(rest) + len(done.batch.specs)} image(s) recorded as errors); run the same command again to render them"
                    )
        _drain(writer, parts, scorer)
        holders = claims.held_by_others(left_out)
        if holders:
            progress.write(
                f"sweeper: {len(holders)} image(s) were left to another writer that claims them ({holders[0]}) and are not stored yet; "
                f"once it is done, or its claims are {CLAIM_STALE_SECONDS // 60} min old, the same command renders what is missing"
            )
        _score_earlier(prepared, out_dir, rank, world_size, gpu, progress)
    return summary


def _drain(writer: Any, parts: Any, scorer: Any) -> None:
    """Every PNG written, then every row in a part file, then every score."""
    writer.close()
    parts.close()
    scorer.close()


def _score_earlier(prepared: Prepared, out_dir: Path, rank: int, world_size: int, gpu: int, progress: Progress | None) -> None:
    """After rendering, `score=[...]`: what earlier runs stored unscored (scoring/sweep.py), then merge the scores."""
    if prepared.scoring is None or not out_dir.is_dir():
        return
    from sweeper.scoring.sweep import score_earlier

    say = progress.write if progress is not None else lambda text: print(text, file=sys.stderr, flush=True)
    score_earlier(prepared.scoring, prepared.specs, prepared.todo, out_dir, rank, world_size, render_device(prepared.specs[0], gpu), say)


@contextlib.contextmanager
def _ctrl_c(progress: Progress, stop: Any) -> Iterator[Any]:
    """`stop`, or an event that the first Ctrl-C sets (the second one interrupts at once)."""
    if stop is not None or threading.current_thread() is not threading.main_thread():
        yield stop or threading.Event()
        return
    event = threading.Event()

    def first(signum: int, frame: Any) -> None:
        event.set()
        signal.signal(signal.SIGINT, previous)
        progress.write("sweeper: stopping after the batch in flight (Ctrl-C again to stop at once)")

    previous = signal.signal(signal.SIGINT, first)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)


def render_device(spec: ImageSpec, gpu: int) -> str:
    """The torch device a spec renders on: its pinned GPU (device=cuda:N), else this rank's."""
    if spec.device != "cuda":
        return spec.device
    import torch

    device = f"cuda:{gpu if spec.gpu is None else spec.gpu}"
    torch.cuda.set_device(device)  # what allocates without a device (cuBLAS handles, caches) goes there too
    return device


@contextlib.contextmanager
def _storage_errors(out_dir: Path) -> Iterator[None]:
    try:
        yield
    except (OSError, UnsafePath) as error:
        raise StorageError(
            f"cannot write into {out_dir}: {getattr(error, 'strerror', None) or error}; what was stored so far is kept, "
            "run the same command again once it is writable"
        ) from error


class Progress(Protocol):
    def update(self, n: int) -> None: ...
    def write(self, message: str) -> None: ...
    def __enter__(self) -> Progress: ...
    def __exit__(self, *exc: object) -> None: ...


def progress_bar(total: int, disable: bool = False) -> Progress:
    from tqdm import tqdm

    class StderrBar(tqdm):
        """tqdm writes its messages to stdout; ours belong beside the bar, on stderr."""

        @classmethod
        def write(cls, s: str, file=None, end: str = "\n", nolock: bool = False) -> None:
            super().write(s, file=file or sys.stderr, end=end, nolock=nolock)

    return StderrBar(total=total, unit="img", desc="sweeper", disable=disable, dynamic_ncols=True)
