"""End to end through the CLI: `python -m sweeper ...` in a subprocess, or in the session's warm
interpreter (conftest.warm_cli) where the test is about the command, not its process."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import CONTRACT_COLUMNS, main_per_case, only_dir, run_cli
from sweeper.configs import config_dir
from PIL import Image

pytestmark = pytest.mark.slow



def manifest_of(run_dir) -> pd.DataFrame:
    return pd.read_parquet(run_dir / "manifest.parquet")


def pixels(run_dir, row) -> np.ndarray:
    return np.asarray(Image.open(run_dir / row["path"]).convert("RGB"), dtype=np.int16)


PROBE = """
import json
from pathlib import Path
from hydra.experimental.callback import Callback

class Probe(Callback):  # a user's own Hydra callback, beside sweeper's
    def on_multirun_start(self, config, **kwargs):
        Path("probe.json").write_text(json.dumps({"start": str(config.hydra.sweep.dir)}))

    def on_multirun_end(self, config, **kwargs):
        seen = json.loads(Path("probe.json").read_text())
        Path("probe.json").write_text(json.dumps({**seen, "end": str(config.hydra.sweep.dir), "tasks": list(config.hydra.overrides.task)}))
"""


def test_multirun_renders_one_job_per_value_into_one_sweep_dir(tmp_path, warm_cli):
    (tmp_path / "probe.py").write_text(PROBE)
    result = warm_cli.run("-m", "model=tiny", "guidance=5,7.5,10", "+hydra.callbacks.probe._target_=probe.Probe", cwd=tmp_path,
                     env={"PYTHONPATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    probe = json.loads((tmp_path / "probe.json").read_text())  # Hydra's callbacks still run around our launcher
    assert (tmp_path / probe["start"]).resolve() == (tmp_path / probe["end"]).resolve() == sweep.resolve()
    assert probe["tasks"] == ["model=tiny", "guidance=5,7.5,10"]  # hydra.* overrides are Hydra's own, not the task's
    recorded = yaml.safe_load((sweep / "multirun.yaml").read_text())
    assert recorded["hydra"]["overrides"]["task"] == probe["tasks"] and recorded["guidance"] == 5.0
    df = manifest_of(sweep)
    assert CONTRACT_COLUMNS <= set(df.columns)
    assert len(df) == 3 and set(df.status) == {"ok"}
    assert sorted(df.guidance) == [5.0, 7.5, 10.0]
    assert sorted(df.job_num) == [0, 1, 2]
    assert set(df.model) == {"tiny"} and set(df.scheduler) == {"euler"} and set(df.model_id) == {"tiny-sdxl"}
    assert df.image_id.is_unique
    assert (sweep / "multirun.yaml").is_file()
    report = (sweep / "report.html").read_text(encoding="utf-8")  # every multirun ends with its report
    assert all(f"images/{image_id}.png" in report for image_id in df.image_id)
    pngs = sorted(p.name for p in (sweep / "images").glob("*.png"))
    assert pngs == sorted(f"{image_id}.png" for image_id in df.image_id)
    for _, row in df.iterrows():
        image = Image.open(sweep / row["path"])
        assert image.size == (64, 64)
        params = image.text["parameters"]
        assert params.splitlines()[0] == row["prompt"]
        assert f"CFG scale: {row['guidance']:g}" in params and "Sampler: Euler" in params and "Seed: 0" in params
        embedded = json.loads(image.text["sweeper"])
        assert embedded["image_id"] == row["image_id"] and embedded["spec"]["guidance"] == row["guidance"]
    # One progress bar for the whole sweep, not one per job or pipeline call.
    assert "3 images from 3 jobs" in result.stderr
    assert "3/3" in result.stderr and "/1 [" not in result.stderr and "it/s" not in result.stderr
    assert not (sweep / ".manifest-parts").exists()


def test_single_run_writes_the_same_layout_into_its_run_dir(tmp_path, warm_cli):
    result = warm_cli.run("model=tiny", "seed=[1,2]", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    run_dir = only_dir(tmp_path / "outputs" / "runs")
    df = manifest_of(run_dir)
    assert sorted(df.seed) == [1, 2] and set(df.status) == {"ok"}
    assert all((run_dir / path).is_file() for path in df.path)
    assert (run_dir / ".hydra" / "config.yaml").is_file() and (run_dir / "report.html").is_file()


def test_the_same_command_resumes_its_default_dir_rendering_nothing_twice(tmp_path, warm_cli):
    first = run_cli("-m", "model=tiny", "seed=0,1", "guidance=5", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    assert re.fullmatch(r"guidance_model_seed-[0-9a-f]{6}", sweep.name)  # keys, no values
    before = {p.name: p.stat().st_mtime_ns for p in (sweep / "images").iterdir()}

    # The same command, in another order, in another interpreter (the warm one: the name must not depend on the process).
    again = warm_cli.run("-m", "guidance=5", "seed=0,1", "model=tiny", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert "2 already done, 0 to render" in again.stderr and "nothing to render" in again.stderr
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "images").iterdir()} == before

    more = warm_cli.run("-m", "model=tiny", "seed=0,1,2", "guidance=5", cwd=tmp_path)  # more values: the same dir
    assert more.returncode == 0, more.stderr
    assert "2 already done, 1 to render" in more.stderr and only_dir(tmp_path / "outputs" / "sweeps") == sweep
    df = manifest_of(sweep)
    assert sorted(df.seed) == [0, 1, 2] and df.image_id.is_unique
    assert {p.name: p.stat().st_mtime_ns for p in (sweep / "images").iterdir() if p.name in before} == before
    assert len(list((sweep / "images").iterdir())) == 3


def test_refiner_ensemble_and_img2img(tmp_path, warm_cli):
    result = warm_cli.run(
        "-m", "model=tiny", "refiner=tiny", "refiner.mode=ensemble,img2img", "refiner.split=0.5,0.75", "steps=4",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = manifest_of(sweep)
    assert len(df) == 4 and set(df.status) == {"ok"}
    assert set(df.refiner) == {"tiny"} and set(df.refiner_id) == {"tiny-sdxl-refiner"}
    assert set(df.refiner_mode) == {"ensemble", "img2img"} and set(df.refiner_split) == {0.5, 0.75}
    images = [pixels(sweep, row) for _, row in df.iterrows()]
    assert len({image.tobytes() for image in images}) == 4, "split and mode must change the pixels"
    params = Image.open(sweep / df.path[0]).text["parameters"]
    assert "Refiner: tiny-sdxl-refiner" in params and "Refiner switch at:" in params


BAD_INPUT = [
        (["steps=0"], "steps=0"),
        (["width=100"], "width=100"),
        (["height=-8"], "height=-8"),
        (["guidance=-1"], "guidance=-1"),
        (["refiner=tiny", "refiner.split=1.5"], "refiner.split=1.5"),
        (["refiner=tiny", "refiner.split=0"], "refiner.split=0"),
        (["scheduler=bogus"], "scheduler=bogus"),
        (["model=bogus"], "model=bogus"),
        (["seed=abc"], "seed='abc'"),
        (["seed=1.5"], "seed=1.5"),
        (["prompt=[]"], "prompt=[]"),
        (["model=sdxl"], "model=tiny"),
        (["guidance=5,-2"], "guidance=-2"),
        (["guidance=inf"], "guidance=Infinity"),
        (["name=../../elsewhere"], "name='../../elsewhere'"),
        (["seed=range(0,30)", "max_images=20"], "max_images=20"),
        (["prompt_file=/no/such/prompts.txt"], "prompt_file='/no/such/prompts.txt': no such file"),
        (["batch_size=0"], "batch_size=0"),
        (["dtype=float8"], "dtype='float8'"),
        (["device=tpu"], "device='tpu'"),
        (["model=tiny-sd", "refiner=tiny"], "refiner"),
        (["hydra.sweep.dir=/etc/hostname/sweep", "hydra.run.dir=/etc/hostname/run"], "/etc/hostname is not a directory"),
]


def test_bad_input_is_refused_in_one_line_before_anything_loads(tmp_path):
    runs = [[*mode, "model=tiny", *args] for args, _ in BAD_INPUT for mode in (["-m"], []) if mode or "," not in " ".join(args)]
    named = [named for args, named in BAD_INPUT for mode in (["-m"], []) if mode or "," not in " ".join(args)]
    report = main_per_case(runs, tmp_path)  # one interpreter for all of them
    for args, name, (code, stderr) in zip(runs, named, report["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1, (args, stderr)
        assert lines[0].startswith("sweeper: error: ") and name in lines[0], (args, lines[0])
    assert not report["torch"] and not report["outputs"], "refused before torch loads, leaving no files"
    result = run_cli("-m", "model=tiny", "steps=0", cwd=tmp_path, timeout=60)  # and through `python -m sweeper` itself
    assert result.returncode == 2 and result.stderr.strip() == "sweeper: error: invalid steps=0: must be an integer >= 1", result.stderr


def test_offline_hub_model_says_offline_and_names_the_tiny_model(tmp_path, warm_cli):
    result = warm_cli.run("-m", "model=sdxl", cwd=tmp_path, timeout=60)
    assert result.returncode == 2
    assert "stabilityai/stable-diffusion-xl-base-1.0" in result.stderr and "offline" in result.stderr
    assert "model=tiny" in result.stderr and "Traceback" not in result.stderr
    assert "(hf download)" in result.stderr  # huggingface_hub's current command line (huggingface-cli is deprecated)


def test_dry_run_prints_count_and_estimate_and_writes_nothing(tmp_path, warm_cli):
    result = warm_cli.run("-m", "model=tiny", "seed=range(0,8)", "guidance=3,5", "dry_run=true", cwd=tmp_path, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "16 images from 16 jobs" in result.stderr and "estimated" in result.stderr
    assert "dry_run=true" in result.stderr
    assert not (tmp_path / "outputs").exists()
    single = warm_cli.run("model=tiny", "seed=[1,2,3]", "dry_run=true", cwd=tmp_path, timeout=60)
    assert single.returncode == 0 and "3 images from 1 job" in single.stderr
    assert not (tmp_path / "outputs").exists()


# Each case in turn in one fresh interpreter, the heavy modules listed after each: sys.modules only grows,
# so a case that imported one shows it whatever ran before (one interpreter start instead of three).
LIGHT_CHECK = """
import json, sys
from sweeper.app import main
for args in json.loads(sys.argv[1]):
    sys.argv = ["sweeper", *args]
    code = 0
    try:
        main()
    except SystemExit as exit:
        code = exit.code
    print("heavy:", sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules), "code:", code)
