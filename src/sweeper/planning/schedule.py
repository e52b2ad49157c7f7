"""Schedule: image specs -> batches -> the share of each rank.

Images that can share a forward pass (same model, refiner, scheduler, steps,
size, guidance, size conditioning, dtype) are batched across jobs. Batches
are ordered so that the costly switches happen least often: model outermost,
then refiner, then scheduler. Ranks take batches by estimated cost (largest
first onto the least loaded rank); the assignment is deterministic, so every
rank computes the same one on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

from sweeper.planning import hires
from sweeper.planning.schedulers import TWO_CALLS_PER_STEP
from sweeper.planning.spec import ALL_PER_IMAGE_FIELDS, EXECUTION_FIELDS, ID_FIELDS, ImageSpec
from sweeper.rendering import families
from sweeper.rendering.tiny import tiny_models

_SHARED_FIELDS = tuple(name for name in ID_FIELDS if name not in ALL_PER_IMAGE_FIELDS) + EXECUTION_FIELDS
# VAE decode of an image costs about 1.55 UNet forwards of it (10.5 vs 6.76 TFLOP for SDXL).
DECODE_FORWARDS = 1.55
# Rough seconds per cost unit (pixel x UNet forward) for the estimate printed before a sweep.
SECONDS_PER_UNIT = {
    ("tiny", "cpu"): 6e-7,
    ("tiny", "cuda"): 1e-7,
    ("tiny", "mps"): 3e-7,
    ("full", "cpu"): 3e-6,
    ("full", "cuda"): 3e-8,
    ("full", "mps"): 3e-7,
}


@dataclass(frozen=True)
class Batch:
    specs: tuple[ImageSpec, ...]

    @property
    def cost(self) -> float:
        return sum(cost(spec) for spec in self.specs)


# Schedulers that call the UNet twice per step (second order, or an SDE step with a midpoint).


def cost(spec: ImageSpec) -> float:
    """Estimated work for one image: pixels x UNet forwards (CFG doubles them), plus the decode."""
    # img2img and inpaint skip the first 1 - strength of the steps.
    steps = spec.steps if spec.strength is None else max(1, int(spec.steps * spec.strength))
    if spec.refiner_mode == "img2img":
        steps += spec.steps * (1 - spec.refiner_split)
    calls = (2 if spec.scheduler_class in TWO_CALLS_PER_STEP else 1) * (2 if families.uses_cfg(spec) else 1)
    if spec.hires_scale is not None:  # the second pass at the larger size (and the first's decode, encode for lanczos: ignored)
        width, height = hires.size(spec, families.get(spec.family).size_multiple)
        return spec.width * spec.height * steps * calls + width * height * (spec.hires_steps * calls + DECODE_FORWARDS)
    return spec.width * spec.height * (steps * calls + DECODE_FORWARDS)


# What a run pays before its first image: importing torch and diffusers, then loading each model.
STARTUP_SECONDS = 8.0
LOAD_SECONDS = {"tiny": 1.0, "full": 20.0}


def startup_seconds(specs: Iterable[ImageSpec]) -> float:
    """Seconds before the first image: imports, and a load per model (and refiner)."""
    models = {(spec.model_id, spec.refiner_id) for spec in specs}
    if not models:
        return 0.0
    return STARTUP_SECONDS + sum(
        LOAD_SECONDS["tiny" if model in tiny_models() else "full"] for pair in models for model in pair if model is not None
    )


def estimate_seconds(specs: Iterable[ImageSpec], seconds_per_unit: float | None = None) -> float:
    """Seconds to render `specs` on one device; `seconds_per_unit` if measured, else the table."""
    seconds: dict[tuple, float] = {}  # per kind of image: 100k specs are a handful of kinds
    total = 0.0
    for spec in specs:
        kind = (spec.model_id, spec.device, spec.scheduler_class, spec.steps, spec.strength, spec.guidance, spec.width, spec.height, spec.refiner_mode, spec.refiner_split,
                spec.hires_scale, spec.hires_steps, spec.hires_denoise)
        if kind not in seconds:
            rate = seconds_per_unit or SECONDS_PER_UNIT[("tiny" if spec.model_id in tiny_models() else "full", spec.device)]
            seconds[kind] = cost(spec) * rate
        total += seconds[kind]
    return total


def auto_batch_size(spec: ImageSpec) -> int:
    """Images per forward when batch_size=auto: as many as a pixel budget allows, 1 to 16."""
    budget = 2**23 if spec.device == "cuda" else 2**16
    width, height = hires.size(spec, families.get(spec.family).size_multiple)  # the hires fix's second pass is the larger
    return max(1, min(16, budget // (width * height)))


def _switch_levels(spec: ImageSpec) -> tuple[tuple, tuple, tuple]:
    model = (spec.model_id, spec.model_revision, spec.family, spec.dtype, spec.device)
    refiner = (spec.refiner_id, spec.refiner_revision)
    scheduler = (spec.scheduler_class, spec.scheduler_kwargs)
    return model, refiner, scheduler


def load_key(spec: ImageSpec) -> tuple:
    """The models a spec needs loaded (base and refiner): switching them is the costly switch."""
    model, refiner, _ = _switch_levels(spec)
    return model, refiner


def batch_key(spec: ImageSpec) -> tuple:
    """What must be equal for two images to share one pipeline call."""
    shared = tuple(getattr(spec, name) for name in _SHARED_FIELDS)
    # A None prompt (diffusers' default) cannot sit in a list beside strings.
    present = tuple(getattr(spec, name) is None for name in ("negative_prompt", "prompt_2", "negative_prompt_2"))
    return shared + present


def make_batches(specs: Sequence[ImageSpec]) -> list[Batch]:
    """Group specs that can share a forward and chunk them by batch size, in the order that
    shows the whole grid early.

    Model and refiner loads are the costly switches: each model (and its refiner)
    comes once, in the order first seen. Within it, batches take turns among the
    groups (schedulers, guidances, sizes...), and each group renders its images'
    first seeds first: the first batches cover every cell of the grid with its
    first seed, then its second, and so on. Batches stay full: only a group's last is smaller.
    """
    groups: dict[tuple, list[ImageSpec]] = {}
    for spec in specs:
        groups.setdefault(batch_key(spec), []).append(spec)
    loads: dict[tuple, int] = {}
    for spec in specs:
        loads.setdefault(load_key(spec), len(loads))
    blocks: dict[int, list[list[Batch]]] = {}
    for group in groups.values():
        size = group[0].batch_size or auto_batch_size(group[0])
        ordered = _by_seed_turn(group)
        blocks.setdefault(loads[load_key(group[0])], []).append([Batch(tuple(ordered[i : i + size])) for i in range(0, len(ordered), size)])
    batches = []
    for block in (blocks[number] for number in sorted(blocks)):
        for turn in range(max(len(chunks) for chunks in block)):
            batches.extend(chunks[turn] for chunks in block if turn < len(chunks))
    return batches


def _by_seed_turn(group: list[ImageSpec]) -> list[ImageSpec]:
    """The group's specs, every prompt (and init image) with its first seed first, then its second..."""
    seen: dict[tuple, int] = {}
    turns = []
    for spec in group:
        row = (spec.job_num, spec.prompt, spec.negative_prompt, spec.prompt_2, spec.negative_prompt_2, spec.init_image_sha, spec.mask_image_sha)
        turns.append(seen.get(row, 0))
        seen[row] = turns[-1] + 1
    return [spec for _, spec in sorted(zip(turns, group), key=lambda pair: pair[0])]


def shard(batches: Sequence[Batch], rank: int, world_size: int) -> list[Batch]:
    """The batches of `rank`: balanced by cost, in schedule order, the same on every rank."""
    if world_size == 1:
        return list(batches)
    loads = [0.0] * world_size
    owner = {}
    for index in sorted(range(len(batches)), key=lambda i: (-batches[i].cost, i)):
        target = min(range(world_size), key=lambda r: (loads[r], r))
        loads[target] += batches[index].cost
        owner[index] = target
    return [batch for index, batch in enumerate(batches) if owner[index] == rank]
