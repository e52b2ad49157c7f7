"""plan.py: composed job configs -> ImageSpecs (pure: no torch, no files written)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from sweeper.app import config_dir
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan, plan_job
from sweeper.rendering import families
from sweeper.planning.spec import EXECUTION_FIELDS, LABEL_FIELDS, PER_IMAGE_FIELDS, SPARSE_FIELDS, ImageSpec
from sweeper.planning.validate import SEED_LIMIT
from sweeper.rendering.tiny import recipe_version

PIXEL_FIELDS = {
    "model_id", "model_revision", "family", "refiner_id", "refiner_revision", "refiner_split", "refiner_mode",
    "scheduler_class", "scheduler_kwargs", "mode", "prompt", "negative_prompt", "prompt_2", "negative_prompt_2",
    "seed", "guidance", "steps", "width", "height", "original_size", "target_size", "crops_coords_top_left",
    "negative_original_size", "negative_target_size", "negative_crops_coords_top_left", "dtype", "device",
    "strength", "init_image_sha", "mask_image_sha", "watermark", "safety_checker", "vae_tiling",
}
# Pixel fields that are part of the id only when set (no LoRA: the ids of earlier sweeps).
OPTIONAL_PIXEL_FIELDS = {
    "lora_scale", "lora_sha", "prompt_3", "negative_prompt_3", "prompt_syntax", "true_cfg", "guidance_rescale", "subseed", "subseed_strength", "max_sequence_length", "shift", "dynamic_shift", "sigmas",
    "clip_skip", "slg_layers", "slg_scale", "slg_start", "slg_stop", "hires_scale", "hires_denoise", "hires_steps", "hires_upscaler", "vae_sha", "embedding_tokens", "embeddings_sha",
}
NON_PIXEL_FIELDS = {
    "lora", "vae", "embeddings", "model", "model_config", "refiner", "scheduler", "scheduler_label", "prompt_file", "prompt_template", "init_image", "mask_image",
    "job_num", "overrides", *EXECUTION_FIELDS,
}


def _compose(*overrides: str) -> dict:
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["model=tiny", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.fixture(scope="module")
def composed() -> dict[str, dict]:
    return {
        "base": _compose(),
        "refined": _compose("refiner=tiny"),
        "dpmpp_2m": _compose("scheduler=dpmpp_2m"),
        "dpmpp_2m_karras": _compose("scheduler=dpmpp_2m_karras"),
        "tiny_sd": _compose("model=tiny-sd"),
    }


@pytest.fixture
def base(composed) -> dict:
    return copy.deepcopy(composed["base"])


def with_(config: dict, **changes) -> dict:
    """A deep copy of `config` with changes; `refiner__split` sets config["refiner"]["split"]."""
    out = copy.deepcopy(config)
    for key, value in changes.items():
        node = out
        *parents, leaf = key.split("__")
        for parent in parents:
            node = node[parent]
        node[leaf] = value
    return out


def one(config: dict, **kwargs) -> ImageSpec:
    specs = plan([Job(0, config)], **kwargs)
    assert len(specs) == 1, specs
    return specs[0]


# --- the composed default ----------------------------------------------------------------


def test_composed_tiny_config_plans_one_fully_resolved_image(base):
    spec = one(base)
    assert spec.model == "tiny"
    assert spec.model_id == "tiny-sdxl"
    assert spec.model_revision == recipe_version("tiny-sdxl")  # a tiny model's revision is its recipe version
    assert spec.family == "sdxl"
    assert (spec.refiner, spec.refiner_id, spec.refiner_split, spec.refiner_mode) == ("none", None, None, None)
    assert (spec.scheduler, spec.scheduler_class, spec.scheduler_label) == ("euler", "EulerDiscreteScheduler", "Euler")
    assert json.loads(spec.scheduler_kwargs) == {}
    assert spec.prompt == "a photograph of an astronaut riding a horse"
    assert (spec.negative_prompt, spec.prompt_2, spec.negative_prompt_2) == (None, None, None)
    assert (spec.seed, spec.guidance, spec.steps, spec.width, spec.height) == (0, 5.0, 4, 64, 64)
    assert isinstance(spec.guidance, float)
    assert spec.original_size is None and spec.crops_coords_top_left is None
    assert (spec.mode, spec.dtype, spec.device) == ("txt2img", "float32", "cpu")
    assert spec.batch_size is None  # auto
    assert (spec.job_num, spec.overrides, spec.prompt_file) == (0, "", None)
    assert len(spec.image_id) == 20 and int(spec.image_id, 16) >= 0


def test_device_auto_follows_the_machine_and_picks_the_dtype(base):
    assert (one(base, auto_device="cuda").device, one(base, auto_device="cuda").dtype) == ("cuda", "float16")
    assert (one(base, auto_device="cpu").device, one(base, auto_device="cpu").dtype) == ("cpu", "float32")
    assert one(base, auto_device="mps").dtype == "float32"
    explicit = one(with_(base, device="cuda:1"), auto_device="cpu")
    assert (explicit.device, explicit.dtype) == ("cuda", "float16")  # the device *type* is recorded
    assert one(with_(base, device="cpu", dtype="bfloat16"), auto_device="cuda").dtype == "bfloat16"


# --- prompts x seeds -----------------------------------------------------------------------


def test_prompts_times_seeds_is_the_cross_product_in_prompt_major_order(base):
    prompts = ["a cat", "a dog", "a fox"]
    seeds = [11, 22]
    specs = plan([Job(0, with_(base, prompt=prompts, seed=seeds))])
    assert [(s.prompt, s.seed) for s in specs] == list(itertools.product(prompts, seeds))
    assert len({s.image_id for s in specs}) == 6


def test_a_single_prompt_string_and_a_single_seed_int(base):
    specs = plan([Job(0, with_(base, prompt="just one", seed=[5, 6, 7]))])
    assert [(s.prompt, s.seed) for s in specs] == [("just one", 5), ("just one", 6), ("just one", 7)]


def test_jobs_multiply_and_duplicates_are_planned_once(base):
    jobs = [Job(n, with_(base, guidance=g, prompt=["a", "b"], seed=[0, 1, 2])) for n, g in enumerate([3, 5, 7.5])]
    specs = plan(jobs)
    assert len(specs) == 3 * 2 * 3
    assert {s.guidance for s in specs} == {3.0, 5.0, 7.5}
    # Duplicated seeds and prompts inside one job collapse too.
    assert len(plan([Job(0, with_(base, prompt=["a", "a"], seed=[1, 1, 2]))])) == 2


def test_identical_specs_across_jobs_are_deduplicated_first_job_wins(base):
    a = Job(3, with_(base, guidance=5), ("guidance=5",))
    b = Job(4, with_(base, guidance=5.0), ("guidance=5.0",))
    c = Job(5, with_(base, guidance=6.0), ("guidance=6.0",))
    specs = plan([a, b, c])
    assert len(specs) == 2
    assert [s.job_num for s in specs] == [3, 5]
    assert specs[0].overrides == "guidance=5"
    # Another order: the same images, the other job is named first.
    reordered = plan([c, b, a])
    assert {s.image_id for s in reordered} == {s.image_id for s in specs}
    assert [s.job_num for s in reordered] == [5, 4]


def test_per_prompt_lists_are_zipped_with_the_prompts(base):
    config = with_(base, prompt=["p1", "p2"], negative_prompt=["n1", "n2"], prompt_2="shared", seed=[0, 1])
    specs = plan([Job(0, config)])
    assert [(s.prompt, s.negative_prompt, s.prompt_2, s.seed) for s in specs] == [
        ("p1", "n1", "shared", 0), ("p1", "n1", "shared", 1), ("p2", "n2", "shared", 0), ("p2", "n2", "shared", 1)
    ]


def test_prompt_file_one_prompt_per_line_blank_lines_ignored(base, tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red bicycle, leaning\n\n   \n  café at night ☕  \r\nlast line without newline", encoding="utf-8")
    specs = plan([Job(0, with_(base, prompt_file=str(path), prompt="ignored", seed=[1, 2]))])
    assert [s.prompt for s in specs] == ["a red bicycle, leaning"] * 2 + ["café at night ☕"] * 2 + ["last line without newline"] * 2
    assert {s.prompt_file for s in specs} == {str(path)}
    # Where a prompt came from is a label: the same prompt typed inline has the same id.
    inline = plan([Job(0, with_(base, prompt="café at night ☕", seed=1))])[0]
    from_file = next(s for s in specs if s.prompt == "café at night ☕" and s.seed == 1)
    assert inline.image_id == from_file.image_id


def test_prompt_file_missing_or_empty_is_refused(base, tmp_path):
    missing = tmp_path / "nope.txt"
    with pytest.raises(PlanError) as error:
        plan([Job(0, with_(base, prompt_file=str(missing)))])
    assert f"prompt_file={str(missing)!r}" in str(error.value) and "no such file" in str(error.value)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n   \n\n", encoding="utf-8")
    with pytest.raises(PlanError) as error:
        plan([Job(0, with_(base, prompt_file=str(empty)))])
    assert f"prompt_file={str(empty)!r}" in str(error.value)


# --- seed -1 ---------------------------------------------------------------------------------


def test_random_seed_is_deterministic_per_nonce_and_recorded_as_an_int(base):
    config = with_(base, seed=[-1, -1, 7])
    first = plan([Job(0, config)], seed_nonce=1234)
    again = plan([Job(0, config)], seed_nonce=1234)
    other = plan([Job(0, config)], seed_nonce=1235)
    seeds = [s.seed for s in first]
    assert seeds == [s.seed for s in again]
    assert seeds[2] == 7
    assert seeds[0] != seeds[1]  # two -1 draw two seeds
    assert all(type(s) is int and 0 <= s < 2**32 for s in seeds)
    assert -1 not in seeds
    assert [s.seed for s in other][:2] != seeds[:2]
    assert [s.image_id for s in first] != [s.image_id for s in other]
    # The recorded seed is the real one: planning it explicitly gives the same image.
    explicit = one(with_(base, seed=seeds[0]))
    assert explicit.image_id == first[0].image_id


def test_random_seeds_do_not_depend_on_job_order(base):
    jobs = [Job(n, with_(base, guidance=g, seed=-1)) for n, g in enumerate([3.0, 4.0, 5.0])]
    forward = {s.job_num: s.seed for s in plan(jobs, seed_nonce=9)}
    backward = {s.job_num: s.seed for s in plan(list(reversed(jobs)), seed_nonce=9)}
    assert forward == backward


def test_random_seeds_differ_across_many_nonces(base):
    seeds = {one(with_(base, seed=-1), seed_nonce=nonce).seed for nonce in range(50)}
    assert len(seeds) == 50


# --- image_id: everything that changes the pixels, nothing that does not -----------------


def test_render_fields_hold_the_pixel_fields_and_no_label(base):
    keys = set(one(base).render_fields())
    assert keys == PIXEL_FIELDS
    assert {f.name for f in dataclasses.fields(ImageSpec)} == PIXEL_FIELDS | OPTIONAL_PIXEL_FIELDS | NON_PIXEL_FIELDS
    assert not keys & NON_PIXEL_FIELDS
    assert set(LABEL_FIELDS) <= NON_PIXEL_FIELDS


def test_image_id_is_stable_across_calls_job_numbers_and_overrides(base):
    a = one(base)
    b = plan([Job(17, copy.deepcopy(base), ("steps=4", "model=tiny"))])[0]
    assert a.image_id == b.image_id == one(base).image_id
    assert a.image_id == ImageSpec.from_json(a.to_json()).image_id
    assert a.image_id == plan_job(Job(99, copy.deepcopy(base)))[0].image_id
    # The id hashes the canonical JSON of the shared render fields, then the row's, then the seed (what resume relies on).
    fields = a.render_fields()
    shared = {k: v for k, v in fields.items() if k not in PER_IMAGE_FIELDS}
    canonical = json.dumps(shared, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    row = [fields[k] for k in PER_IMAGE_FIELDS if k != "seed"]
    canonical += "\n" + json.dumps(row, separators=(",", ":"), ensure_ascii=False) + f"\n{a.seed}"
    assert a.image_id == hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:20]


def test_fast_planned_specs_equal_specs_built_the_plain_way(base):
    specs = plan([Job(3, with_(base, prompt=["a", "b"], negative_prompt=["x", "y"], seed=[1, 2]), ("seed=1,2",))])
    for spec in specs:
        plain = dataclasses.replace(spec)  # through __init__, id computed from scratch
        assert "image_id" not in plain.__dict__
        assert plain.__dict__ == {k: v for k, v in spec.__dict__.items() if k != "image_id"}
        assert plain.image_id == spec.image_id
    assert [(s.prompt, s.negative_prompt, s.seed) for s in specs] == [("a", "x", 1), ("a", "x", 2), ("b", "y", 1), ("b", "y", 2)]


@pytest.mark.parametrize(
    "changes",
    [
        {"seed": 1},
        {"guidance": 5.5},
        {"steps": 5},
        {"width": 72},
        {"height": 72},
        {"prompt": "another prompt"},
        {"negative_prompt": "blurry"},
        {"prompt_2": "second encoder"},
        {"negative_prompt_2": "also blurry"},
        {"original_size": [128, 128]},
        {"target_size": [128, 128]},
        {"crops_coords_top_left": [8, 0]},
        {"negative_original_size": [512, 512]},
        {"negative_target_size": [128, 128]},
        {"negative_crops_coords_top_left": [8, 0]},
        {"dtype": "float16"},
        {"dtype": "bfloat16"},
        {"device": "cuda"},
        {"model__id": "stabilityai/stable-diffusion-xl-base-1.0"},
        {"model__revision": "v3"},
        {"scheduler__class_name": "DDIMScheduler"},
        {"scheduler__kwargs": {"timestep_spacing": "trailing"}},
    ],
    ids=lambda c: ",".join(c),
)
def test_image_id_changes_with_every_pixel_field(base, changes):
    before = one(base)
    after = one(with_(base, **changes))
    assert before.image_id != after.image_id


@pytest.mark.parametrize(
    "changes, plain",
    [
        ({"original_size": [64, 64], "target_size": [64, 64], "crops_coords_top_left": [0, 0]}, {}),  # diffusers' defaults
        ({"negative_original_size": [64, 64]}, {}),  # the negative conditioning equal to the positive: no effect
        ({"crops_coords_top_left": [8, 0], "negative_crops_coords_top_left": [8, 0]}, {"crops_coords_top_left": [8, 0]}),
        ({"guidance": 1.0, "negative_prompt": "blurry", "negative_prompt_2": "grainy"}, {"guidance": 1.0}),  # no CFG: unread
        ({"guidance": 1.0, "negative_original_size": [512, 512]}, {"guidance": 1.0}),
    ],
    ids=lambda c: ",".join(c),
)
def test_one_picture_has_one_id_whatever_the_spelling(base, changes, plain):
    assert one(with_(base, **changes)).image_id == one(with_(base, **plain)).image_id


def test_negative_size_conditioning_takes_effect_alone_and_is_passed_whole(base):
    spec = one(with_(base, negative_original_size=[512, 512]))
    # diffusers' SDXL base ignores negative_original_size without negative_target_size: all three are set
    assert (spec.negative_original_size, spec.negative_crops_coords_top_left, spec.negative_target_size) == ((512, 512), (0, 0), (64, 64))
    assert one(with_(base, negative_crops_coords_top_left=[0, 8])).negative_target_size == (64, 64)
    with pytest.raises(PlanError, match="img2img pipeline ignores it"):
        one(with_(base, mode="img2img", negative_crops_coords_top_left=[0, 8]))


@pytest.mark.parametrize(
    "steps, split, mode, spacing, expected",
    [(30, 0.8, "ensemble", "leading", (23, 7)), (4, 0.8, "ensemble", "leading", (3, 1)), (4, 0.8, "img2img", "leading", (4, 0)),
     (4, 0.75, "img2img", "leading", (4, 1)), (10, 0.5, "ensemble", "trailing", (5, 5)), (10, 0.5, "ensemble", "linspace", (5, 5))],
)
def test_split_steps_cut_as_diffusers_does(steps, split, mode, spacing, expected):
    from sweeper.planning.validate import split_steps

    assert split_steps(steps, split, mode, spacing) == expected


@pytest.mark.parametrize("changes, who", [({"refiner__mode": "img2img"}, "refiner"), ({"steps": 1}, "base"), ({"refiner__split": 0.05}, "base")])
def test_a_split_that_leaves_a_model_no_step_is_refused(composed, changes, who):
    with pytest.raises(PlanError, match=f"invalid refiner.split=.*the {who} gets no step"):
        one(with_(composed["refined"], **changes))


def test_image_id_changes_with_the_scheduler_and_its_kwargs(composed):
    ids = {name: one(composed[name]).image_id for name in ("base", "dpmpp_2m", "dpmpp_2m_karras")}
    assert len(set(ids.values())) == 3  # euler, dpmpp_2m and dpmpp_2m_karras (same class, other kwargs)


def test_image_id_changes_with_the_refiner_split_mode_and_presence(composed):
    refined = composed["refined"]
    a = one(refined)
    assert (a.refiner, a.refiner_id, a.refiner_split, a.refiner_mode) == ("tiny", "tiny-sdxl-refiner", 0.8, "ensemble")
    assert a.refiner_revision == recipe_version("tiny-sdxl-refiner")
    variants = [
        one(with_(refined, refiner__split=0.7)),
        one(with_(refined, refiner__mode="img2img", refiner__split=0.75)),
        one(composed["base"]),
    ]
    assert len({a.image_id, *(v.image_id for v in variants)}) == 4


@pytest.mark.parametrize(
    "changes",
    [
        {"batch_size": 4},
        {"batch_size": 1},
        {"dry_run": True},
        {"name": "my-sweep"},
        {"model__name": "my-label"},
        {"scheduler__name": "renamed"},
        {"scheduler__label": "Some Label"},
        {"guidance": 5},  # int 5 == float 5.0
        {"dtype": "float32"},  # what auto means on CPU
        {"device": "cpu"},  # what auto means here
    ],
    ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()),
)
def test_image_id_ignores_what_does_not_change_pixels(base, changes):
    assert one(base).image_id == one(with_(base, **changes)).image_id


def test_image_id_ignores_every_label_field_and_follows_every_render_field(base):
    spec = one(with_(base, original_size=[128, 128], crops_coords_top_left=[0, 8], negative_prompt="n"))
    labels = {
        "model": "x", "refiner": "x", "scheduler": "x", "scheduler_label": "x", "prompt_file": "/x",
        "job_num": 42, "overrides": "a=b", "batch_size": 3,
    }
    assert dataclasses.replace(spec, **labels).image_id == spec.image_id
    for name, value in spec.render_fields().items():
        if isinstance(value, bool) or value is None:
            changed = "something"
        elif isinstance(value, (int, float)):
            changed = value + 1
        elif isinstance(value, tuple):
            changed = (value[0] + 8, value[1])
        else:
            changed = value + "-x"
        assert dataclasses.replace(spec, **{name: changed}).image_id != spec.image_id, name


# --- validation: one line naming the key and the value -------------------------------------


BAD_VALUES = [
    ({"steps": 0}, "steps=0"),
    ({"steps": -3}, "steps=-3"),
    ({"steps": 4.5}, "steps=4.5"),
    ({"steps": "4"}, "steps='4'"),
    ({"steps": True}, "steps=true"),
    ({"width": 100}, "width=100"),
    ({"width": 0}, "width=0"),
    ({"width": -64}, "width=-64"),
    ({"width": 64.0}, "width=64.0"),
    ({"height": 63}, "height=63"),
    ({"height": None}, "height=null"),
    ({"guidance": -1}, "guidance=-1"),
    ({"guidance": -0.5}, "guidance=-0.5"),
    ({"guidance": "high"}, "guidance='high'"),
    ({"guidance": math.nan}, "guidance=NaN"),
    ({"guidance": math.inf}, "guidance=Infinity"),  # inf x (cond - uncond) makes NaN latents
    ({"mode": "video"}, "mode='video'"),
    ({"mode": "outpaint"}, "mode='outpaint'"),
    ({"seed": 1.5}, "seed=1.5"),
    ({"seed": "7"}, "seed='7'"),
    ({"seed": -2}, "seed=-2"),
    ({"seed": SEED_LIMIT}, f"seed={SEED_LIMIT}"),
    ({"seed": True}, "seed=true"),
    ({"seed": []}, "seed=[]"),
    ({"seed": [0, "x"]}, 'seed=[0, "x"]'),
    ({"prompt": []}, "prompt=[]"),
    ({"prompt": 5}, "prompt=5"),
    ({"prompt": None}, "prompt=null"),
    ({"prompt": ["a", 2]}, 'prompt=["a", 2]'),
    ({"negative_prompt": ["only one"], "prompt": ["a", "b"]}, 'negative_prompt=["only one"]'),
    ({"batch_size": 0}, "batch_size=0"),
    ({"batch_size": -1}, "batch_size=-1"),
    ({"batch_size": "big"}, "batch_size='big'"),
    ({"batch_size": 2.0}, "batch_size=2.0"),
    ({"dtype": "fp16"}, "dtype='fp16'"),
    ({"dtype": None}, "dtype=null"),
    ({"device": "gpu"}, "device='gpu'"),
    ({"device": "cuda:x"}, "device='cuda:x'"),
    ({"device": 0}, "device=0"),
    ({"original_size": [0, 64]}, "original_size=[0, 64]"),
    ({"target_size": [64]}, "target_size=[64]"),
    ({"crops_coords_top_left": [-1, 0]}, "crops_coords_top_left=[-1, 0]"),
    ({"negative_original_size": "64x64"}, "negative_original_size='64x64'"),
    ({"model__family": "sd2"}, "model.family='sd2'"),
    ({"model__id": ""}, "model.id=''"),
    ({"model__id": 7}, "model.id=7"),
    ({"scheduler__class_name": 123}, "scheduler.class_name=123"),
    ({"scheduler__kwargs": ["use_karras_sigmas"]}, 'scheduler.kwargs=["use_karras_sigmas"]'),
    ({"mode": "img2img"}, "init_image=null"),
    ({"mode": "img2img", "init_image": "/no/such.png"}, "init_image='/no/such.png'"),
    ({"init_image": "/no/such.png"}, "init_image='/no/such.png'"),  # txt2img takes none
    ({"mask_image": "/no/such.png"}, "mask_image='/no/such.png'"),
    ({"attention": "flash"}, "attention='flash'"),
    ({"channels_last": "yes"}, "channels_last='yes'"),
    ({"fuse_qkv": 1}, "fuse_qkv=1"),
    ({"compile": "fast"}, "compile='fast'"),
    ({"vae_upcast": "maybe"}, "vae_upcast='maybe'"),
    ({"offload": "model"}, "offload='model'"),  # the CPU has nothing to offload to
    ({"offload": "disk"}, "offload='disk'"),
    ({"vae_tiling": None}, "vae_tiling=null"),
    ({"safety_checker": True}, "safety_checker=true"),  # SDXL has none
    ({"safety_checker": "on"}, "safety_checker='on'"),
    ({"model__config": 5}, "model.config=5"),
    ({"model__id": "/no/such/model.safetensors"}, "model.id='/no/such/model.safetensors'"),
]


@pytest.mark.parametrize("changes, named", BAD_VALUES, ids=[named for _, named in BAD_VALUES])
def test_bad_values_raise_one_line_naming_key_and_value(base, changes, named):
    with pytest.raises(PlanError) as error:
        plan([Job(0, with_(base, **changes))])
    message = str(error.value)
    assert "\n" not in message
    assert f"invalid {named}:" in message, message
    assert len(message.split(": ", 1)[1]) > 5  # and what is allowed


@pytest.mark.parametrize(
    "changes, named",
    [
        ({"refiner__split": 0}, "refiner.split=0"),
        ({"refiner__split": 1}, "refiner.split=1"),
        ({"refiner__split": 1.5}, "refiner.split=1.5"),
        ({"refiner__split": -0.1}, "refiner.split=-0.1"),
        ({"refiner__split": "half"}, "refiner.split='half'"),
        ({"refiner__mode": "parallel"}, "refiner.mode='parallel'"),
        ({"refiner__id": None}, "refiner.id=null"),
    ],
    ids=lambda v: str(v),
)
def test_bad_refiner_values(composed, changes, named):
    with pytest.raises(PlanError) as error:
        plan([Job(0, with_(composed["refined"], **changes))])
    assert "\n" not in str(error.value)
    assert f"invalid {named}:" in str(error.value)


def test_refiner_needs_an_sdxl_base(composed):
    config = with_(composed["tiny_sd"], refiner=copy.deepcopy(composed["refined"]["refiner"]))
    with pytest.raises(PlanError) as error:
        plan([Job(0, config)])
    message = str(error.value)
    assert "\n" not in message and "refiner=tiny" in message and "sd15" in message


@pytest.mark.parametrize("key", ["prompt_2", "negative_prompt_2", "original_size", "crops_coords_top_left"])
def test_sdxl_only_keys_are_refused_for_sd15(composed, key):
    value = "x" if "prompt" in key else [64, 64]
    with pytest.raises(PlanError) as error:
        plan([Job(0, with_(composed["tiny_sd"], **{key: value}))])
    message = str(error.value)
    assert "\n" not in message and key in message and "model=tiny-sd" in message


def test_a_bad_job_anywhere_fails_the_whole_plan(base):
    jobs = [Job(0, base), Job(1, with_(base, steps=0))]
    with pytest.raises(PlanError, match="steps=0"):
        plan(jobs)


def test_boundary_values_are_accepted(base):
    spec = one(with_(base, steps=1, width=8, height=8, guidance=0, seed=SEED_LIMIT - 1, batch_size=1))
    assert (spec.steps, spec.width, spec.height, spec.guidance, spec.seed, spec.batch_size) == (1, 8, 8, 0.0, SEED_LIMIT - 1, 1)
    assert not families.uses_cfg(spec)
    assert families.uses_cfg(one(with_(base, guidance=1.5)))
    assert one(with_(base, crops_coords_top_left=[0, 8])).crops_coords_top_left == (0, 8)
    assert one(with_(base, crops_coords_top_left=[0, 0])).crops_coords_top_left is None  # diffusers' default, one id


# --- JSON --------------------------------------------------------------------------------------


def test_to_json_from_json_round_trip(composed):
    config = with_(
        composed["refined"],
        prompt="東京の夜景, café — 🚀",
        negative_prompt='with "quotes"\nand a newline',
        original_size=[1024, 768],
        target_size=[64, 64],
        crops_coords_top_left=[0, 8],
        negative_original_size=[512, 512],
        seed=2**40,
        batch_size=3,
    )
    spec = plan([Job(5, config, ("seed=1099511627776", "refiner=tiny"))])[0]
    text = spec.to_json()
    data = json.loads(text)
    assert {f.name for f in dataclasses.fields(ImageSpec)} - SPARSE_FIELDS == set(data)  # other families' keys: not written
    assert data["prompt"] == "東京の夜景, café — 🚀" and data["seed"] == 2**40
    back = ImageSpec.from_json(text)
    assert back == spec
    assert back.image_id == spec.image_id
    assert back.original_size == (1024, 768) and isinstance(back.original_size, tuple)
    assert back.negative_target_size == (64, 64)  # filled, so that the negative original size takes effect
    assert hash(back) == hash(spec)


def test_planning_stays_fast(base):
    config = with_(base, prompt=[f"prompt {i}" for i in range(50)], seed=list(range(100)))
    tic = time.perf_counter()
    specs = plan([Job(0, config), Job(1, config)])  # 5k images, each planned twice
    elapsed = time.perf_counter() - tic
    assert len(specs) == 5_000
    # The design asks 100k specs in < 2 s; 10k here get 10x that time, so only a
    # gross (e.g. quadratic) slowdown fails this.
    assert elapsed < 2.0, elapsed


def test_a_folder_of_init_images_is_an_axis_and_their_content_is_in_the_id(base, tmp_path):
    from PIL import Image

    inits, masks = tmp_path / "inits", tmp_path / "masks"
    inits.mkdir(), masks.mkdir()
    for name, shade in (("b", 10), ("a", 200)):
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(inits / f"{name}.png")
        Image.new("L", (8, 8), shade).save(masks / f"{name}.png")
    (inits / "notes.txt").write_text("not an image")
    config = with_(base, mode="inpaint", init_image=str(inits), mask_image=str(masks), strength=0.5, prompt=["p", "q"], seed=[1, 2])
    specs = plan([Job(0, config)])
    assert [(s.prompt, Path(s.init_image).name, Path(s.mask_image).name, s.seed) for s in specs] == [
        (p, name, name, seed) for p in "pq" for name in ("a.png", "b.png") for seed in (1, 2)
    ]
    assert all(s.strength == 0.5 and s.init_image_sha and s.mask_image_sha for s in specs)
    Image.new("RGB", (8, 8), (11, 0, 0)).save(inits / "b.png")  # edited: its images get new ids
    again = {s.image_id for s in plan([Job(0, config)])}
    assert len(again & {s.image_id for s in specs}) == 4
    moved = with_(config, init_image=str(inits / "a.png"), mask_image=str(masks / "a.png"))
    assert {s.image_id for s in plan([Job(0, moved)])} <= {s.image_id for s in specs}  # the path is not in the id
    with pytest.raises(PlanError, match="no mask named b"):
        (masks / "b.png").unlink()
        plan([Job(0, config)])


def test_a_watermark_without_its_package_is_refused_naming_the_install(base, monkeypatch):
    import importlib.util

    assert one(with_(base, watermark=True)).watermark  # the test extra installs invisible-watermark
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "imwatermark" else real(name, *a))
    with pytest.raises(PlanError, match=r"^invalid watermark=true: needs the invisible-watermark package: pip install invisible-watermark$"):
        one(with_(base, watermark=True))
