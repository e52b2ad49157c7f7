"""Sharding a sweep over processes: `accelerate launch` ranks, spawned workers,
two "nodes" on loopback; and the fast composition of many jobs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import composed_job, only_dir, run_cli
from PIL import Image

SWEEP = ("-m", "model=tiny", "guidance=3,7", "seed=0,1,2", "steps=2", "batch_size=3")
# CPU kernels sum in an order that depends on the thread count (1 level apart, measured);
# accelerate launch runs each rank with one thread, so the reference does too.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}
ACCELERATE = [str(Path(sys.executable).with_name("accelerate")), "launch", "--mixed_precision", "no", "--dynamo_backend", "no"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def accelerate(*launch_args: str, sweep: tuple[str, ...], cwd: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [*ACCELERATE, *launch_args, "-m", "sweeper", *sweep],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


def finish(process: subprocess.Popen, timeout: int = 300) -> tuple[int, str]:
    _, stderr = process.communicate(timeout=timeout)
    return process.returncode, stderr


def images_by_id(sweep_dir: Path) -> dict[str, np.ndarray]:
    df = pd.read_parquet(sweep_dir / "manifest.parquet")
    return {row.image_id: np.asarray(Image.open(sweep_dir / row.path).convert("RGB")) for row in df.itertuples()}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory, warm_cli) -> Path:
    """The reference: the sweep rendered by one process (the session's warm interpreter, with one thread)."""
    cwd = tmp_path_factory.mktemp("one-process")
    result = warm_cli.run(*SWEEP, "hydra.launcher.num_processes=1", cwd=cwd, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    sweep = only_dir(cwd / "outputs" / "sweeps")
    assert set(pd.read_parquet(sweep / "manifest.parquet").world_size) == {1}
    return sweep


def assert_same_images(sweep: Path, reference: Path) -> pd.DataFrame:
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 6 and set(df.status) == {"ok"} and df.image_id.is_unique
    ours, theirs = images_by_id(sweep), images_by_id(reference)
    assert ours.keys() == theirs.keys()
    for image_id, image in ours.items():  # same batches, so bit-identical
        assert np.array_equal(image, theirs[image_id]), image_id
    return df


@pytest.mark.slow
def test_accelerate_launch_two_ranks_share_one_sweep_dir(tmp_path, one_process):
    code, stderr = finish(accelerate("--multi_gpu", "--num_processes", "2", "--main_process_port", str(free_port()), sweep=SWEEP, cwd=tmp_path))
    assert code == 0, stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")  # no hydra.sweep.dir given: still exactly one
    df = assert_same_images(sweep, one_process)
    assert set(df["rank"]) == {0, 1} and set(df.world_size) == {2}
    assert (sweep / "multirun.yaml").is_file() and not (sweep / ".manifest-parts").exists()
    assert stderr.count("6 images from 6 jobs") == 1  # announced by rank 0 only


@pytest.mark.slow
def test_spawned_workers_match_one_process(tmp_path, one_process):
    result = run_cli(*SWEEP, "hydra.launcher.num_processes=2", cwd=tmp_path, env=ONE_THREAD)
    assert result.returncode == 0, result.stderr
    df = assert_same_images(only_dir(tmp_path / "outputs" / "sweeps"), one_process)
    assert set(df["rank"]) == {0, 1} and set(df.world_size) == {2}


def two_nodes(tmp_path: Path, sweep: tuple[str, ...], env: dict[int, dict] = {}, args: dict[int, tuple] = {}) -> list[tuple[int, str]]:
    """Two `accelerate launch` "machines" of one rank each on loopback, forming one group;
    `env` and `args` add to a machine's environment and overrides."""
    port = str(free_port())
    nodes = [
        accelerate(
            "--multi_gpu", "--num_machines", "2", "--num_processes", "2", "--machine_rank", str(machine),
            "--main_process_ip", "127.0.0.1", "--main_process_port", port,
            sweep=sweep + args.get(machine, ()), cwd=tmp_path, env=env.get(machine, {}),
        )
        for machine in (0, 1)
    ]
    return [finish(node) for node in nodes]


@pytest.mark.slow
def test_two_nodes_one_killed_mid_sweep_the_other_stops_and_the_same_command_finishes(tmp_path, one_process):
    """A ${now:} sweep dir is still one dir; rank 1 is killed (-9) after its first image: rank 0
    does not wait for ever, it exits non-zero naming rank 1; a re-run renders only what is missing."""
    sweep_args = (*SWEEP, "hydra.sweep.dir=stamped/${now:%H-%M-%S-%f}")
    lost_after = {"SWEEPER_LOST_AFTER": "6"}
    (code0, stderr0), (code1, _) = two_nodes(tmp_path, sweep_args, env={0: lost_after, 1: {**lost_after, "SWEEPER_FAULT": "kill:png=1"}})
    assert code0 == 1 and code1 != 0, stderr0
    (line,) = [line for line in stderr0.splitlines() if line.startswith("sweeper: error:")]  # torchrun's report follows it
    assert line.startswith("sweeper: error: rank 1 was lost: no sign of life for 6 s") and "the same command finishes the sweep" in line, stderr0
    sweep = only_dir(tmp_path / "stamped")
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 6 and set(df.world_size) == {2}
    lost = df[df.status == "error"]
    assert len(lost) >= 1 and lost.error.str.contains("not rendered: rank 1 was lost").all()
    assert (df[df.status == "ok"]["rank"] == 1).sum() == 1  # the image it stored before it died is kept

    # The same command again (in process, with one thread as the ranks had): only what is missing renders.
    import torch

    from sweeper.launching import launch, run
    from sweeper.storing import manifest

    jobs = [composed_job(n, "model=tiny", f"guidance={g}", f"seed={s}", "steps=2", "batch_size=3")
            for n, (g, s) in enumerate((g, s) for g in (3, 7) for s in (0, 1, 2))]
    prepared = run.prepare(jobs, sweep)
    assert prepared.done == 6 - len(lost)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        launch.render(prepared, sweep, processes=1)
    finally:
        torch.set_num_threads(threads)
    manifest.merge(sweep)
    assert_same_images(sweep, one_process)


@pytest.mark.slow
def test_two_nodes_with_different_configs_both_stop_before_rendering_naming_the_difference(tmp_path, tiny_models):
    sweep_args = (*SWEEP, "hydra.sweep.dir=stamped/${now:%H-%M-%S-%f}")
    results = two_nodes(tmp_path, sweep_args, args={0: ("prompt=a dog",), 1: ("prompt=a cat",)})
    for code, stderr in results:
        assert code != 0, stderr  # the worker exits 2; accelerate launch turns any failure into 1
        (line,) = [line for line in stderr.splitlines() if line.startswith("sweeper: error:")]
        assert line.startswith("sweeper: error: rank 1 planned another sweep than rank 0 (6 images, rank 0 6 images); in job 0: "), stderr
        assert "prompt 'a dog' on rank 0, 'a cat' on rank 1" in line
    assert not (tmp_path / "stamped").exists()  # stopped before the sweep dir was made


@pytest.mark.slow
def test_hydras_basic_launcher_still_gives_one_manifest(tmp_path, warm_cli):
    # Hydra's basic launcher runs the jobs one after another in the command's own process: nothing here is
    # about that process, so the warm interpreter runs the command.
    result = warm_cli.run("-m", "model=tiny", "guidance=3,7", "seed=[0,1]", "steps=2", "hydra/launcher=basic", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = pd.read_parquet(sweep / "manifest.parquet")
    assert len(df) == 4 and set(df.status) == {"ok"} and sorted(set(df.job_num)) == [0, 1]
    assert not (sweep / ".manifest-parts").exists() and (sweep / "report.html").is_file()


@pytest.mark.slow
def test_a_dry_run_of_four_thousand_jobs_counts_them_all_and_writes_nothing(tmp_path, warm_cli):
    # How fast it plans is measured by scripts/bench_scale.py (its overhead_s), not timed here.
    result = warm_cli.run("-m", "model=tiny", "seed=range(0,2000)", "guidance=5,7", "dry_run=true", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "4000 images from 4000 jobs" in result.stderr
    assert not (tmp_path / "outputs").exists()


OVERRIDE_SETS = [
    ["model=tiny", "seed=3"],
    ["model=tiny", "guidance=7.5", "steps=2", "seed=-1"],
    ["scheduler=dpmpp_2m_karras", "refiner=tiny", "refiner.split=0.6", "model=tiny"],
    ["model=tiny-sd", "prompt='a fox, in snow'", "negative_prompt=blurry", "width=128"],
    ["experiment=tiny_guidance", "seed=[1,2]", "target_size=[64,64]"],
    ["model=tiny", "+extra=5", "prompt=${model.name} portrait"],
    ["model=tiny", "original_size=null", "crops_coords_top_left=[0,8]", "name=my-sweep"],
]


@pytest.fixture(scope="module")
def hydra_loader():
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    from sweeper.app import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        yield loader, loader.load_configuration("config", overrides=[], run_mode=RunMode.MULTIRUN)


@pytest.mark.parametrize("overrides", OVERRIDE_SETS, ids=" ".join)
def test_fast_composition_equals_hydra_composition(hydra_loader, overrides):
    from sweeper.planning.hydra_jobs import JobComposer, job_from_config

    loader, master = hydra_loader
    expected = job_from_config(loader.load_sweep_config(master, overrides), 0, overrides).config
    assert JobComposer(loader, master).task_container(overrides) == expected


def test_fast_composition_composes_once_per_group_choice(hydra_loader, monkeypatch):
    from sweeper.planning.hydra_jobs import JobComposer

    loader, master = hydra_loader
    calls = []
    original = loader.load_sweep_config
    monkeypatch.setattr(loader, "load_sweep_config", lambda m, o: calls.append(o) or original(m, o))
    jobs = [[f"scheduler={s}", f"seed={seed}", f"prompt=p{seed}", "guidance=2.5"] for s in ("euler", "ddim") for seed in range(50)]
    composed = JobComposer(loader, master).jobs(jobs)
    assert len(calls) == 2
    assert [job.config["seed"] for job in composed] == list(range(50)) * 2
    assert {job.config["scheduler"]["name"] for job in composed} == {"euler", "ddim"}
    assert composed[51].config["prompt"] == "p1" and composed[51].num == 51


def test_fast_jobs_share_no_nested_value_they_change(hydra_loader):
    from sweeper.planning.hydra_jobs import JobComposer

    loader, master = hydra_loader
    composer = JobComposer(loader, master)
    jobs = composer.jobs([["refiner=tiny", f"refiner.split={split}", "model.revision=r1"] for split in (0.5, 0.7)] + [["refiner=tiny"]])
    assert [job.config["refiner"]["split"] for job in jobs] == [0.5, 0.7, 0.8]
    assert [job.config["model"]["revision"] for job in jobs] == ["r1", "r1", None]


def test_bad_override_in_a_fast_job_is_hydras_error(hydra_loader):
    from hydra.errors import ConfigCompositionException

    from sweeper.planning.hydra_jobs import JobComposer

    loader, master = hydra_loader
    with pytest.raises(ConfigCompositionException, match="guidanse"):
        JobComposer(loader, master).task_container(["guidanse=5"])
