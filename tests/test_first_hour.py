"""A new user's first hour: prompts typed on the command line, typos, Ctrl-C, the
grid early, dir names, file modes, reports, timing, and records that say what
really happened. Command-line messages go through the real `python -m sweeper`
(several cases per interpreter, as tests/test_modes.py does)."""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import main_per_case, only_dir, plan_config, render_in_process, run_cli

from sweeper.storing import manifest
from sweeper import report
from sweeper.launching import run
from sweeper.planning import schedule
from sweeper.cli_errors import quoted_override
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

A1111_PROMPTS = [
    "a fox, in snow",
    "a fox (masterpiece:1.2), [cat|dog], ((sharp)), <lora:x:0.5>",
    "it's a \"cat\" {red|blue} car",
    "back\\slash and ${not_a_key} and 100%",
]


@pytest.mark.parametrize("prompt", A1111_PROMPTS)
def test_every_a1111_prompt_has_one_quoted_form_that_hydra_reads_back_exactly(prompt):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeper.app import config_dir

    (token,) = shlex.split(quoted_override("prompt", prompt))  # one shell word
    with initialize_config_dir(config_dir(), version_base="1.3"):
        config = OmegaConf.to_container(compose("config", overrides=["model=tiny", token]), resolve=True)
    assert config["prompt"] == prompt


