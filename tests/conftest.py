"""Shared fixtures: a private tiny-model cache, the real CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


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


def only_dir(parent: Path) -> Path:
    """The single sub-directory of `parent` (a sweep or run dir)."""
    children = [child for child in parent.iterdir() if child.is_dir()]
    assert len(children) == 1, children
    return children[0]
