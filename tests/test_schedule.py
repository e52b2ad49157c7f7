"""schedule.py: specs -> batches -> per-rank shards, and the time estimate."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from conftest import REFINERS, SCHEDULERS, plan_config

from sweeper.planning.plan import Job, plan
from sweeper.planning.spec import ImageSpec
from sweeper.planning.schedule import (
    DECODE_FORWARDS,
    SECONDS_PER_UNIT,
    Batch,
    auto_batch_size,
    cost,
    estimate_seconds,
    make_batches,
    shard,
)

def specs_of(*configs: dict, auto_device: str = "cpu") -> list[ImageSpec]:
    return plan([Job(n, c) for n, c in enumerate(configs)], auto_device=auto_device)


def shared_fields(spec: ImageSpec) -> tuple:
    """Everything that must be equal inside one pipeline call."""
    return (
        spec.model_id, spec.model_revision, spec.family, spec.refiner_id, spec.refiner_split, spec.refiner_mode,
        spec.scheduler_class, spec.scheduler_kwargs, spec.steps, spec.guidance, spec.width, spec.height,
        spec.original_size, spec.target_size, spec.crops_coords_top_left, spec.negative_original_size,
        spec.negative_target_size, spec.negative_crops_coords_top_left, spec.dtype, spec.device, spec.mode,
        spec.negative_prompt is None, spec.prompt_2 is None, spec.negative_prompt_2 is None, spec.batch_size,
    )


def runs(values: list) -> int:
    """How many runs of equal neighbours: the number of switches + 1."""
    return sum(1 for _ in itertools.groupby(values))


# --- make_batches --------------------------------------------------------------------------------


def test_batches_never_mix_what_must_be_shared_and_hold_every_spec_once():
    configs = [
        plan_config(model=model, scheduler=scheduler, steps=steps, guidance=guidance, width=width,
               prompt=["a", "b"], seed=[0, 1, 2], negative_prompt=negative)
        for model, scheduler, steps, guidance, width, negative in itertools.product(
            ["tiny", "tiny-sd"], ["euler", "ddim", "dpmpp_2m_karras"], [2, 3], [1.5, 5.0], [64, 128], [None, "blurry"]
        )
    ]
    configs += [plan_config(original_size=[128, 128], seed=[0, 1]), plan_config(crops_coords_top_left=[8, 8], seed=[0, 1])]
    configs += [plan_config(dtype="bfloat16", seed=[0, 1]), plan_config(refiner="tiny", seed=[0, 1])]
    specs = specs_of(*configs)
    batches = make_batches(specs)
    assert Counter(s.image_id for b in batches for s in b.specs) == Counter(s.image_id for s in specs)
    assert sum(len(b.specs) for b in batches) == len(specs) == 2 * 3 * 2 * 2 * 2 * 2 * 6 + 8
    for batch in batches:
        assert len({shared_fields(s) for s in batch.specs}) == 1, batch
    # As few batches as the groups allow: every group of 6 compatible images is one batch (auto on CPU >= 4).
    assert len(batches) == len({shared_fields(s) for s in specs})


def test_compatible_specs_are_batched_across_jobs():
    specs = specs_of(plan_config(prompt="a", seed=[0, 1]), plan_config(prompt="b", seed=[0, 1]), plan_config(prompt="c", seed=5))
    batches = make_batches(specs)
    assert [len(b.specs) for b in batches] == [5]
    # Every prompt's first seed, then the second seeds: the grid fills in early (jobs in planned order).
    assert [(s.prompt, s.seed) for s in batches[0].specs] == [("a", 0), ("b", 0), ("c", 5), ("a", 1), ("b", 1)]


def test_different_asked_batch_sizes_are_never_mixed():
    specs = specs_of(plan_config(batch_size=2, seed=[0, 1, 2]), plan_config(batch_size=3, seed=[3, 4, 5]))
    batches = make_batches(specs)
    assert [(len(b.specs), {s.batch_size for s in b.specs}) for b in batches] == [(2, {2}), (3, {3}), (1, {2})]  # taking turns


@pytest.mark.parametrize("batch_size, sizes", [(1, [1] * 10), (4, [4, 4, 2]), (10, [10]), (32, [10])])
def test_explicit_batch_size_is_respected(batch_size, sizes):
    specs = specs_of(plan_config(batch_size=batch_size, seed=list(range(10))))
    batches = make_batches(specs)
    assert [len(b.specs) for b in batches] == sizes
    assert [s.seed for b in batches for s in b.specs] == list(range(10))


@pytest.mark.parametrize(
    "device, width, height, expected",
    [
        ("cpu", 64, 64, 16),  # 2**16 pixel budget on CPU, at most 16
        ("cpu", 128, 128, 4),
        ("cpu", 128, 64, 8),
        ("cpu", 1024, 1024, 1),
        ("cuda", 1024, 1024, 8),  # 2**23 on CUDA
        ("cuda", 512, 512, 16),
        ("cuda", 2048, 2048, 2),
        ("cuda", 4096, 4096, 1),  # never 0
    ],
)
def test_auto_batch_size(device, width, height, expected):
    (spec,) = specs_of(plan_config(width=width, height=height, device=device))
    assert auto_batch_size(spec) == expected


def test_auto_batch_size_chunks_a_group():
    specs = specs_of(plan_config(seed=list(range(20))))
    assert [len(b.specs) for b in make_batches(specs)] == [16, 4]
    specs = specs_of(plan_config(width=128, height=128, seed=list(range(10))))
    assert [len(b.specs) for b in make_batches(specs)] == [4, 4, 2]


def test_model_switches_are_outermost_then_refiner_then_scheduler():
    # 2 models x 3 schedulers, interleaved in the input order (models alternate every job).
    configs = [
        plan_config(model=model, scheduler=scheduler, seed=[0, 1], steps=steps)
        for scheduler, steps, model in itertools.product(["euler", "ddim", "dpmpp_2m"], [2, 3], ["tiny", "sdxl"])
    ]
    for c in configs:
        c["width"] = c["height"] = 64
    specs = specs_of(*configs)
    assert runs([s.model_id for s in specs]) == 12  # the input switches model at every job
    batches = make_batches(specs)
    models = [b.specs[0].model_id for b in batches]
    schedulers = [(b.specs[0].model_id, b.specs[0].scheduler_class) for b in batches]
    assert runs(models) == 2  # exactly one model switch
    assert models[0] == "tiny-sdxl"  # the model seen first goes first
    assert runs(schedulers) == 6  # each scheduler once per model
    assert [c for _, c in schedulers[: len(schedulers) // 2]] == [
        "EulerDiscreteScheduler", "EulerDiscreteScheduler", "DDIMScheduler", "DDIMScheduler",
        "DPMSolverMultistepScheduler", "DPMSolverMultistepScheduler",
    ]


def test_refiner_switches_sit_between_model_and_scheduler():
    configs = [
        plan_config(refiner=refiner, scheduler=scheduler, seed=[0, 1])
        for scheduler, refiner in itertools.product(["euler", "ddim", "dpmpp_2m_karras"], ["none", "tiny"])
    ]
    batches = make_batches(specs_of(*configs))
    refiners = [b.specs[0].refiner_id for b in batches]
    assert runs(refiners) == 2
    assert runs([(b.specs[0].refiner_id, b.specs[0].scheduler_class, b.specs[0].scheduler_kwargs) for b in batches]) == 6


def test_dtype_and_device_count_as_a_model_switch():
    configs = [plan_config(dtype=dtype, scheduler=scheduler) for scheduler in ["euler", "ddim"] for dtype in ["float32", "bfloat16"]]
    batches = make_batches(specs_of(*configs))
    assert [(b.specs[0].dtype, b.specs[0].scheduler) for b in batches] == [
        ("float32", "euler"), ("float32", "ddim"), ("bfloat16", "euler"), ("bfloat16", "ddim")
    ]


def test_make_batches_is_deterministic_and_handles_nothing():
    specs = specs_of(*[plan_config(steps=s, seed=[0, 1, 2]) for s in (2, 3, 4)], plan_config(model="tiny-sd"))
    assert make_batches(specs) == make_batches(list(specs))
    assert make_batches([]) == []


# --- shard -----------------------------------------------------------------------------------------


def uneven_batches() -> list[Batch]:
    configs = [
        plan_config(steps=steps, width=width, height=64, guidance=guidance, seed=list(range(seeds)), batch_size=3)
        for steps, width, guidance, seeds in itertools.product([1, 4, 9], [64, 192], [1.0, 7.0], [1, 3, 7])
    ]
    batches = make_batches(specs_of(*configs))
    assert len({b.cost for b in batches}) > 5
    return batches


@pytest.mark.parametrize("world_size", [1, 2, 3, 4, 5])
def test_shard_gives_every_batch_to_exactly_one_rank_balanced_and_in_order(world_size):
    batches = uneven_batches()
    index = {id(b): i for i, b in enumerate(batches)}
    shares = [shard(batches, rank, world_size) for rank in range(world_size)]
    owned = [index[id(b)] for share in shares for b in share]
    assert sorted(owned) == list(range(len(batches)))  # each exactly once
    for share in shares:
        positions = [index[id(b)] for b in share]
        assert positions == sorted(positions)  # schedule order kept within a rank
    loads = [sum(b.cost for b in share) for share in shares]
    assert max(loads) - min(loads) <= max(b.cost for b in batches)
    # Deterministic: every rank computes the same assignment on its own.
    assert [shard(list(batches), rank, world_size) for rank in range(world_size)] == shares


def test_shard_balances_much_better_than_the_worst_batch():
    batches = uneven_batches()
    total = sum(b.cost for b in batches)
    loads = [sum(b.cost for b in shard(batches, rank, 4)) for rank in range(4)]
    assert max(loads) <= total / 4 + max(b.cost for b in batches)
    assert all(load > 0 for load in loads)


def test_shard_with_more_ranks_than_batches():
    batches = make_batches(specs_of(plan_config(steps=2), plan_config(steps=3)))
    shares = [shard(batches, rank, 4) for rank in range(4)]
    assert sorted(len(s) for s in shares) == [0, 0, 1, 1]
    assert {b.specs[0].steps for s in shares for b in s} == {2, 3}
    assert shard([], 0, 3) == []


def test_shard_of_one_rank_is_everything_in_order():
    batches = uneven_batches()
    assert shard(batches, 0, 1) == batches


# --- cost and estimate -------------------------------------------------------------------------------


def test_cost_is_pixels_times_forwards_plus_decode():
    (cfg_spec,) = specs_of(plan_config(steps=10, width=64, height=128, guidance=5.0))
    (no_cfg,) = specs_of(plan_config(steps=10, width=64, height=128, guidance=1.0))
    assert cost(cfg_spec) == pytest.approx(64 * 128 * (10 * 2 + DECODE_FORWARDS))
    assert cost(no_cfg) == pytest.approx(64 * 128 * (10 + DECODE_FORWARDS))
    refiner = dict(REFINERS["tiny"], mode="img2img", split=0.75)
    (img2img,) = specs_of(plan_config(steps=8, refiner=refiner, guidance=5.0))
    assert cost(img2img) == pytest.approx(64 * 64 * (8 * 2 + 8 * 0.25 * 2 + DECODE_FORWARDS))
    batch = Batch(tuple(specs_of(plan_config(seed=[0, 1, 2]))))
    assert batch.cost == pytest.approx(3 * cost(batch.specs[0]))


def test_estimate_seconds_is_positive_and_monotone_in_steps():
    estimates = [estimate_seconds(specs_of(plan_config(steps=steps))) for steps in range(1, 60)]
    assert all(e > 0 for e in estimates)
    assert all(a < b for a, b in zip(estimates, estimates[1:]))
    assert estimate_seconds([]) == 0


def test_estimate_seconds_uses_the_table_or_a_measured_rate():
    specs = specs_of(plan_config(seed=[0, 1, 2, 3]))
    total_cost = sum(cost(s) for s in specs)
    assert estimate_seconds(specs) == pytest.approx(total_cost * SECONDS_PER_UNIT[("tiny", "cpu")])
    assert estimate_seconds(specs, seconds_per_unit=1e-3) == pytest.approx(total_cost * 1e-3)
    (full,) = specs_of(plan_config(model="sdxl", width=1024, height=1024, steps=30), auto_device="cuda")
    assert estimate_seconds([full]) == pytest.approx(cost(full) * SECONDS_PER_UNIT[("full", "cuda")])
    # More images, more time; a bigger image, more time.
    assert estimate_seconds(specs_of(plan_config(seed=list(range(8))))) == pytest.approx(2 * estimate_seconds(specs))
    assert estimate_seconds(specs_of(plan_config(width=128))) > estimate_seconds(specs_of(plan_config(width=64)))


def test_cost_counts_unet_calls_per_step():
    euler, sde = (specs_of(plan_config(scheduler=name))[0] for name in ("euler", "dpmpp_sde_karras"))
    heun = specs_of(plan_config(scheduler={**SCHEDULERS["euler"], "name": "heun", "class_name": "HeunDiscreteScheduler"}))[0]
    decode = euler.width * euler.height * 1.55
    assert cost(heun) - decode == 2 * (cost(euler) - decode)
    assert cost(sde) - decode == 2 * (cost(euler) - decode)
    assert estimate_seconds([heun]) > estimate_seconds([euler]) * 1.8


def test_the_first_batches_cover_every_cell_with_its_first_seed_in_full_batches():
    # 5 schedulers x 2 prompts x 4 seeds, batches of 2: the first 5 batches hold seed 0 of every cell.
    schedulers = ["euler", "ddim", "dpmpp_2m", "dpmpp_2m_karras", "dpmpp_sde_karras"]
    specs = specs_of(*[plan_config(scheduler=name, prompt=["a", "b"], seed=[0, 1, 2, 3], batch_size=2) for name in schedulers])
    batches = make_batches(specs)
    assert [len(b.specs) for b in batches] == [2] * 20
    first = [spec for batch in batches[:5] for spec in batch.specs]
    assert {(s.scheduler, s.prompt) for s in first} == {(name, p) for name in schedulers for p in "ab"} and {s.seed for s in first} == {0}
    assert [{s.seed for s in b.specs} for b in batches] == [{0}] * 5 + [{1}] * 5 + [{2}] * 5 + [{3}] * 5
    models = make_batches(specs_of(*[plan_config(model=m, scheduler=n, seed=[0, 1]) for n in schedulers for m in ("tiny", "tiny-sd")]))
    assert runs([b.specs[0].model_id for b in models]) == 2  # loads stay outermost