"""
LIGHT = [["--help"], ["-m", "model=tiny", "seed=range(0,100)", "dry_run=true"], ["-m", "model=tiny", "steps=0"]]


@pytest.fixture(scope="module")
def light_runs(tmp_path_factory) -> dict[str, str]:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", LIGHT_CHECK, json.dumps(LIGHT)], cwd=tmp_path_factory.mktemp("light"), capture_output=True,
                            text=True, timeout=60)
    lines = [line for line in result.stdout.splitlines() if line.startswith("heavy:")]
    assert len(lines) == len(LIGHT), result.stdout + result.stderr
    return {" ".join(args): line + "\n" + result.stdout + result.stderr for args, line in zip(LIGHT, lines)}


@pytest.mark.parametrize("args", LIGHT)
def test_help_planning_and_validation_import_neither_torch_nor_diffusers(light_runs, args):
    assert light_runs[" ".join(args)].startswith("heavy: []"), light_runs[" ".join(args)]


def test_help_lists_groups_and_the_config_the_overrides_compose(tmp_path, warm_cli):
    result = warm_cli.run("model=tiny-sd", "steps=7", "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    models, schedulers = (", ".join(sorted(name[:-5] for name in os.listdir(os.path.join(config_dir(), group)) if name.endswith(".yaml")))
                          for group in ("model", "scheduler"))
    assert f"  scheduler: {schedulers}\n" in result.stdout and schedulers.startswith("auto, ddim, deis, dpm2, dpmpp_2m,")
    assert f"  model: {models}\n" in result.stdout
    assert {"sd15", "sdxl", "tiny", "tiny-sd", "tiny-flux"} <= set(models.split(", "))
    assert "\nsteps: 7\n" in result.stdout and "\nwidth: 64\n" in result.stdout and "  id: tiny-sd\n" in result.stdout
    assert not (tmp_path / "outputs").exists()
    bad = warm_cli.run("model=nope", "--help", cwd=tmp_path)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [f"sweeper: error: invalid model=nope: no such option; allowed: {models}"]


def test_prompts_from_file_with_commas_and_non_ascii_and_every_key(tmp_path, warm_cli):
    prompts = ["a fox, in snow", "café olé, 日本の庭", "plain"]
    (tmp_path / "prompts.txt").write_text("\n".join(prompts[:2]) + "\n\n" + prompts[2] + "\n", encoding="utf-8")
    result = warm_cli.run(
        "-m", "model=tiny", "prompt_file=prompts.txt", "negative_prompt='blurry, dark'", "prompt_2=photo",
        "original_size=[128,128]", "target_size=[64,64]", "crops_coords_top_left=[0,8]",
        "negative_original_size=[32,32]", "negative_target_size=[64,64]", "negative_crops_coords_top_left=[8,0]",
        "seed=7", "steps=2", "width=64", "height=72",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = manifest_of(sweep)
    assert sorted(df.prompt) == sorted(prompts)
    assert set(df.negative_prompt) == {"blurry, dark"} and set(df.prompt_2) == {"photo"}
    assert all(list(v) == [128, 128] for v in df.original_size)
    assert all(list(v) == [0, 8] for v in df.crops_coords_top_left)
    assert all(list(v) == [8, 0] for v in df.negative_crops_coords_top_left)
    assert set(df.height) == {72} and set(df.steps) == {2}
    for _, row in df.iterrows():
        image = Image.open(sweep / row["path"])
        assert image.size == (64, 72)
        assert image.text["parameters"].splitlines()[:2] == [row["prompt"], "Negative prompt: blurry, dark"]


def test_size_conditioning_changes_pixels(tmp_path, warm_cli):
    result = warm_cli.run("-m", "model=tiny", "original_size=null,[256,256]", "name=cond", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = tmp_path / "outputs" / "sweeps" / "cond"
    df = manifest_of(sweep)
    assert len(df) == 2
    a, b = (pixels(sweep, row) for _, row in df.iterrows())
    assert not np.array_equal(a, b)


def test_every_scheduler_renders_in_one_sweep(tmp_path, tiny_models):
    from conftest import composed_job, render_in_process

    names = "euler,euler_a,dpmpp_2m,dpmpp_2m_karras,dpmpp_sde_karras,ddim,pndm,lms,heun,unipc"
    sweep = tmp_path / "sweep"
    render_in_process(sweep, [composed_job(n, "model=tiny", f"scheduler={name}", "steps=3") for n, name in enumerate(names.split(","))])
    df = manifest_of(sweep)
    assert sorted(df.scheduler) == sorted(names.split(",")) and set(df.status) == {"ok"}
    labels = {Image.open(sweep / p).text["parameters"].splitlines()[-1].split("Sampler: ")[1].split(",")[0] for p in df.path}
    assert labels == {"Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE Karras", "DDIM", "PLMS", "LMS", "Heun", "UniPC"}
    assert len({pixels(sweep, row).tobytes() for _, row in df.iterrows()}) >= 8


def test_same_spec_same_pixels_in_any_sweep_and_order(tmp_path, tiny_models):
    from conftest import plan_config, render_in_process
    from sweeper.planning.plan import Job

    # Same batch composition (seed list [3, 4] in one job), different sweeps and job orders (in process:
    # the planning, batching and rendering of the CLI, without two interpreter starts).
    sweeps = {"a": (7.0, 5.0), "b": (2.0, 5.0, 9.0)}
    frames = {}
    for name, guidances in sweeps.items():
        out = tmp_path / name
        render_in_process(out, [Job(n, plan_config(guidance=g, seed=[3, 4])) for n, g in enumerate(guidances)])
        frames[name] = manifest_of(out).set_index("image_id")
    a, b = frames["a"], frames["b"]
    shared = sorted(set(a.index) & set(b.index))
    assert len(shared) == 2 and set(a.loc[shared].guidance) == {5.0}  # guidance 5, seeds 3 and 4
    for image_id in shared:
        assert np.array_equal(pixels(tmp_path / "a", a.loc[image_id]), pixels(tmp_path / "b", b.loc[image_id]))


def test_batch_size_changes_pixels_by_at_most_two_levels(tmp_path, tiny_models):
    from conftest import plan_config, render_in_process
    from sweeper.planning.plan import Job

    frames = {}
    for size in (1, 8):
        out = tmp_path / f"b{size}"
        render_in_process(out, [Job(0, plan_config(seed=list(range(8)), batch_size=size))])
        frames[size] = manifest_of(out).set_index("image_id")
    one, eight = frames[1], frames[8]
    assert sorted(one.index) == sorted(eight.index), "batch size must not change image ids"
    assert set(one.batch_size) == {1} and set(eight.batch_size) == {8} and sorted(eight.batch_index) == list(range(8))
    worst = max(np.abs(pixels(tmp_path / "b1", one.loc[i]) - pixels(tmp_path / "b8", eight.loc[i])).max() for i in one.index)
    assert worst <= 2
    # Different seeds really are different images.
    assert len({pixels(tmp_path / "b1", one.loc[i]).tobytes() for i in one.index}) == 8
