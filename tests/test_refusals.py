"""A refused command leaves the dir as it was: a fresh sweep dir is not made, an existing one is
not touched (no multirun.yaml, no plan.parquet), whatever refused it. Through the real CLI."""

from __future__ import annotations

from conftest import main_per_case, plan_config, render_in_process

from sweeper import report
from sweeper.launching import run
from sweeper.planning.plan import Job

REFUSED = [
    (["guidance=abc"], "invalid guidance="),
    (["guidnace=7"], "unknown key guidnace"),
    (["seed=range(0,20)", "max_images=10"], "invalid max_images=10"),
    (["lora=missing.safetensors"], "invalid lora='missing.safetensors'"),
    (["hydra.launcher.num_processes=0"], "invalid hydra.launcher.num_processes=0"),
    (["device=cuda"], "invalid device=cuda"),
    (["seed=random:0"], "invalid seed='random:0'"),
    (["hydra/launcher=slurm", "hydra.launcher.workers=0"], "invalid hydra.launcher.workers=0"),
    # a pool that a local Ray could never place: refused at planning, before Ray starts or anything is written
    (["hydra/launcher=ray_actors", "hydra.launcher.workers=2", "hydra.launcher.cpus_per_worker=64", "batch_size=1"], "Ray actors x 64 CPU need"),
]


def _state(folder):
    return {path: (path.stat().st_mtime_ns, path.stat().st_size) for path in folder.rglob("*")}


def test_a_refused_command_leaves_the_dir_as_it_was(tmp_path, tiny_models):
    sweep = tmp_path / "sweep"
    render_in_process(sweep, [Job(0, plan_config(seed=[0, 1], steps=2))])
    run.write_plan(run.prepare([Job(0, plan_config(seed=[0, 1], steps=2))], sweep), sweep)
    report.write_report(sweep)
    before = _state(sweep)
    common = ["-m", "model=tiny", "steps=2", "seed=0,1,2"]
    cases = [[*common, *args, f"hydra.sweep.dir={where}"] for where in (sweep, tmp_path / "fresh") for args, _ in REFUSED]
    answers = main_per_case(cases, tmp_path)
    for args, (code, stderr) in zip(cases, answers["results"]):
        lines = stderr.strip().splitlines()
        expected = REFUSED[cases.index(args) % len(REFUSED)][1]
        assert code == 2 and len(lines) == 1 and expected in lines[0], (args, stderr)
    assert _state(sweep) == before
    assert not (tmp_path / "fresh").exists() and not answers["outputs"] and not answers["torch"]
