"""The warm interpreter of conftest.py (WARM_CLI) gives each case a fresh start: sweeper's module-level
caches empty, and no thread of an earlier case running on (a case that leaves one fails)."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import WarmCLI

PROBE = """
import json, threading, time
from pathlib import Path
from hydra.experimental.callback import Callback
from sweeper.planning import templates

class Seen(Callback):  # what the case finds when it starts, and leaves when it ends
    def on_multirun_start(self, config, **kwargs):
        Path("seen.json").write_text(json.dumps({"expansions": len(templates._EXPANSIONS), "threads": threading.active_count()}))

    def on_multirun_end(self, config, **kwargs):
        seen = json.loads(Path("seen.json").read_text())
        Path("seen.json").write_text(json.dumps({**seen, "expansions_at_end": len(templates._EXPANSIONS)}))

class Linger(Callback):  # a thread left running when the command ends
    def on_multirun_start(self, config, **kwargs):
        threading.Thread(target=time.sleep, args=(30,), name="lingering", daemon=True).start()
"""


def test_each_case_starts_with_empty_caches_and_a_case_leaving_a_thread_running_fails(tmp_path, tiny_models):
    (tmp_path / "probe.py").write_text(PROBE)
    command = ["-m", "model=tiny", "prompt='a {red|blue} car'", "dry_run=true"]
    env = {"PYTHONPATH": str(tmp_path)}
    warm = WarmCLI()  # its own: the failing case below ends its interpreter
    try:
        seen = []
        for _ in range(2):
            result = warm.run(*command, "+hydra.callbacks.seen._target_=probe.Seen", cwd=tmp_path, env=env)
            assert result.returncode == 0, result.stderr
            seen.append(json.loads((tmp_path / "seen.json").read_text()))
        assert seen[0]["expansions_at_end"] > 0 and seen[1]["expansions"] == 0  # planning filled the cache; the next case found it empty
        assert seen[1]["threads"] == seen[0]["threads"]
        with pytest.raises(AssertionError, match="left threads running: lingering"):
            warm.run(*command, "+hydra.callbacks.linger._target_=probe.Linger", cwd=tmp_path, env=env)
        assert warm.process is None  # the next case gets a fresh interpreter
    finally:
        warm.close(kill=True)
        shutil.rmtree(warm.log.parent, ignore_errors=True)
