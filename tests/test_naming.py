"""callbacks.default_name: the output dir name made from a command's overrides."""

from __future__ import annotations

import os
import re
from pathlib import PurePosixPath, PureWindowsPath

import pytest

from sweeper.callbacks import default_name

SAFE = re.compile(r"^[A-Za-z0-9._=,+-]+$")


def assert_safe(name: str) -> None:
    assert name and SAFE.match(name), name
    assert "/" not in name and "\\" not in name and os.sep not in name
    assert not name.startswith(".") and not name.startswith("-")
    assert name not in (".", "..")
    assert len(PurePosixPath(name).parts) == 1 and len(PureWindowsPath(name).parts) == 1
    assert len(name) <= 80


def test_names_hold_the_keys_sorted_and_a_hash_never_a_value():
    assert re.fullmatch(r"guidance_model-[0-9a-f]{6}", default_name(["model=tiny", "guidance=5,7.5"]))
    assert default_name(["scheduler=euler,ddim", "steps=2,4"]).startswith("scheduler_steps-")
    name = default_name(["model=tiny-sd", "prompt='a fox, in snow'", "init_image=/home/me/photos"])
    assert name.startswith("init_image_model_prompt-") and "fox" not in name and "home" not in name and "tiny" not in name


def test_the_order_of_the_overrides_does_not_matter():
    assert default_name(["seed=0,1,2", "guidance=3,5,7"]) == default_name(["guidance=3,5,7", "seed=0,1,2"])
    assert default_name(["model=tiny", "+steps=4", "guidance=5,7"]) == default_name(["guidance=5,7", "steps=4", "model=tiny"])


def test_adding_values_to_a_sweep_keeps_the_name():
    assert default_name(["model=tiny", "guidance=5,7.5"]) == default_name(["model=tiny", "guidance=5,7.5,10"])
    assert default_name(["seed=0,1"]) == default_name(["seed=range(0,10)"])


def test_fixed_values_change_the_name():
    assert default_name(["model=tiny", "steps=4"]) != default_name(["model=tiny", "steps=5"])
    assert default_name(["model=tiny"]) != default_name(["model=tiny-sd"])
    assert default_name(["guidance=5"]) != default_name(["guidance=5,7"])  # a fixed key is not a sweep of it


def test_dry_run_and_batch_size_are_left_out():
    plain = default_name(["model=tiny", "guidance=5,7.5"])
    assert plain == default_name(["model=tiny", "dry_run=true", "guidance=5,7.5", "batch_size=4"])
    assert plain == default_name(["+dry_run=true", "model=tiny", "guidance=5,7.5", "batch_size=1,2"])
    assert default_name(["dry_run=true"]) == "default"
    assert default_name(["batch_size=auto", "dry_run=false"]) == "default"


def test_hydra_settings_are_left_out():
    plain = default_name(["model=tiny", "guidance=5,7.5"])
    assert plain == default_name(["model=tiny", "hydra.launcher.num_processes=2", "guidance=5,7.5"])
    assert plain == default_name(["hydra/launcher=basic", "model=tiny", "guidance=5,7.5", "hydra.verbose=true"])


def test_no_overrides_is_default():
    assert default_name([]) == "default"


def test_the_same_command_gives_the_same_name():
    command = ["model=tiny", "prompt='a cat, on a mat'", "guidance=3,5", "seed=range(0,4)"]
    names = {default_name(list(command)) for _ in range(5)}
    assert len(names) == 1
    assert_safe(names.pop())


def test_names_are_short_however_many_keys():
    keys = ["prompt", "negative_prompt", "prompt_2", "negative_prompt_2", "guidance", "steps", "width", "height", "seed"]
    name = default_name([f"{key}=1" for key in keys])
    assert len(name) <= 48 + 7
    assert_safe(name)


@pytest.mark.parametrize(
    "overrides",
    [
        ["prompt='../../etc/passwd'"],
        ["prompt=/abs/path"],
        ["prompt='a b c'"],
        ['prompt="double \\"quoted\\" words"'],
        ["prompt=\"it's\""],
        ["prompt='..'"],
        ["prompt='.hidden'"],
        ["prompt='a\\\\b'"],
        ["prompt='tab\there'"],
        ["prompt='東京の夜景'"],
        ["prompt_file=../prompts/list.txt"],
        ["prompt_file=/tmp/prompts.txt", "model=tiny"],
        ["model.id=/models/sdxl.safetensors"],
        ["+extra='..'"],
        ["~negative_prompt"],
        ["prompt='a:b|c*d?e<f>g'"],
        [f"prompt='{'/..' * 40}'"],
    ],
    ids=lambda o: " ".join(o)[:40],
)
def test_unsafe_characters_never_make_a_path_separator_or_a_leading_dot(overrides):
    name = default_name(overrides)
    assert_safe(name)


def test_distinct_sweeps_of_distinct_keys_get_distinct_names():
    assert default_name(["guidance=1,2"]) != default_name(["steps=1,2"])
    assert default_name(["guidance=1,2", "steps=3"]) != default_name(["guidance=1,2", "steps=4"])


@pytest.mark.parametrize(
    "first, second",
    [
        (["prompt='東京の夜景'"], ["prompt='北京の朝'"]),
        (["prompt='a b'"], ["prompt='a/b'"]),
        (["prompt='..'"], ["prompt='東京'"]),
    ],
    ids=["non-ascii", "space-vs-slash", "dots-vs-non-ascii"],
)
def test_distinct_fixed_values_get_distinct_names(first, second):
    # Two commands asking for different images must not share (and mix) one output dir.
    assert default_name(first) != default_name(second)
    assert_safe(default_name(first))
    assert_safe(default_name(second))
