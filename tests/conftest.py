"""Shared fixtures: a private tiny-model cache, the real CLI in a subprocess."""

from __future__ import annotations

import copy
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sweeper.planning.plan import Job

REPO = Path(__file__).resolve().parents[1]

# The manifest columns DESIGN.md promises users.
CONTRACT_COLUMNS = {
    "model", "refiner", "refiner_split", "refiner_mode", "scheduler", "prompt", "negative_prompt", "prompt_2",
    "negative_prompt_2", "seed", "guidance", "steps", "width", "height", "original_size", "target_size",
    "crops_coords_top_left", "negative_original_size", "negative_target_size", "negative_crops_coords_top_left",
    "mode", "batch_size", "image_id", "path", "status", "error", "job_num", "overrides", "model_id",
    "model_revision", "refiner_id", "dtype", "device", "rank", "world_size", "batch_index", "seconds",
    "started_at", "finished_at", "host", "sweeper", "diffusers", "torch",
}


@pytest.fixture(scope="session", autouse=True)
def sweeper_env(tmp_path_factory) -> Path:
    """Tests build the tiny models into their own cache and never try the hub."""
    cache = tmp_path_factory.mktemp("sweeper-cache")
    os.environ["SWEEPER_CACHE"] = str(cache)
    os.environ.update(OFFLINE)
    return cache


OFFLINE = {"HF_HUB_OFFLINE": "1"}  # read by huggingface_hub at import: a process started before sweeper_env needs it too


@pytest.fixture(autouse=True)
def hydra_version_base():
    """Hydra keeps its version base in a process-wide singleton that compose and
    hydra.main set; restore it so one test's Hydra defaults don't leak into the next."""
    from hydra.version import VersionBase

    saved = VersionBase.instance().getbase()
    yield
    VersionBase.instance().version_base = saved


@pytest.fixture
def fresh_runtime(monkeypatch):
    """A runtime of its own as this process's for the test: no pipelines, no caches."""
    from sweeper.rendering import runtime

    fresh = runtime.Runtime()
    monkeypatch.setattr(runtime, "_this_process", fresh)
    return fresh


@pytest.fixture(scope="session")
def tiny_models(sweeper_env) -> dict[str, Path]:
    """Build the three tiny models once per session (subprocesses find them in the cache)."""
    from sweeper.rendering.tiny import tiny_model_dir

    return {name: tiny_model_dir(name) for name in ("tiny-sdxl", "tiny-sdxl-refiner", "tiny-sd")}  # other families' tests build their own


