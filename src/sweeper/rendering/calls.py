"""Calls: one batch's pipeline call, retried in halves out of memory, and its outcome stored.

    render_backing_off(batch, ...) -> [Rendered]   PNG-ready arrays, or the error of each image
    store(done, ...)                                PNGs, then manifest rows (on a writer thread):
                                                    encode (PNG bytes, rows), then write them
    store_errors(specs, ...)                        error rows for images that will not render here

torch, the pipelines and the store are imported where used: run.py imports this to plan too.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from sweeper import faults
from sweeper.planning import schedule
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.runtime import Runtime


@dataclass
class Rendered:
    """One pipeline call's outcome: an array per image, or the error of the whole call."""

    batch: schedule.Batch
    arrays: Any  # (N, H, W, 3) floats, or None when the call failed
    nsfw: list[bool] | None  # the safety checker's verdicts, when one ran
    batch_error: str | None
    errors: list[str | None]  # per image: the call's error, or NaN in its output
    warnings: list[str | None]  # per image: all black, a prompt cut at 77 tokens
    started_at: dt.datetime
    finished_at: dt.datetime
    seconds: float  # per image
    steps: tuple[int | None, int | None, int | None] = (None, None, None)  # (base, refiner, hires fix) steps that really ran
    fatal: bool = False  # a CUDA error that leaves the process unable to render on
    load_seconds: float | None = None  # models loaded for this call, apart from `seconds`
    warmup_seconds: float | None = None  # the throwaway warm-up call before it, apart from `seconds`


@dataclass
class _Attempt:
    """What one pipeline call gave: its output, or what went wrong (no exception object:
    its traceback would keep the failed call's tensors alive through a retry)."""

    output: Any = None
    failure: str | None = None  # None, "oom", "fatal" or "error"
    message: str | None = None


SAFETY_WARNING = "flagged by the safety checker"
# Allocation failures that torch reports as a RuntimeError, not as OutOfMemoryError.
_OOM_MARKERS = ("out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED", "CUDNN_STATUS_NOT_ENOUGH_MEMORY")
# CUDA errors after which the process's CUDA context is unusable (every later call fails).
_FATAL_MARKERS = ("illegal memory access", "device-side assert", "unspecified launch failure", "illegal instruction", "misaligned address", "uncorrectable ECC")


def _attempt(batch: schedule.Batch, device: str, runtime: Runtime) -> _Attempt:
    import torch

    from sweeper.rendering.render import render_batch

    try:
        faults.before_render(batch.specs)
        output = render_batch(batch, device, runtime)
        faults.after_render(batch.specs, output.images)
        return _Attempt(output)
    except Exception as exc:  # one failing batch must not stop the sweep
        text = str(exc)
        if isinstance(exc, torch.cuda.OutOfMemoryError) or any(marker in text for marker in _OOM_MARKERS):
            return _Attempt(failure="oom", message=_one_line(exc))
        if type(exc).__name__ == "AcceleratorError" or any(marker in text for marker in _FATAL_MARKERS):
            return _Attempt(failure="fatal", message=_one_line(exc))
        return _Attempt(failure="error", message=_one_line(exc))


def render_backing_off(batch: schedule.Batch, device: str, progress: Any, runtime: Runtime) -> list[Rendered]:
    """Render a batch; out of memory, restore the pipelines and retry the halves, down to one image."""
    from sweeper.rendering import pipelines
    from sweeper.storing.store import problem

    started, tic = dt.datetime.now(dt.timezone.utc), time.perf_counter()
    attempt = _attempt(batch, device, runtime)
    if attempt.failure in ("oom", "error"):
        pipelines.restore(runtime, batch.specs[0], device)  # the failed call's tensors are gone with its frames
    if attempt.failure == "oom" and len(batch.specs) > 1:
        half = len(batch.specs) // 2
        progress.write(f"sweeper: out of memory with {len(batch.specs)} images per call; retrying with {half}")
        halves = (schedule.Batch(batch.specs[:half]), schedule.Batch(batch.specs[half:]))
        return [done for part in halves for done in render_backing_off(part, device, progress, runtime)]
    elapsed = time.perf_counter() - tic
    finished = dt.datetime.now(dt.timezone.utc)
    count = len(batch.specs)
    if attempt.failure is not None:
        return [Rendered(batch, None, None, attempt.message, [attempt.message] * count, [None] * count, started, finished, elapsed / count,
                         fatal=attempt.failure == "fatal")]
    output = attempt.output
    problems = [problem(array) for array in output.images]
    flagged = [SAFETY_WARNING if verdict else None for verdict in output.nsfw or [False] * count]
    warnings = ["; ".join(w for w in found if w) or None for found in zip([w for _, w in problems], output.warnings, flagged)]
    errors = [image_error for image_error, _ in problems]
    steps = (output.base_steps, output.refiner_steps, output.hires_steps)
    # Render time: a model load and a warm-up call are not the images' cost.
    seconds = (elapsed - (output.load_seconds or 0.0) - (output.warmup_seconds or 0.0)) / count
    return [Rendered(batch, output.images, output.nsfw, None, errors, warnings, started, finished, seconds, steps,
                     load_seconds=output.load_seconds, warmup_seconds=output.warmup_seconds)]