def test_the_command_line_says_how_to_type_what_hydra_rejects_and_names_the_closest_key(tmp_path):
    tricky = A1111_PROMPTS[1]
    cases = [
        (["model=tiny", "prompt=a fox (masterpiece:1.2)"], "type 'prompt=\"a fox (masterpiece:1.2)\"'"),
        (["model=tiny", "prompt=it's"], "type 'prompt=\"it'\"'\"'s\"'"),
        (["model=tiny", "prompt=a fox, in snow"], "splits it into several values at its commas"),
        (["model=tiny", "guidnace=7"], "unknown key guidnace; did you mean guidance?"),
        (["model=tiny", "+guidnace=7"], "unknown key guidnace; did you mean guidance?"),
        (["-m", "model=tiny", "+guidnace=7,8"], "unknown key guidnace; did you mean guidance?"),
        (["model=tiny", "model.idd=x"], "unknown key model.idd; did you mean model.id?"),
        (["model=tiny", "refiner.split=0.8"], "refiner=none has no split; choose a refiner first: refiner=sdxl or refiner=tiny"),
        (["-m", "model=tiny", "+refiner.split=0.8,0.9"], "refiner=none has no split"),
    ]
    fine = [
        (["-m", "model=tiny", *shlex.split(quoted_override("prompt", tricky)), "prompt_syntax=plain", "guidance=3,5", "dry_run=true"], "guidance (2) = 2 images from 2 jobs"),
        (["-m", "model=tiny", "prompt=a fox, in snow", "guidance=3,5", "seed=0,1,2", "dry_run=true"], "prompt (2) x guidance (2) x seed (3) = 12 images"),
        (["model=tiny", "dry_run=true"], "sweeper: 1 image from 1 job into"),
    ]
    report_ = main_per_case([args for args, _ in cases + fine], tmp_path)
    for (args, expected), (code, stderr) in zip(cases, report_["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith("sweeper: error:") and expected in lines[0], (args, stderr)
    for (args, expected), (code, stderr) in zip(fine, report_["results"][len(cases):]):
        assert code == 0 and expected in stderr, (args, stderr)
    assert not report_["torch"] and not report_["outputs"]  # refused (and dry runs) before anything loads or is written


@pytest.mark.slow
def test_ctrl_c_finishes_the_batch_in_flight_and_says_how_to_go_on(tmp_path, tiny_models):
    sweep = tmp_path / "sweep"
    command = ["-m", "model=tiny", "seed=range(0,12)", "steps=2", "batch_size=2", f"hydra.sweep.dir={sweep}"]
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeper", *command], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, preexec_fn=lambda: os.umask(0o002),
    )
    deadline = time.monotonic() + 120
    while not list(sweep.glob("images/*.png")) and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1]
    assert process.returncode == 130, stderr
    last = stderr.strip().splitlines()[-1]
    df = pd.read_parquet(sweep / "manifest.parquet")  # merged: pandas reads it
    assert last == f"sweeper: interrupted: {len(df)} of 12 images saved in {sweep}; run the same command to finish"
    assert "Traceback" not in stderr and 2 <= len(df) < 12 and set(df.status) == {"ok"} and len(df) % 2 == 0  # whole batches
    assert "still to do" in (sweep / "report.html").read_text()
    for path in [sweep / "manifest.parquet", *sweep.glob("images/*.png")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o664, path  # the umask's modes, not mkstemp's 0600
    jobs = [Job(n, plan_config(seed=seed, steps=2, batch_size=2)) for n, seed in enumerate(range(12))]
    assert run.prepare(jobs, sweep).done == len(df)  # the same command goes on from there


def test_interrupting_between_batches_stores_what_rendered(tmp_path, tiny_models):
    class StopAfterOne:
        calls = 0

        def is_set(self) -> bool:
            self.calls += 1
            return self.calls > 1

    from sweeper.errors import Interrupted

    prepared = run.prepare([Job(0, plan_config(seed=[0, 1, 2, 3], batch_size=2, steps=2))], tmp_path)
    with pytest.raises(Interrupted) as stopped:
        run.execute(prepared, tmp_path, stop=StopAfterOne())
    assert stopped.value.planned == 4 and len(manifest.merge(tmp_path)) == 2


def test_a_dry_run_on_an_existing_sweep_writes_nothing_and_counts_what_is_left(tmp_path, warm_cli):
    sweep = tmp_path / "sweep"
    render_in_process(sweep, [Job(0, plan_config(seed=[0, 1], steps=2))])
    run.write_plan(run.prepare([Job(0, plan_config(seed=[0, 1, 2], steps=2))], sweep), sweep)
    report.write_report(sweep)
    before = {path: path.stat().st_mtime_ns for path in sweep.rglob("*")}
    result = warm_cli.run("-m", "model=tiny", "seed=[0,1,2]", "steps=2", f"hydra.sweep.dir={sweep}", "dry_run=true", cwd=tmp_path)
    assert result.returncode == 0 and "2 already done, 1 to render" in result.stderr
    assert {path: path.stat().st_mtime_ns for path in sweep.rglob("*")} == before
    assert "1 of 3 planned images" in (sweep / "report.html").read_text()


def test_file_modes_follow_the_umask(tmp_path):
    from sweeper.storing import files

    files.write_atomic(tmp_path / "a.bin", b"x")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o666 & ~files._UMASK


def test_reports_keep_the_sweep_order_cut_long_labels_and_compare_into_their_own_file(tmp_path):
    from test_report import fake_sweep

    fake_sweep(tmp_path / "a", guidances=(10.0, 3.0, 7.5), seeds=range(1), fail=False)
    fake_sweep(tmp_path / "b", scheduler="ddim", guidances=(10.0, 3.0), seeds=range(1), fail=False)
    sweep = report.load_sweep(tmp_path / "a")
    assert sweep.values("guidance") == [3.0, 7.5, 10.0]  # numbers by value
    assert sweep.labels("prompt") == [sweep.rows[0]["prompt"], *{row["prompt"] for row in sweep.rows} - {sweep.rows[0]["prompt"]}]
    own = report.write_report(tmp_path / "a")
    compared = report.write_report(tmp_path / "a", compare=tmp_path / "b")
    assert own == tmp_path / "a" / "report.html" and compared == tmp_path / "a" / "compare-b.html"
    assert "compare" not in own.read_text().split('id="compare"')[0][-200:] and 'id="compare"' in compared.read_text()
    shorts = report.short_labels(["a red car, emerald green background, studio light", "a blue car, emerald green background, studio light"])
    assert shorts["a blue car, emerald green background, studio light"].startswith("a blue car, em")
    assert report.short_labels(["portrait of a man, in the style of watercolor", "portrait of a man, in the style of oil"])[
        "portrait of a man, in the style of oil"] == "…style of oil"


def test_text_values_come_in_the_order_the_sweep_gave_them(tmp_path):
    from test_report import write_manifest, base_row

    rows = [base_row(image_id=f"{n:020d}", path=f"images/{n:020d}.png", scheduler=name, job_num=n, prompt="p", seed=0)
            for n, name in enumerate(["unipc", "euler", "ddim"])]
    (tmp_path / "images").mkdir()
    write_manifest(tmp_path, rows)
    assert report.load_sweep(tmp_path).values("scheduler") == ["unipc", "euler", "ddim"]  # not alphabetical


def test_timing_keeps_loads_and_warm_up_apart_and_the_estimate_pays_start_up(tmp_path, tiny_models):
    # The first axis value's images used to be timed cold (issue 31: euler 2.49 s against 0.88 s), and
    # dropping warm-up rows dropped that value. A throwaway call warms each new pipeline and size up first.
    result = run_cli("-m", "model=tiny", "scheduler=euler,ddim", "width=32,48", "height=32", "seed=0,1", "steps=2", "batch_size=2", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    out = only_dir(tmp_path / "outputs" / "sweeps")
    df = pd.read_parquet(out / manifest.MANIFEST).sort_values("started_at")
    calls = df.groupby("started_at", sort=True)
    assert calls.ngroups == 4 and (calls.size() == 2).all()
    for _, size in df.groupby("width"):  # a warm-up once per shape (size, images per call), before its first call
        per_call = size.groupby("started_at", sort=True).warmup_seconds.first()
        assert per_call.notna().tolist() == [True, False]
    assert (df.seconds > 0).all() and df.warmup_seconds.dropna().gt(0).all()
    first = df[df.started_at == df.started_at.min()]
    window = (first.finished_at - first.started_at).dt.total_seconds()
    # the load and the warm-up are not charged to the images
    assert np.allclose(first.seconds * len(first) + first.load_seconds + first.warmup_seconds, window, atol=0.05)
    # Every value of every axis is timed, warm.
    loaded = report.load_sweep(out)
    for axis in ("scheduler", "width"):
        assert all(loaded.mean_seconds(rows) is not None for rows in loaded.by_value(axis).values())
    specs = plan([Job(0, plan_config())])
    assert schedule.startup_seconds(specs) >= schedule.STARTUP_SECONDS + schedule.LOAD_SECONDS["tiny"]
    assert schedule.startup_seconds([]) == 0


def test_the_warm_up_call_leaves_the_pixels_as_they_were(tiny_models, fresh_runtime):
    from sweeper.rendering.render import render_batch

    batch = schedule.Batch(tuple(plan([Job(0, plan_config(seed=[0, 1], steps=3, scheduler="dpmpp_2m"))])))
    cold = render_batch(batch, "cpu", fresh_runtime)
    warm = render_batch(batch, "cpu", fresh_runtime)
    assert cold.warmup_seconds is not None and warm.warmup_seconds is None
    assert np.array_equal(cold.images, warm.images)


def test_records_say_what_really_happened(tmp_path, monkeypatch):
    from sweeper import hub
    from sweeper.planning.prompts import prompt_rows

    # A model.id that points elsewhere is not labelled with the group it came from.
    sdxl_elsewhere = {"name": "sdxl", "id": "tiny-sdxl", "revision": None, "family": "sdxl"}  # model=sdxl model.id=...
    (spec,) = plan([Job(0, plan_config(model=sdxl_elsewhere), ("model=sdxl", "model.id=tiny-sdxl"))])
    assert spec.model == "tiny-sdxl"
    (spec,) = plan([Job(0, plan_config(model=sdxl_elsewhere), ("model=sdxl", "model.id=tiny-sdxl", "model.name=mine"))])
    assert spec.model == "sdxl"  # the name the config gives, when the user names it
    # refiner splits that cut the schedule in the same place: one note before rendering
    tiny = plan_config(refiner="tiny")["refiner"]
    specs = plan([Job(n, plan_config(refiner={**tiny, "split": split}, steps=4)) for n, split in enumerate((0.8, 0.9, 0.6))])
    assert run.notes(specs) == ["refiner.split 0.8 and 0.9 give the base the same 3 and the refiner the same 1 of 4 steps "
                                "(refiner.mode=ensemble): the same pictures under 2 image ids"]
    # the refiner's offline error names the refiner's tiny stand-in
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    with pytest.raises(PlanError, match="use refiner=tiny to try sweeper offline"):
        hub.check_available("refiner.id", "someone/refiner", None)
    # comments in a prompt file are not prompts
    (tmp_path / "p.txt").write_text("# my prompts\na fox\n  # another comment\na cat\n")
    rows, _ = prompt_rows({"prompt_file": str(tmp_path / "p.txt")})
    assert [row.prompt for row in rows] == ["a fox", "a cat"]
    # compile is a boolean (not the text 'false'), its mode beside it
    row = manifest.row(specs[0], "images/x.png", "ok", None)
    assert row["compile"] is False and row["compile_mode"] is None
    row = manifest.row(dataclasses.replace(specs[0], compile="max-autotune"), "images/x.png", "ok", None)
    assert row["compile"] is True and row["compile_mode"] == "max-autotune"


def test_torchsde_float_noise_does_not_break_the_progress_bar():
    import warnings

    from sweeper.rendering.render import quiet_torchsde

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with quiet_torchsde():
            warnings.warn("Should have tb<=t1 but got tb=14.614643096923828 and t1=14.614643.", UserWarning)
        warnings.warn("Should have tb<=t1 but got tb=2 and t1=1.", UserWarning)  # outside a render: shown
    assert len(caught) == 1


def test_the_config_keys_are_the_ones_planning_knows():
    import yaml

    from sweeper.app import config_dir
    from sweeper.planning.validate import CONFIG_KEYS

    config = yaml.safe_load((Path(config_dir()) / "config.yaml").read_text())
    assert set(config) - {"defaults", "hydra"} == set(CONFIG_KEYS)
