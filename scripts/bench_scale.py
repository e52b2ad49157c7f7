"""Benchmark: what sweeper costs around the rendering of a big sweep (`bench.py --scale N`).

N images as N Hydra jobs on the tiny model (`-m seed=range(0,N)`, 1 step, 64x64),
in a cold process, then the same command again (nothing to render), then the
report opened in headless Chromium:

  wall_s           the whole command, interpreter start to exit
  render_s         the rendering window: first image started -> last image finished (manifest)
  overhead_s       wall_s - render_s: start-up, planning, announcing, storing, merging,
                   the report with its thumbnails, Hydra's job returns
  peak_rss_mb      the command's peak memory
  rerun_s          the same command again, which says "nothing to render"
  report_open_s    headless Chromium loading report.html to its first page of grids

    python scripts/bench.py --scale 20000      # goals: overhead <= 20 s, <= 1 GiB, re-run <= 10 s
    python scripts/bench.py --scale 100000     # goals: overhead <= 60 s, <= 2 GiB, re-run <= 20 s
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]


def timed(command: list[str], cwd: Path) -> tuple[float, int, str]:
    """(wall seconds, peak RSS in MB, stderr) of a command run as a child of this process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    tic = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - tic
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"bench: {' '.join(command[:6])}... failed:\n{stderr[-3000:]}")
    return wall, usage.ru_maxrss // 1024, stderr


def report_open_s(report: Path) -> float | None:
    """Seconds from the start of loading the report in headless Chromium to its first page of
    grids drawn, as the page itself records it (the browser's own start-up, ~1.4 s here, apart)."""
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        return None
    with tempfile.TemporaryDirectory() as profile:
        out = subprocess.run(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0", "--virtual-time-budget=2000",
             "--dump-dom", report.as_uri()],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
    found = re.search(r'data-ready-ms="(\d+)"', out.stdout)
    if not found or 'class="cell"' not in out.stdout:  # a blank page is a failure, not a missing number
        console = [line for line in out.stderr.splitlines() if ":CONSOLE" in line]
        raise SystemExit(f"bench: {report} drew no grid in Chromium: {console[:3]}")
    return int(found.group(1)) / 1000


def run(images: int, work: Path) -> dict:
    import pandas as pd

    sweep = work / "sweep"
    command = [sys.executable, "-m", "sweeper", "-m", "model=tiny", f"seed=range(0,{images})", "steps=1", f"hydra.sweep.dir={sweep}"]
    wall, rss, _ = timed(command, work)
    frame = pd.read_parquet(sweep / "manifest.parquet", columns=["status", "started_at", "finished_at"])
    render = (frame.finished_at.max() - frame.started_at.min()).total_seconds()
    rerun, rerun_rss, stderr = timed(command, work)
    if "nothing to render" not in stderr:
        raise SystemExit(f"bench: the re-run rendered something:\n{stderr[-2000:]}")
    return dict(
        scale_images=images, scale_ok=int((frame.status == "ok").sum()), wall_s=round(wall, 1), render_s=round(render, 1),
        overhead_s=round(wall - render, 1), peak_rss_mb=rss, rerun_s=round(rerun, 1), rerun_peak_rss_mb=rerun_rss,
        report_open_s=report_open_s(sweep / "report.html"), parts_left=len(list((sweep / ".manifest-parts").glob("*"))) if (sweep / ".manifest-parts").exists() else 0,
    )


def main(images: int, out: str | None) -> int:
    work = Path(out) if out else Path(tempfile.mkdtemp(prefix="sweeper-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        result = run(images, work)
    finally:
        if not out:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))
    return 0
