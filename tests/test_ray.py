"""`hydra/launcher=ray_actors` on a Ray of two nodes on this machine, 1 CPU each (one Ray start-up for
the module): pixels as one process renders them, an actor killed mid-sweep, a batch that kills every
actor it meets, a node lost mid-sweep, a local Ray that never joins the cluster Ray's temp dir names,
and settings refused before Ray starts."""

from __future__ import annotations

import collections
import dataclasses
import contextlib
import io
import os
import shutil
import signal
import shlex
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray
from conftest import composed_job, main_per_case, plan_config, render_in_process, run_cli
from PIL import Image

from sweeper.rendering import calls
from sweeper.storing import manifest, writers
from sweeper.launching import ray_actors
from sweeper import replay
from sweeper.planning import schedule
from sweeper.errors import PlanError
from sweeper.planning.plan import Job, plan

ACTORS = ["hydra/launcher=ray_actors", "hydra.launcher.workers=2", "hydra.launcher.cpus_per_worker=1"]
# The test cluster asks for no token (Ray's default token auth would have to be handed to every driver).
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"}


@dataclasses.dataclass
class Cluster:
    address: str  # the head's GCS
    tmp: Path  # RAY_TMPDIR under which the head lives: Ray's default temp dir `tmp/ray`, as /tmp/ray is by default
    second: Path  # the second node's temp dir


