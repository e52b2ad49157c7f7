"""Shared fixtures: a private tiny-model cache, the real CLI in a subprocess."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sweeper.plan import Job

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
    os.environ["HF_HUB_OFFLINE"] = "1"
    return cache


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
    from sweeper import runtime

    fresh = runtime.Runtime()
    monkeypatch.setattr(runtime, "_this_process", fresh)
    return fresh


@pytest.fixture(scope="session")
def tiny_models(sweeper_env) -> dict[str, Path]:
    """Build the three tiny models once per session (subprocesses find them in the cache)."""
    from sweeper.tiny import TINY_MODELS, tiny_model_dir

    return {name: tiny_model_dir(name) for name in TINY_MODELS}


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
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
print(json.dumps({"results": results, "torch": "torch" in sys.modules, "heavy": heavy, "outputs": os.path.exists("outputs")}))
"""


def main_per_case(cases: list[list[str]], cwd: Path, env: dict | None = None) -> dict:
    """Each case's exit code and stderr, and whether torch (and which heavy modules) were imported or outputs/ made."""
    out = subprocess.run(
        [sys.executable, "-c", MAIN_PER_CASE, json.dumps(cases)], cwd=cwd, capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})}
    )
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


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
    from sweeper import manifest, run

    run.execute(run.prepare(jobs, out_dir), out_dir)
    manifest.merge(out_dir)