def _one_line(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}".splitlines()[0][:500]


@dataclass
class Encoded:
    """A call's outcome as it lands in the sweep dir: files (path in the sweep dir, bytes, durable) and manifest rows."""

    specs: tuple[ImageSpec, ...]
    files: list[tuple[str, bytes, bool]]
    rows: list[dict[str, Any]]


def encode(done: Rendered, versions: dict[str, str], facts: dict[str, Any], threads: int) -> Encoded:
    """PNGs of the good images (and their thumbnails for the report), and the call's manifest rows."""
    from sweeper.storing import manifest
    from sweeper.storing.store import call_record, image_path, needs_thumbnail, png_bytes, thumbnail_bytes, thumbnail_path, to_image

    call = call_record(done.batch.specs, threads)
    files, rows = [], []
    timing = dict(seconds=done.seconds, started_at=done.started_at, finished_at=done.finished_at, batch_size=len(done.batch.specs),
                  base_steps=done.steps[0], refiner_steps=done.steps[1], load_seconds=done.load_seconds, warmup_seconds=done.warmup_seconds)
    if done.steps[2] is not None:  # left out unset, as the hires fields are: other sweeps' rows and PNGs stay as they were
        timing["hires_pass_steps"] = done.steps[2]
    for index, spec in enumerate(done.batch.specs):
        path = image_path(spec)
        error = done.errors[index]
        nsfw = None if done.nsfw is None else done.nsfw[index]
        row = manifest.row(spec, path, "ok" if error is None else "error", error, warning=done.warnings[index], nsfw=nsfw, batch_index=index, **timing, **facts)
        if error is None:
            image = to_image(done.arrays[index])
            files.append((path, png_bytes(image, spec, versions, row, call), True))
            if needs_thumbnail(spec.width, spec.height):  # for the report, made while the device renders on
                files.append((thumbnail_path(spec.image_id), thumbnail_bytes(image), False))
        rows.append(row)
    return Encoded(done.batch.specs, files, rows)


def write(encoded: Encoded, out_dir: Path, parts: Any, claims: Any) -> None:
    """The files, then the rows to `parts`, then the claims go (on a writer thread)."""
    from sweeper.storing.files import write_atomic

    for path, data, durable in encoded.files:
        write_atomic(out_dir / path, data, durable=durable, root=out_dir)
        if durable:
            faults.event("png")
    parts.add(encoded.rows)
    claims.release(encoded.specs)


def store(done: Rendered, out_dir: Path, versions: dict[str, str], facts: dict[str, Any], threads: int, parts: Any, claims: Any) -> None:
    """PNGs of the good images, then the call's manifest rows to `parts`, then the claims go (on a writer thread)."""
    write(encode(done, versions, facts, threads), out_dir, parts, claims)


def store_errors(specs: Sequence[ImageSpec], error: str, out_dir: Path, facts: dict[str, Any]) -> None:
    """Error rows for images that will not be rendered here, so the summary and a re-run know."""
    from sweeper.storing import manifest
    from sweeper.storing.store import image_path

    if specs:
        manifest.write_part(out_dir, [manifest.row(spec, image_path(spec), "error", error, **facts) for spec in specs])
