"""Stops by signal, through the real CLI: SIGTERM (`timeout`, batch systems, CI) and SIGHUP (a
closed terminal) end a sweep as Ctrl-C does, with the exit code of the signal."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest


def _stop_mid_sweep(tmp_path, signum: int, *extra: str, group: bool = False) -> tuple[subprocess.CompletedProcess, object]:
    sweep = tmp_path / "sweep"
    command = ["-m", "model=tiny", "seed=range(0,12)", "steps=2", "batch_size=2", f"hydra.sweep.dir={sweep}", *extra]
    process = subprocess.Popen(
        [sys.executable, "-m", "sweeper", *command], cwd=tmp_path, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while not list(sweep.glob("images/*.png")) and time.monotonic() < deadline:
        time.sleep(0.02)
    if group:  # as `timeout` and a closing terminal do: every process of the group gets it
        os.killpg(process.pid, signum)
    else:
        process.send_signal(signum)
    stderr = process.communicate(timeout=120)[1]
    return subprocess.CompletedProcess(command, process.returncode, "", stderr), sweep


@pytest.mark.slow
@pytest.mark.parametrize(
    "signum, extra, group",
    [
        (signal.SIGTERM, (), False),
        (signal.SIGHUP, ("hydra.launcher.num_processes=2",), True),
        (signal.SIGTERM, ("hydra/launcher=ray_actors", "hydra.launcher.workers=1"), False),  # ray.init takes SIGTERM over
    ],
    ids=["sigterm", "sighup-to-the-group-of-two-workers", "sigterm-to-the-ray-driver"],
)
def test_sigterm_and_sighup_stop_as_ctrl_c_does(tmp_path, tiny_models, signum, extra, group):
    result, sweep = _stop_mid_sweep(tmp_path, signum, *extra, group=group)
    name = signal.Signals(signum).name
    assert result.returncode == 128 + signum, result.stderr
    df = pd.read_parquet(sweep / "manifest.parquet")  # merged
    last = result.stderr.strip().splitlines()[-1]
    assert last == f"sweeper: stopped by {name}: {len(df)} of 12 images saved in {sweep}; run the same command to finish"
    assert "Traceback" not in result.stderr and 1 <= len(df) < 12 and set(df.status) == {"ok"}
    assert len(df) == len(list(sweep.glob("images/*.png")))  # the batches in flight were saved, whole
    assert "still to do" in (sweep / "report.html").read_text()
    if not extra:  # the same command finishes it; the rows saved at the stop lack no field its rows have
        again = subprocess.run([sys.executable, "-m", "sweeper", *result.args], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert again.returncode == 0, again.stderr
        done = pd.read_parquet(sweep / "manifest.parquet")
        later, stopped = done[~done.image_id.isin(df.image_id)], done[done.image_id.isin(df.image_id)]
        assert len(later) == 12 - len(df) and len(stopped) == len(df)
        always = [column for column in done.columns if later[column].notna().all()]
        gaps = stopped[always].isna().sum()
        assert not gaps.any(), gaps[gaps > 0].to_dict()  # host, versions, timings