def ray_start(*args: str, log) -> subprocess.Popen:
    """A Ray node of this machine that lives as long as the process (`ray start --block`, which stops the node when it ends)."""
    return subprocess.Popen(
        [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--num-cpus=1", "--disable-usage-stats", *args],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **RAY_ENV},
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def pids_naming(folder: Path) -> dict[int, list[str]]:
    """The processes whose command line names `folder` (a Ray node's temp dir): pid -> arguments."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            arguments = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0") if entry.name.isdigit() else []
        except OSError:
            continue
        if any(str(folder) in argument for argument in arguments):
            found[int(entry.name)] = arguments
    return found


def raylet_of(folder: Path) -> int:
    (pid,) = [pid for pid, arguments in pids_naming(folder).items() if arguments[0].endswith("/raylet")]
    return pid


def children_of(parent: int) -> list[int]:
    """The processes whose parent is `parent` (a raylet's workers: their command lines no longer name its temp dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if stat and int(stat.rpartition(")")[2].split()[1]) == parent:
            found.append(int(entry.name))
    return found


@pytest.fixture(scope="module")
def cluster(tiny_models):
    """A head and a second node (`ray start --address`, its own temp dir and resources), 1 CPU each; this process
    joins the head, and the sweeps below use its Ray (a Ray already running in the process): 2 actors, one on each
    node. The test that kills the second node runs after all that need it."""
    base = Path(tempfile.mkdtemp(prefix="sweeper-ray-test-"))  # short: Ray's socket paths must fit in 107 bytes
    saved = {key: os.environ.get(key) for key in RAY_ENV}
    os.environ.update(RAY_ENV)  # this process's driver, and the commands it starts
    nodes = []
    with open(base / "ray-start.log", "w") as log:
        try:
            nodes.append(ray_start("--head", f"--port={free_port()}", "--include-dashboard=false", f"--temp-dir={base / 'ray'}", log=log))
            deadline, bootstrap = time.monotonic() + 120, base / "ray" / "ray_current_cluster"  # written by `ray start --head`
            while not bootstrap.exists() and nodes[0].poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            address = bootstrap.read_text().strip()
            nodes.append(ray_start(f"--address={address}", f"--temp-dir={base / 'second'}", '--resources={"second": 1}', log=log))
            ray.init(address=address, logging_level="ERROR", log_to_driver=False, namespace="sweeper")
            while len([node for node in ray.nodes() if node["Alive"]]) < 2 and time.monotonic() < deadline:
                time.sleep(0.1)
            assert ray.cluster_resources().get("CPU") == 2, (base / "ray-start.log").read_text()[-3000:]
            yield Cluster(address, base, base / "second")
        finally:
            ray.shutdown()
            for node in nodes:
                node.terminate()
            for node in nodes:
                node.wait(timeout=60)
            for pid in pids_naming(base):  # none should be left; any that is goes (ours: named by our temp dir)
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            for key, value in saved.items():
                if value is None:
                    del os.environ[key]
                else:
                    os.environ[key] = value
            shutil.rmtree(base, ignore_errors=True)


def sweep(*args: str) -> tuple[int, str]:
    """`python -m sweeper -m ARGS` in this process (its Ray is the module's): exit code and stderr."""
    from sweeper.app import main

    saved, err, code = sys.argv, io.StringIO(), 0
    sys.argv = ["sweeper", "-m", *args]
    try:
        with contextlib.redirect_stderr(err):
            main()
    except SystemExit as exit:
        code = exit.code
    finally:
        sys.argv = saved
    return code, err.getvalue()


def counting_writes(monkeypatch) -> collections.Counter:
    """How often the driver writes each image (calls.write, on its writer threads)."""
    written: collections.Counter = collections.Counter()
    real = calls.write

    def write(encoded, *args):
        written.update(spec.image_id for spec in encoded.specs)
        real(encoded, *args)

    monkeypatch.setattr(calls, "write", write)
    return written


def lifecycle(monkeypatch) -> list[str]:
    """ray.init and ray.shutdown as the command calls them, joining (address=auto) the module's Ray, which
    stays up: this process looks not yet joined until the command's ray.init, and joined until its shutdown."""
    events, joined = [], [False]

    def init(**settings) -> None:
        events.append(f"init {settings['address']}")
        joined[0] = True

    def shutdown() -> None:
        events.append("shutdown")
        joined[0] = False

    monkeypatch.setattr(ray, "is_initialized", lambda: joined[0])
    monkeypatch.setattr(ray, "init", init)
    monkeypatch.setattr(ray, "shutdown", shutdown)
    return events


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path)).astype(int)


def test_two_actors_render_what_one_process_renders_quietly_and_a_rerun_renders_nothing(tmp_path, cluster):
    """The real `python -m sweeper`, joining the running Ray (address=auto) as on a cluster; the actors score what they render."""
    out = tmp_path / "sweep"
    args = ["model=tiny", "steps=2", "guidance=3,7", "seed=range(0,4)", *ACTORS, "hydra.launcher.address=auto", f"hydra.sweep.dir={out}",
            "score=[clip]", "scorer=tiny"]
    done = run_cli("-m", *args, cwd=tmp_path, env={"RAY_ADDRESS": cluster.address})
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
    assert all(line.startswith("sweeper:") for line in lines) and done.stdout == "", done.stderr  # no Ray log lines, no dashboard
    df = pd.read_parquet(out / manifest.MANIFEST)
    assert len(df) == 8 and df.image_id.is_unique and set(df.status) == {"ok"}
    assert set(df["rank"]) == {0, 1} and set(df.world_size) == {2} and set(df.host) == {socket.gethostname()}
    assert not list((out / writers.CLAIMS_DIR).iterdir())
    assert {replay.read(out / path).threads for path in df.path} == {1}  # each actor's torch threads: its cpus_per_worker

    import torch

    alone, threads = tmp_path / "alone", torch.get_num_threads()
    jobs = [composed_job(num, "model=tiny", "steps=2", f"guidance={g}", f"seed={s}") for num, (g, s) in enumerate((g, s) for g in (3, 7) for s in range(4))]
    torch.set_num_threads(1)  # on the CPU, pixels depend on it
    try:
        render_in_process(alone, jobs)
    finally:
        torch.set_num_threads(threads)
    for path in df.path:  # the actors' batches are the one process's batches: bit-identical
        assert np.array_equal(pixels(out / path), pixels(alone / path)), path
    # Each image scored once, by the actor that rendered it: the values this process gives its PNG.
    from sweeper.scoring.models import Scoring
    from sweeper.scoring.sweep import Images

    scored = pd.read_parquet(out / "scores.parquet")
    assert sorted(scored.image_id) == sorted(df.image_id) and set(scored.metric) == {"clip"} and set(scored.scorer) == {"tiny-clip"}
    here = Images(None, Scoring(("clip",), "tiny-clip", "tiny-aesthetic", "tiny-clip", "tiny-clip"), "cpu")
    here.add(list(df.image_id), [pixels(out / path).astype("uint8") for path in df.path], list(df.prompt))
    assert dict(zip(scored.image_id, scored.value)) == pytest.approx({row["image_id"]: row["value"] for row in here.held}, abs=1e-4)

    kept = {path: (out / path).stat().st_mtime_ns for path in df.path}
    with pytest.MonkeyPatch.context() as patch:
        joins = lifecycle(patch)
        code, stderr = sweep(*args)
        assert code == 0 and "nothing to render" in stderr and "lack a" not in stderr, stderr
        code, stderr = sweep(*args[:-2], "score=[clip,aesthetic]", "scorer=tiny")  # stored unscored: said with the command that scores them
    assert code == 0 and "nothing to render" in stderr, stderr
    (line,) = [line for line in stderr.splitlines() if "lack a clip or aesthetic score" in line]
    command = line.split(": ", 2)[2].removesuffix(" scores them")
    assert line.startswith("sweeper: 8 stored image(s) lack a clip or aesthetic score: python -m sweeper.score ") and "--aesthetic-model tiny-aesthetic" in command
    from sweeper import score

    assert score.main(shlex.split(command)[3:]) == 0
    assert set(pd.read_parquet(out / "scores.parquet").metric) == {"clip", "aesthetic"}
    assert {path: (out / path).stat().st_mtime_ns for path in df.path} == kept
    assert joins == ["init auto", "shutdown"] * 2  # joined to learn the cluster's device, left with nothing to render


def test_an_actor_killed_mid_sweep_loses_nothing_and_renders_nothing_twice(tmp_path, cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written, joins = counting_writes(monkeypatch), lifecycle(monkeypatch)
    out = tmp_path / "sweep"
    killed = []

    def kill_actor_0_once_images_land() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((out / "images").glob("*.png")):
            time.sleep(0.02)
        for found in ray.util.list_named_actors():
            if found.startswith("sweeper-") and found.endswith("-0"):
                ray.kill(ray.get_actor(found), no_restart=False)  # Ray restarts it
                killed.append(found)

    killer = threading.Thread(target=kill_actor_0_once_images_land)
    killer.start()
    code, stderr = sweep("model=tiny", "steps=3", "batch_size=1", "seed=range(0,16)", *ACTORS, "hydra.launcher.address=auto", f"hydra.sweep.dir={out}")
    killer.join()
    assert code == 0, stderr
    assert joins == ["init auto", "shutdown"]  # one join, before planning, left once all is written
    assert len(killed) == 1 and "sweeper: Ray actor 0 died; its batch goes to the next free actor" in stderr, stderr
    df = pd.read_parquet(out / manifest.MANIFEST)
    assert sorted(df.seed) == list(range(16)) and set(df.status) == {"ok"}
    assert written == collections.Counter(df.image_id) and set(written.values()) == {1}  # nothing written twice
    assert not list((out / writers.CLAIMS_DIR).iterdir())


def test_a_batch_that_kills_every_actor_it_meets_becomes_error_rows(tmp_path, cluster, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SWEEPER_FAULT", "die:seed=3")  # the actor rendering seed 3 SIGKILLs itself
    out = tmp_path / "sweep"
    code, stderr = sweep("model=tiny", "steps=2", "batch_size=1", "seed=range(0,6)", *ACTORS, "hydra.launcher.max_retries=1", f"hydra.sweep.dir={out}")
    assert code == 1, stderr
    df = pd.read_parquet(out / manifest.MANIFEST).set_index("seed")
    assert sorted(df.index) == list(range(6)) and set(df.drop(index=3).status) == {"ok"}
    assert df.loc[3, "status"] == "error" and df.loc[3, "error"].startswith("not rendered: its Ray actor died 2 times rendering this batch")
    assert not (out / df.loc[3, "path"]).exists()
    assert "sweeper: error: 1 image(s) failed (first: not rendered: its Ray actor died 2 times" in stderr
    assert not list((out / writers.CLAIMS_DIR).iterdir())


def test_a_node_lost_mid_sweep_loses_nothing_and_the_pool_spans_both_nodes(tmp_path, cluster, monkeypatch):
    """`workers=2` without cpus_per_worker: the actors share a machine's CPUs (here 1 each), so one lands on
    each node; the second node's raylet and its workers SIGKILLed mid-sweep (the node lost). Kills that node:
    after it, no test needs both."""
    monkeypatch.chdir(tmp_path)
    written = counting_writes(monkeypatch)
    out = tmp_path / "sweep"
    seen = {}

    def kill_the_second_node_once_images_land() -> None:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not list((out / "images").glob("*.png")):
            time.sleep(0.02)
        actors = [actor for actor in ray._private.state.actors().values() if actor["Name"].startswith("sweeper-") and actor["State"] == "ALIVE"]
        seen.update(nodes={actor["Address"]["NodeID"] for actor in actors}, landed=len(list((out / "images").glob("*.png"))))
        raylet = raylet_of(cluster.second)
        workers = children_of(raylet)
        os.kill(raylet, signal.SIGKILL)
        for worker in workers:  # with it, as a machine going down takes them (alone, they notice within seconds)
            os.kill(worker, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_second_node_once_images_land)
    killer.start()
    code, stderr = sweep("model=tiny", "steps=2", "batch_size=1", "seed=range(0,8)", "hydra/launcher=ray_actors", "hydra.launcher.workers=2",
                         "hydra.launcher.address=auto", f"hydra.sweep.dir={out}")
    killer.join()
    assert code == 0, stderr
    assert seen["nodes"] == {node["NodeID"] for node in ray.nodes()}, seen  # one actor on each node
    assert seen["landed"] < 8 and "died; its batch goes to the next free actor" in stderr, (seen, stderr)
    df = pd.read_parquet(out / manifest.MANIFEST)
    assert sorted(df.seed) == list(range(8)) and set(df.status) == {"ok"}
    assert written == collections.Counter(df.image_id) and set(written.values()) == {1}  # nothing written twice
    assert not list((out / writers.CLAIMS_DIR).iterdir())


def test_a_local_ray_is_its_own_and_never_joins_the_cluster_rays_temp_dir_names(tmp_path, cluster):
    """address: null used to be ray.init(address=None), which joins the cluster that `ray_current_cluster` in
    Ray's temp dir names: another user's too, where that dir is the shared /tmp/ray. Here the module's cluster
    is that one (RAY_TMPDIR points at it). The real command, on this machine's CPUs: workers=2 share them."""
    shared = cluster.tmp / "ray"
    assert (shared / "ray_current_cluster").read_text().strip() == cluster.address
    drivers, sessions = {job["JobID"] for job in ray._private.state.jobs()}, sorted(shared.iterdir())
    private = Path(tempfile.mkdtemp(prefix="t", dir="/tmp"))  # TMPDIR of the command; short, for Ray's socket paths
    try:
        out = tmp_path / "sweep"
        done = run_cli(
            "-m", "model=tiny", "steps=1", "seed=0,1", "batch_size=1", "hydra/launcher=ray_actors", "hydra.launcher.workers=2",
            f"hydra.sweep.dir={out}", cwd=tmp_path, env={"RAY_TMPDIR": str(cluster.tmp), "TMPDIR": str(private)},
        )
        assert done.returncode == 0, done.stderr
        lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip()]
        assert all(line.startswith("sweeper:") for line in lines) and done.stdout == "", done.stderr  # a quiet Ray start too
        assert {job["JobID"] for job in ray._private.state.jobs()} == drivers  # no driver of the command joined
        assert sorted(shared.iterdir()) == sessions  # nor did its Ray start in the shared temp dir
        assert not list(private.glob("sweeper-ray-*"))  # its own temp dir, removed once it stopped
    finally:
        shutil.rmtree(private, ignore_errors=True)
    df = pd.read_parquet(out / manifest.MANIFEST)
    assert len(df) == 2 and set(df.status) == {"ok"} and set(df["rank"]) == {0, 1}
    assert {replay.read(out / path).threads for path in df.path} == {max(1, (os.cpu_count() or 1) // 2)}  # the CPUs split


def test_a_local_ray_starts_as_local_in_a_temp_dir_of_this_users_removed_at_the_end(monkeypatch):
    started = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **settings: started.append(settings))
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    assert ray_actors.connect({"address": None})
    (settings,) = started
    private = Path(settings["_temp_dir"])
    info = private.stat()
    assert settings["address"] == "local" and info.st_uid == os.getuid() and info.st_mode & 0o777 == 0o700
    ray_actors.leave()
    assert not private.exists()
    assert ray_actors.connect({"address": "auto"}) and started[1]["address"] == "auto" and "_temp_dir" not in started[1]


def test_bad_settings_are_refused_in_one_line_before_ray_starts(tmp_path):
    base = ["-m", "model=tiny", "seed=range(0,8)", "hydra/launcher=ray_actors", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    cases = {
        "hydra.launcher.worker=2": "unknown key hydra.launcher.worker; did you mean hydra.launcher.workers?",
        "hydra.launcher.max_retry=1": "unknown key hydra.launcher.max_retry; did you mean hydra.launcher.max_retries?",
        "hydra.launcher.address=localhost": "invalid hydra.launcher.address='localhost': allowed: null (a local Ray), auto (the running cluster) or ray://host:port",
        "hydra.launcher.workers=0": "invalid hydra.launcher.workers=0: allowed: auto or an integer >= 1",
        "hydra.launcher.gpus_per_worker=-1": "invalid hydra.launcher.gpus_per_worker=-1: must be null or a number >= 0",
        "hydra.launcher.max_retries=-1": "invalid hydra.launcher.max_retries=-1: must be an integer >= 0",
        f"hydra.launcher.workers={2 * os.cpu_count()}": (  # a local Ray could never place them
            f"{2 * os.cpu_count()} Ray actors x 1 CPU need {2 * os.cpu_count()} CPUs; this machine has {os.cpu_count()}: "
            "lower hydra.launcher.workers or hydra.launcher.cpus_per_worker"
        ),
    }
    results = main_per_case([[*base, *case.split(), "hydra.launcher.cpus_per_worker=1", "batch_size=1"] for case in cases], tmp_path)
    for (case, line), (code, stderr) in zip(cases.items(), results["results"]):
        assert code == 2 and stderr.strip().splitlines()[-1] == f"sweeper: error: {line}", (case, stderr)
    assert not results["torch"]


def test_a_cluster_that_cannot_be_joined_is_one_line(monkeypatch):
    """What ray.init(address="auto") raises where no Ray runs (Ray finds any on this machine, the module's too)."""

    def no_cluster(**settings):
        raise ConnectionError("Could not find any running Ray instance. Please specify the one to connect to.")

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", no_cluster)
    with pytest.raises(PlanError, match=r"^cannot join Ray at hydra.launcher.address=auto: Could not find any running Ray instance\."):
        ray_actors.connect({"address": "auto"})


def test_auto_workers_are_one_per_gpu_or_one_per_machine_of_cpus_and_a_number_of_workers_share_the_cpus():
    conf = {"workers": "auto", "gpus_per_worker": None, "cpus_per_worker": None}
    gpus = ray_actors.Resources(cpus=64, gpus=8, machine_cpus=32)
    assert ray_actors.pool(conf, "cuda", 100, gpus, must_fit=False) == ray_actors.Pool(workers=8, gpus=1, cpus=1)
    assert ray_actors.pool({**conf, "gpus_per_worker": 2}, "cuda", 100, gpus, must_fit=False).workers == 4
    assert ray_actors.pool(conf, "cuda", 3, gpus, must_fit=False).workers == 3  # never more actors than batches
    cpus = ray_actors.Resources(cpus=64, gpus=0, machine_cpus=32)
    assert ray_actors.pool(conf, "cpu", 100, cpus, must_fit=False) == ray_actors.Pool(workers=2, gpus=0, cpus=32)
    # A number of workers without GPUs share a machine's CPUs (they fit on the largest one, whatever the others).
    two = ray_actors.Resources(cpus=2, gpus=0, machine_cpus=2)
    assert ray_actors.pool({**conf, "workers": 2}, "cpu", 100, two, must_fit=True) == ray_actors.Pool(workers=2, gpus=0, cpus=1)
    assert ray_actors.pool({**conf, "workers": 2}, "cpu", 1, two, must_fit=True) == ray_actors.Pool(workers=1, gpus=0, cpus=2)
    assert ray_actors.pool({**conf, "workers": 4}, "cpu", 100, cpus, must_fit=False) == ray_actors.Pool(workers=4, gpus=0, cpus=8)
    assert ray_actors.pool({**conf, "workers": 4, "cpus_per_worker": 16}, "cpu", 100, cpus, must_fit=False).cpus == 16
    with pytest.raises(PlanError, match="^3 Ray actors x 1 CPU need 3 CPUs; this machine has 2"):
        ray_actors.pool({**conf, "workers": 3}, "cpu", 100, two, must_fit=True)
    with pytest.raises(PlanError, match="device=cuda needs GPUs: hydra.launcher.gpus_per_worker=0"):
        ray_actors.pool({**conf, "gpus_per_worker": 0}, "cuda", 100, gpus, must_fit=False)
    with pytest.raises(PlanError, match="device=cuda, but Ray finds no GPU here"):
        ray_actors.pool(conf, "cuda", 100, cpus, must_fit=True)


def test_actors_take_the_costliest_batch_of_the_models_they_have_loaded_first():
    from sweeper.launching.ray_dispatch import Queue

    (spec,) = plan([Job(0, plan_config())])

    def batch(model: str, steps: int, seed: int) -> schedule.Batch:
        return schedule.Batch((dataclasses.replace(spec, model_id=model, steps=steps, seed=seed),))

    a_cheap, a_dear, b_cheap, b_dear = batch("a", 2, 0), batch("a", 8, 1), batch("b", 2, 2), batch("b", 30, 3)
    queue = Queue([a_cheap, a_dear, b_cheap, b_dear])
    a, b = (schedule.load_key(x.specs[0]) for x in (a_cheap, b_cheap))
    assert queue.take(None) is b_dear  # nothing loaded yet: the costliest of all
    assert queue.take(a) is a_dear and queue.take(a) is a_cheap  # model a stays loaded while it has work
    queue.put_back(b_dear)  # its actor died: first again
    assert queue.take(a) is b_dear and queue.take(b) is b_cheap and not queue