def run_cli(*args: str, cwd: Path, module: str = "sweeper", timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m sweeper ARGS` as a user runs it, in `cwd`, with extra `env`."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
    )


class Started:
    """`python -m sweeper ARGS` started as run_cli would run it; `finish()` waits and answers as run_cli does."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None) -> None:
        self.args, self.out, self.err = args, tempfile.TemporaryFile(), tempfile.TemporaryFile()  # files: no pipe fills up unread
        self.process = subprocess.Popen(
            [sys.executable, "-m", "sweeper", *args], cwd=cwd, stdout=self.out, stderr=self.err,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )

    def finish(self, timeout: int = 300) -> subprocess.CompletedProcess:
        code = self.process.wait(timeout=timeout)
        text = []
        for file in (self.out, self.err):
            file.seek(0)
            text.append(file.read().decode("utf-8", "replace"))
        return subprocess.CompletedProcess(["sweeper", *self.args], code, *text)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# Runs `python -m sweeper ARGS` for many ARGS in one interpreter (one start-up instead of one per case).
MAIN_PER_CASE = """
import contextlib, io, json, os, sys
from sweeper.app import main
results = []
for args in json.loads(sys.argv[1]):
    sys.argv = ["sweeper", *args]
    err, code = io.StringIO(), 0
    with contextlib.redirect_stderr(err):
        try:
            main()
        except SystemExit as exit:
            code = exit.code
    results.append([code, err.getvalue()])
heavy = sorted(m for m in ("torch", "diffusers", "transformers", "ray") if m in sys.modules)
print(json.dumps({"results": results, "torch": "torch" in sys.modules, "heavy": heavy, "outputs": os.path.exists("outputs")}))
"""


def main_per_case(cases: list[list[str]], cwd: Path, env: dict | None = None) -> dict:
    """Each case's exit code and stderr, and whether torch (and which heavy modules) were imported or outputs/ made.

    The cases are dealt to two interpreters that run at once (Hydra's composing is single-threaded, and
    this machine has two cores); each runs its cases in turn, and what any of them imported or made counts.
    So cases must not depend on one another, nor start anything another could find (a Ray, say)."""
    count = max(1, min(INTERPRETERS, len(cases)))
    shares = [cases[start::count] for start in range(count)]
    started = [
        subprocess.Popen(
            [sys.executable, "-c", MAIN_PER_CASE, json.dumps(share)], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **(env or {})},
        )
        for share in shares
    ]
    reports = []
    for process in started:
        stdout, stderr = process.communicate(timeout=120)
        assert process.returncode == 0, stderr
        reports.append(json.loads(stdout.strip().splitlines()[-1]))
    return {
        "results": [reports[n % count]["results"][n // count] for n in range(len(cases))],
        "torch": any(report["torch"] for report in reports),
        "heavy": sorted({name for report in reports for name in report["heavy"]}),
        "outputs": any(report["outputs"] for report in reports),
    }


def refused_in_one_line(cases: list[tuple[list[str], str]], cwd: Path) -> dict:
    """Each case (`python -m sweeper` ARGS, a text its error holds) exits 2 with that one line on stderr,
    before torch is imported or outputs/ made (main_per_case). Returns main_per_case's answers."""
    answers = main_per_case([args for args, _ in cases], cwd)
    for (args, expected), (code, stderr) in zip(cases, answers["results"]):
        lines = stderr.strip().splitlines()
        assert code == 2 and len(lines) == 1 and expected in lines[0], (args, stderr)
    assert not answers["outputs"] and not answers["torch"]
    return answers


INTERPRETERS = max(1, min(2, os.cpu_count() or 1))


# `python -m sweeper ARGS` case after case in one interpreter that stays up for the session, for tests of
# what a command does rather than of its process: its imports (~10 s) are paid once instead of per
# command. Each case still loads its models (no pipeline, seed nonce or cached lookup is left from an
# earlier case: sweeper's module-level caches are emptied) and gets its own cwd, the environment run_cli
# would give it (its PYTHONPATH on sys.path, OMP_NUM_THREADS as torch's thread count), fresh fault
# counters and warning registries, and files of its own on descriptors 1 and 2, so it answers with what a
# subprocess's pipes would have caught, loggers and C code included. A case must leave no thread running
# (a process's end would stop it; here it would run on into the next case): one that does fails, and the
# next case gets a fresh interpreter. The real entry point's own behaviour (its exit, signals, kill -9,
# several processes, launchers) stays with run_cli, and so do commands that stop mid-render (a full disk):
# the claims they leave are freed by the end of their process, and the warm one lives on.
WARM_CLI = r"""
import gc, importlib, json, os, pkgutil, sys, tempfile, threading, time, traceback
channel = os.fdopen(int(sys.argv[1]), "w")
import torch
import tqdm
tqdm.tqdm.monitor_interval = 0  # tqdm's monitor thread never ends by itself (a process's end stops it): none here
import hydra_plugins.sweeper_plugins
import sweeper
from sweeper.rendering import pipelines, runtime
from sweeper import report
from sweeper.app import main
ENTRY = {"sweeper": main, "sweeper.report": lambda: sys.exit(report.main())}
OURS = ("sweeper", "hydra_plugins.sweeper_plugins")
for package in (sweeper, hydra_plugins.sweeper_plugins):  # all of them now: a module first imported by a case is seen empty too
    for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        if not found.name.endswith(".__main__"):
            importlib.import_module(found.name)
# Module-level containers empty at import are caches (template expansions, LoRA hashes, fault counters).
CACHES = [
    value for name, module in list(sys.modules.items()) if name.startswith(OURS)
    for key, value in vars(module).items() if not key.startswith("__") and isinstance(value, (dict, list, set)) and not value
]
base_pythonpath, base_path = os.environ.get("PYTHONPATH", "").split(os.pathsep), list(sys.path)
base_threads, base_cwd = torch.get_num_threads(), os.getcwd()
threads_before = set(threading.enumerate())
channel.write("ready\n")
channel.flush()
for line in sys.stdin:
    case = json.loads(line)
    os.environ.clear()
    os.environ.update(case["env"])
    extra = [path for path in os.environ.get("PYTHONPATH", "").split(os.pathsep) if path and path not in base_pythonpath]
    sys.path[:] = extra + base_path
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", base_threads)))
    for cache in CACHES:
        cache.clear()
    runtime._this_process = None  # no pipeline, seed nonce or cached lookup of an earlier case
    for name, module in list(sys.modules.items()):
        if name.partition(".")[0] in ("sweeper", "hydra_plugins"):
            for value in list(vars(module).values()):
                if callable(getattr(value, "cache_clear", None)):
                    value.cache_clear()
    gc.collect()
    for module in list(sys.modules.values()):
        registry = getattr(module, "__dict__", {}).get("__warningregistry__")
        if isinstance(registry, dict):
            registry.clear()
    os.chdir(case["cwd"])
    sys.argv = [case["module"], *case["args"]]
    out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    saved = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    code = 0
    try:
        ENTRY[case["module"]]()
    except SystemExit as exit:
        code = exit.code if isinstance(exit.code, int) else (0 if exit.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)
    os.close(saved[0])
    os.close(saved[1])
    os.chdir(base_cwd)
    for name, module in list(sys.modules.items()):  # what the case's PYTHONPATH brought in (a user's callback)
        if extra and str(getattr(module, "__file__", None) or "").startswith(tuple(extra)):
            del sys.modules[name]
    deadline, left = time.monotonic() + 5, set(threading.enumerate()) - threads_before
    for thread in left:  # a writer or pool the case shut down may take a moment to end
        thread.join(max(0.0, deadline - time.monotonic()))
    answer = [code]
    for file in (out, err):
        file.seek(0)
        answer.append(file.read().decode("utf-8", "replace"))
        file.close()
    answer.append(sorted(thread.name for thread in left if thread.is_alive()))
    channel.write(json.dumps(answer) + "\n")
    channel.flush()
os._exit(0)  # as python -m sweeper ends: without the ~2 s teardown of torch
"""


class WarmCLI:
    """`run(*args, cwd=..., env=...)` as run_cli answers it, from the session's warm interpreter."""

    def __init__(self) -> None:
        self.log, self.process, self.channel, self.ready = None, None, None, False

    def start(self) -> None:
        """Start the interpreter (it imports while the session goes on); the first case waits for it."""
        if self.process is not None and self.process.poll() is None:
            return
        self.log = self.log or Path(tempfile.mkdtemp(prefix="sweeper-warm-cli-")) / "log.txt"
        read, write = os.pipe()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-c", WARM_CLI, str(write)], stdin=subprocess.PIPE, stdout=log, stderr=log, pass_fds=(write,),
                text=True, cwd=self.log.parent, env={**os.environ, **OFFLINE, "PYTHONUNBUFFERED": "1"},
            )
        os.close(write)
        self.channel, self.ready = os.fdopen(read, "rb"), False

    def run(self, *args: str, cwd: Path, module: str = "sweeper", timeout: int = 300, env: dict | None = None) -> subprocess.CompletedProcess:
        # A command killed or stopped mid-render leaves claims that only the end of its process frees: run_cli.
        assert not (env or {}).get("SWEEPER_FAULT", "").startswith(("kill", "die", "enospc")), "this fault needs a process of its own: run_cli"
        self.start()
        if not self.ready:
            self._answer(300, "starting")
            self.ready = True
        case_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}  # as run_cli gives it, whatever the worker started with
        self.process.stdin.write(json.dumps({"args": list(args), "cwd": str(cwd), "module": module, "env": case_env}) + "\n")
        self.process.stdin.flush()
        code, stdout, stderr, threads = json.loads(self._answer(timeout, [module, *args]))
        if threads:  # they would run on into the next case: that one gets a fresh interpreter
            self.close(kill=True)
            raise AssertionError(f"{module} {' '.join(args)} left threads running: {', '.join(threads)}\n{stderr[-3000:]}")
        return subprocess.CompletedProcess([module, *args], code, stdout, stderr)

    def _answer(self, timeout: int, what) -> bytes:
        ready, _, _ = select.select([self.channel], [], [], timeout)
        line = self.channel.readline() if ready else b""
        if not line.endswith(b"\n"):
            self.close(kill=True)
            if not ready:
                raise subprocess.TimeoutExpired(what, timeout)
            raise AssertionError(f"the warm CLI died; its log:\n{self.log.read_text()[-5000:]}")
        return line

    def close(self, kill: bool = False) -> None:
        if self.process is not None:
            if kill:
                self.process.kill()
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
            self.channel.close()
            self.process = None


WARM = WarmCLI()


# Under `pytest -n 2 --dist loadgroup` (the README's test command) each file runs in one worker, so its
# module fixtures (a family's tiny sweep) are made once; the SLURM, Ray, signal, launcher, writer and
# crash tests, which share the one-node SLURM, kill workers or wait on them, run one after another in one worker.
ONE_AT_A_TIME = {"test_slurm.py", "test_slurm_real.py", "test_ray.py", "test_signals.py", "test_launcher.py", "test_writers.py", "test_crash_safety.py"}


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items) -> None:
    """Start the warm interpreter now if a selected test will use it: its imports overlap the tiny models' build."""
    for item in items:
        item.add_marker(pytest.mark.xdist_group("one_at_a_time" if item.path.name in ONE_AT_A_TIME else item.path.name))
    if any("warm_cli" in item.fixturenames for item in items):
        WARM.start()


def pytest_sessionfinish() -> None:
    WARM.close()
    if WARM.log is not None:
        shutil.rmtree(WARM.log.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def warm_cli(tiny_models) -> WarmCLI:
    """The session's warm `python -m sweeper` (see WARM_CLI): `warm_cli.run(*args, cwd=..., env=...)`."""
    return WARM


def only_dir(parent: Path) -> Path:
    """The single sub-directory of `parent` (a sweep or run dir)."""
    children = [child for child in parent.iterdir() if child.is_dir()]
    assert len(children) == 1, children
    return children[0]


# What `compose("config", overrides=["model=tiny"])` resolves to (plan is pure: a plain dict will do).
BASE = {
    "name": None,
    "prompt": "a photograph of an astronaut riding a horse",
    "prompt_file": None,
    "negative_prompt": None,
    "prompt_2": None,
    "negative_prompt_2": None,
    "seed": 0,
    "guidance": 5.0,
    "steps": 4,
    "width": 64,
    "height": 64,
    "original_size": None,
    "target_size": None,
    "crops_coords_top_left": None,
    "negative_original_size": None,
    "negative_target_size": None,
    "negative_crops_coords_top_left": None,
    "mode": "txt2img",
    "batch_size": "auto",
    "dtype": "auto",
    "device": "auto",
    "dry_run": False,
    "model": {"name": "tiny", "id": "tiny-sdxl", "revision": None, "family": "sdxl"},
    "refiner": {"name": "none"},
    "scheduler": {"name": "euler", "class_name": "EulerDiscreteScheduler", "label": "Euler", "kwargs": {}},
}
MODELS = {
    "tiny": {"name": "tiny", "id": "tiny-sdxl", "revision": None, "family": "sdxl"},
    "sdxl": {"name": "sdxl", "id": "stabilityai/stable-diffusion-xl-base-1.0", "revision": None, "family": "sdxl"},
    "tiny-sd": {"name": "tiny-sd", "id": "tiny-sd", "revision": None, "family": "sd15"},
}
SCHEDULERS = {
    "euler": {"name": "euler", "class_name": "EulerDiscreteScheduler", "label": "Euler", "kwargs": {}},
    "ddim": {"name": "ddim", "class_name": "DDIMScheduler", "label": "DDIM", "kwargs": {}},
    "dpmpp_2m": {"name": "dpmpp_2m", "class_name": "DPMSolverMultistepScheduler", "label": "DPM++ 2M", "kwargs": {}},
    "dpmpp_2m_karras": {
        "name": "dpmpp_2m_karras",
        "class_name": "DPMSolverMultistepScheduler",
        "label": "DPM++ 2M Karras",
        "kwargs": {"use_karras_sigmas": True},
    },
    "dpmpp_sde_karras": {
        "name": "dpmpp_sde_karras",
        "class_name": "DPMSolverSDEScheduler",
        "label": "DPM++ SDE Karras",
        "kwargs": {"use_karras_sigmas": True},
    },
}
REFINERS = {
    "none": {"name": "none"},
    "tiny": {"name": "tiny", "id": "tiny-sdxl-refiner", "revision": None, "split": 0.8, "mode": "ensemble"},
}


def plan_config(**changes) -> dict:
    """A job config as Hydra composes it for model=tiny; model/scheduler/refiner by option name."""
    out = copy.deepcopy(BASE)
    for key, value in changes.items():
        if key in ("model", "scheduler", "refiner") and isinstance(value, str):
            value = copy.deepcopy({"model": MODELS, "scheduler": SCHEDULERS, "refiner": REFINERS}[key][value])
        out[key] = value
    return out


def composed_job(num: int, *overrides: str) -> Job:
    """A Job as the CLI composes it from conf/ (Hydra's compose API), for in-process runs."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sweeper.app import config_dir

    with initialize_config_dir(config_dir(), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides))
    return Job(num, OmegaConf.to_container(cfg, resolve=True), tuple(overrides))


def render_in_process(out_dir: Path, jobs: list) -> None:
    """Plan, render and merge `jobs` into `out_dir` as the CLI does, without an interpreter start (~10 s)."""
    from sweeper.storing import manifest
    from sweeper.launching import run

    run.execute(run.prepare(jobs, out_dir), out_dir)
    manifest.merge(out_dir)
