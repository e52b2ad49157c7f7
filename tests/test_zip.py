"""Zipped sweep axes (`hydra.sweeper.zip`): keys that vary together instead of crossing."""

from __future__ import annotations

import pandas as pd
import pytest
from conftest import only_dir
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from hydra_plugins.sweeper_plugins.planning_sweeper import sweep_axes, zipped_jobs
from sweeper.app import config_dir
from sweeper.errors import PlanError


def jobs(*overrides: str, zip: list[list[str]] | None = None) -> list[list[str]]:
    return zipped_jobs(sweep_axes(OverridesParser.create().parse_overrides(list(overrides))), zip or [])


def refusal(*overrides: str, zip: list[list[str]]) -> str:
    with pytest.raises(PlanError) as error:
        jobs(*overrides, zip=zip)
    message = str(error.value)
    assert "\n" not in message and message.startswith("invalid hydra.sweeper.zip: ")
    return message


# --- the pairing, without Hydra's machinery ------------------------------------------------------


def test_a_zip_group_pairs_values_by_position_instead_of_crossing():
    assert jobs("model=tiny", "scheduler=euler,dpmpp_2m", "steps=8,4", zip=[["scheduler", "steps"]]) == [
        ["model=tiny", "scheduler=euler", "steps=8"],
        ["model=tiny", "scheduler=dpmpp_2m", "steps=4"],
    ]


@pytest.mark.parametrize(
    "overrides",
    [
        ("model=tiny", "scheduler=euler,dpmpp_2m", "steps=8,4"),
        ("seed=range(0,3)", "guidance=5,7", "seed=4,5", "+foo=1"),  # a later override of a key wins, in place
        (),
    ],
)
def test_without_zip_the_jobs_are_hydras_cross_product_in_hydras_order(overrides):
    parsed = OverridesParser.create().parse_overrides(list(overrides))
    assert jobs(*overrides) == BasicSweeper.split_arguments(parsed, None)[0]


def test_zipped_keys_cross_the_other_keys_and_each_job_keeps_hydras_order():
    # The group is named backwards and a crossed key stands between its keys.
    got = jobs("scheduler=euler,ddim", "seed=0,1", "steps=2,3", zip=[["steps", "scheduler"]])
    assert got == [
        ["scheduler=euler", "seed=0", "steps=2"],
        ["scheduler=euler", "seed=1", "steps=2"],
        ["scheduler=ddim", "seed=0", "steps=3"],
        ["scheduler=ddim", "seed=1", "steps=3"],
    ]


def test_several_zip_groups_cross_each_other():
    got = jobs(
        "scheduler=euler,ddim,unipc",
        "steps=30,50,12",
        "width=512,1024",
        "height=768,1024",
        "seed=0,1",
        zip=[["scheduler", "steps"], ["width", "height"]],
    )
    assert len(got) == 3 * 2 * 2
    pairs = {(job[0], job[1]) for job in got}
    sizes = {(job[2], job[3]) for job in got}
    assert pairs == {("scheduler=euler", "steps=30"), ("scheduler=ddim", "steps=50"), ("scheduler=unipc", "steps=12")}
    assert sizes == {("width=512", "height=768"), ("width=1024", "height=1024")}
    assert len({tuple(job) for job in got}) == len(got)


def test_a_zip_of_single_values_is_one_job_and_add_overrides_are_named_without_plus():
    assert jobs("scheduler=euler", "steps=8", zip=[["scheduler", "steps"]]) == [["scheduler=euler", "steps=8"]]
    assert jobs("+a=1,2", "++b=x,y", zip=[["a", "b"]]) == [["+a=1", "++b=x"], ["+a=2", "++b=y"]]


def test_zipped_sweeps_of_different_lengths_are_refused_naming_keys_and_lengths():
    message = refusal("scheduler=euler,dpmpp_2m", "steps=8,4,2", zip=[["scheduler", "steps"]])
    assert "scheduler: 2 values, steps: 3 values" in message and "single" not in message


def test_a_single_value_is_not_broadcast_over_a_zipped_sweep():
    message = refusal("scheduler=euler,dpmpp_2m", "steps=8", zip=[["scheduler", "steps"]])
    assert "scheduler: 2 values, steps: 1 value" in message
    assert "a single value is not repeated" in message and "leave it out of the zip" in message


def test_a_zip_key_that_names_no_override_is_refused():
    message = refusal("scheduler=euler,ddim", "steps=2,3", zip=[["scheduler", "stepz"]])
    assert "'stepz'" in message and "hydra.sweeper.params" in message and "scheduler, steps" in message


@pytest.mark.parametrize("groups", [[["steps", "scheduler", "steps"]], [["scheduler", "steps"], ["steps", "seed"]]])
def test_a_key_in_two_zip_places_is_refused(groups):
    message = refusal("scheduler=euler,ddim", "steps=2,3", "seed=0,1", zip=groups)
    assert "'steps' is named twice" in message


def test_the_scheduler_steps_preset_zips_four_schedulers_with_their_steps():
    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=scheduler_steps"], return_hydra_config=True)
    assert cfg.model.name == "sdxl" and str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    sweeper = OmegaConf.to_container(cfg.hydra.sweeper, resolve=True)
    got = jobs(*(f"{key}={value}" for key, value in sweeper["params"].items()), zip=sweeper["zip"])
    assert got == [
        ["scheduler=euler", "steps=30"],
        ["scheduler=dpmpp_2m", "steps=20"],
        ["scheduler=unipc", "steps=12"],
        ["scheduler=heun", "steps=15"],
    ]


# --- the CLI (in the session's warm interpreter: conftest.warm_cli) --------------------------------------------------------------------------------


@pytest.mark.slow
def test_cli_renders_only_the_zipped_pairs_crossed_with_seeds_in_batches_of_jobs(tmp_path, warm_cli):
    zipped = ["hydra.sweeper.zip=[[scheduler,steps]]", "hydra.sweeper.max_batch_size=3"]
    result = warm_cli.run("-m", "model=tiny", "scheduler=euler,ddim", "steps=2,3", "seed=0,1", *zipped, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4 images from 4 jobs" in result.stderr
    df = pd.read_parquet(only_dir(tmp_path / "outputs" / "sweeps") / "manifest.parquet")
    assert set(df.status) == {"ok"} and sorted(df.job_num) == [0, 1, 2, 3]
    rows = sorted(zip(df.scheduler, df.steps, df.seed))
    assert rows == [("ddim", 3, 0), ("ddim", 3, 1), ("euler", 2, 0), ("euler", 2, 1)]


@pytest.mark.slow
def test_cli_refuses_unequal_zipped_sweeps_in_one_line_and_leaves_no_files(tmp_path, warm_cli):
    zipped = "hydra.sweeper.zip=[[scheduler,steps]]"
    result = warm_cli.run("-m", "model=tiny", "scheduler=euler,ddim", "steps=2,3,4", zipped, cwd=tmp_path, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines() == [
        "sweeper: error: invalid hydra.sweeper.zip: the keys of a zip group need sweeps of the same length "
        "(scheduler: 2 values, steps: 3 values)"
    ]
    assert not (tmp_path / "outputs").exists()


@pytest.mark.slow
def test_cli_scheduler_steps_preset_is_four_zipped_jobs(tmp_path, warm_cli):
    result = warm_cli.run("experiment=scheduler_steps", "model=tiny", "dry_run=true", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "16 images from 4 jobs" in result.stderr  # 4 pairs x 4 seeds; crossed it would be 16 jobs
    assert not (tmp_path / "outputs").exists()
