"""Big sweeps: nothing per job that grows with the sweep, settings checked once, few part
files, job returns made only when asked. Speed itself is measured by
`scripts/bench.py --scale`, not here; these tests count the work instead."""

from __future__ import annotations

import datetime as dt

import pyarrow.parquet as pq
from conftest import plan_config

from sweeper.storing import manifest, store
from sweeper.planning import plan as plan_module
from sweeper.planning.plan import Job, plan


def test_jobs_that_differ_in_seeds_or_prompts_are_checked_and_hashed_once(monkeypatch):
    base = plan_config()
    calls = []
    template = plan_module.job_template
    monkeypatch.setattr(plan_module, "job_template", lambda *a, **k: calls.append(1) or template(*a, **k))
    # As JobComposer makes them: each job a shallow copy sharing what it does not change.
    jobs = [Job(n, {**base, "seed": n, "prompt": f"p{n % 3}"}, (f"seed={n}",)) for n in range(2000)]
    specs = plan(jobs)
    assert len(specs) == 2000 and len(calls) == 1
    assert [s.job_num for s in specs[:3]] == [0, 1, 2] and specs[5].overrides == "seed=5"  # each job's own labels
    changed = [Job(n, {**base, "guidance": 3.0 + n % 2, "seed": n}) for n in range(10)]
    calls.clear()
    plan(changed)
    assert len(calls) == 10  # another value of a setting is checked anew (no identity shared here)
    assert plan(jobs[:3]) == [plan([job])[0] for job in jobs[:3]]  # the same specs as planned alone


def test_the_same_images_whether_settings_are_shared_or_not():
    shared = plan_config(guidance=6.0)
    a = plan([Job(n, {**shared, "seed": n}) for n in range(5)])
    b = plan([Job(n, plan_config(guidance=6.0, seed=n)) for n in range(5)])
    assert [s.image_id for s in a] == [s.image_id for s in b] and a == b


def test_rows_of_many_calls_go_into_few_part_files(tmp_path):
    specs = plan([Job(0, plan_config(seed=list(range(3000))))])
    parts = manifest.PartWriter(tmp_path)
    now = dt.datetime.now(dt.timezone.utc)
    for start in range(0, 3000, 16):
        parts.add([manifest.row(spec, store.image_path(spec), "error", "x", started_at=now, finished_at=now) for spec in specs[start : start + 16]])
    parts.close()
    files = list((tmp_path / manifest.PARTS_DIR).glob("part-*.parquet"))
    assert len(files) == 3  # 1024 rows a part, not one per call
    assert sum(pq.read_metadata(f).num_rows for f in files) == 3000
    assert manifest.merge(tmp_path).num_rows == 3000 and not (tmp_path / manifest.PARTS_DIR).exists()


def test_job_returns_make_their_configs_only_when_asked(tmp_path):
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    from hydra_plugins.sweeper_plugins._core import _JobReturn
    from sweeper.app import config_dir
    from sweeper.planning.hydra_jobs import JobComposer

    with initialize_config_dir(config_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        master = loader.load_configuration("config", overrides=["model=tiny"], run_mode=RunMode.MULTIRUN)
        composer = JobComposer(loader, master)
        job = composer.job(["model=tiny", "guidance=7"], 3)
        made = []
        original = composer.hydra_config
        composer.hydra_config = lambda overrides: made.append(overrides) or original(overrides)
        returned = _JobReturn(job, composer, overrides=list(job.overrides), working_dir=str(tmp_path), task_name="sweeper")
        assert made == [] and returned._cfg is None  # nothing made yet
        assert OmegaConf.to_container(returned.cfg)["guidance"] == 7 and returned.cfg.model.id == "tiny-sdxl"
        assert returned.hydra_cfg.hydra.job.name == "sweeper" and made == [("model=tiny", "guidance=7")]
        assert returned.hydra_cfg is returned.hydra_cfg and len(made) == 1  # made once


def test_the_launcher_renders_the_plan_the_sweeper_made(tmp_path, monkeypatch):
    """One plan per command: the launcher takes the sweeper's (planning again was ~10 s at 100,000 jobs)."""
    import contextlib
    import io
    import sys

    from sweeper import app
    from sweeper.launching import launch, run
    from sweeper.app import main

    planned, rendered = [], []
    real = run.prepare
    monkeypatch.setattr(run, "prepare", lambda jobs, *args, **kwargs: planned.append(len(jobs)) or real(jobs, *args, **kwargs))
    monkeypatch.setattr(launch, "render", lambda prepared, *args, **kwargs: rendered.append(prepared) or run.Summary())
    monkeypatch.setattr(app, "finish", lambda sweep_dir: None)  # nothing rendered: no manifest, no report to build
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", ["sweeper", "-m", "model=tiny", "seed=range(0,50)", "guidance=3,7", f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    with contextlib.redirect_stderr(io.StringIO()):
        main()
    assert planned == [100] and len(rendered) == 1 and len(rendered[0].todo) == 100
