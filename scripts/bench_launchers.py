"""Benchmark: a SLURM array of local workers, or Ray actors, against sweeper's own processes
(`bench.py --launcher slurm-local`, `bench.py --launcher ray`).

The same tiny sweep (32 seeds x 8 guidance = 256 images, 4 steps, 64x64 unless
--seeds/--guidance/--steps/--size say otherwise) rendered twice on this machine,
each command in a cold process timed wall to wall:

  processes    python -m sweeper -m ... hydra.launcher.num_processes=W
  slurm_local  python -m sweeper -m ... hydra/launcher=slurm hydra.launcher.cluster=local hydra.launcher.workers=W
               (submitit's local executor: each worker its own interpreter, torch import
               and model load, the waiting command's polling, merge and report included)
  ray          python -m sweeper -m ... hydra/launcher=ray_actors hydra.launcher.workers=W
               hydra.launcher.cpus_per_worker=CPUS/W (a local Ray started by the command:
               Ray's start-up, the actors' imports and model loads, PNGs sent back and written)
  ray_joined   the same with hydra.launcher.address=auto, joining a Ray head started
               (`ray start --head`) before the clock, as on a running cluster: the
               per-image cost of actors apart from Ray's start-up, paid once per command

With --repeat N the commands run N times in turn (each into a fresh sweep dir)
and each keeps its fastest: wall times here vary by a few seconds run to run.

Both sweeps must hold the same images with the same pixels (same batches, same
thread counts: bit-identical). One JSON line last; `ratio` is slurm_local (or
ray) / processes (goal <= 1.15); with Ray also `ratio_joined`.

    python scripts/bench.py --launcher slurm-local
    python scripts/bench.py --launcher ray
    python scripts/bench.py --launcher slurm-local --seeds 8 --guidance 5,7     # quicker
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_scale import timed


def command(args, sweep_dir: Path, launcher: list[str]) -> list[str]:
    guidance = ",".join(f"{value:g}" for value in args.guidance_values)
    return [
        sys.executable, "-m", "sweeper", "-m", "model=tiny", f"seed=range(0,{args.seeds})", f"guidance={guidance}",
        f"steps={args.steps}", f"width={args.size}", f"height={args.size}", f"hydra.sweep.dir={sweep_dir}", *launcher,
    ]  # fmt: skip


def pixels_by_id(sweep_dir: Path) -> dict[str, object]:
    import numpy as np
    import pandas as pd
    from PIL import Image

    table = pd.read_parquet(sweep_dir / "manifest.parquet")
    return {row.image_id: np.asarray(Image.open(sweep_dir / row.path).convert("RGB")).astype(int) for row in table.itertuples() if row.status == "ok"}


@contextlib.contextmanager
def ray_head(cpus: int, work: Path):
    """A local Ray head for the command to join (address=auto), started and stopped outside its clock."""
    ray = [sys.executable, "-m", "ray.scripts.scripts"]
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    subprocess.run([*ray, "start", "--head", f"--num-cpus={cpus}", "--include-dashboard=false", f"--temp-dir={work / 'ray'}"],
                   check=True, capture_output=True, env=env)  # fmt: skip
    try:
        yield
    finally:
        subprocess.run([*ray, "stop", "--force"], capture_output=True, env=env)


def main(args) -> int:
    if args.model != "tiny" or args.device != "cpu":
        raise SystemExit(f"bench: --launcher {args.launcher} runs the tiny model on the CPU")
    work = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="sweeper-bench-launchers-"))
    work.mkdir(parents=True, exist_ok=True)
    workers = args.workers
    theirs = {
        "slurm-local": ("slurm_local", ["hydra/launcher=slurm", "hydra.launcher.cluster=local", f"hydra.launcher.workers={workers}",
                                        f"hydra.launcher.submitit_folder={work / 'submitit'}"]),
        "ray": ("ray", ["hydra/launcher=ray_actors", f"hydra.launcher.workers={workers}",
                        f"hydra.launcher.cpus_per_worker={max(1, (os.cpu_count() or 1) // workers)}"]),
    }[args.launcher]  # fmt: skip
    runs = {"processes": [f"hydra.launcher.num_processes={workers}"], theirs[0]: theirs[1]}
    if args.launcher == "ray":
        runs["ray_joined"] = [*theirs[1], "hydra.launcher.address=auto"]
    images = args.seeds * len(args.guidance_values)
    result = dict(images=images, workers=workers, steps=args.steps, size=args.size, cpus=os.cpu_count(), repeat=args.repeat)
    try:
        timed(command(args, work / "warm", ["dry_run=true"]), work)  # page cache and bytecode warm for both
        for _ in range(args.repeat):
            for name, launcher in runs.items():
                shutil.rmtree(work / name, ignore_errors=True)
                with ray_head(os.cpu_count() or 1, work) if name == "ray_joined" else contextlib.nullcontext():
                    wall, _, _ = timed(command(args, work / name, launcher), work)
                result[f"{name}_s"] = min(wall, result.get(f"{name}_s", wall))
                print(f"bench: {name}: {wall:.1f} s", file=sys.stderr, flush=True)
        ours, processes = pixels_by_id(work / theirs[0]), pixels_by_id(work / "processes")
        result["same_images"] = ours.keys() == processes.keys() and len(ours) == images
        result["max_pixel_diff"] = max((int(abs(ours[key] - processes[key]).max()) for key in ours.keys() & processes.keys()), default=None)
        result["ratio"] = result[f"{theirs[0]}_s"] / result["processes_s"]
        if "ray_joined_s" in result:
            joined = pixels_by_id(work / "ray_joined")
            result["same_images"] &= joined.keys() == processes.keys() and all((joined[key] == processes[key]).all() for key in joined)
            result["ratio_joined"] = result["ray_joined_s"] / result["processes_s"]
        result["load_average_1m"] = os.getloadavg()[0]  # other work on this machine skews wall times
    finally:
        if not args.out:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({key: round(value, 4) if isinstance(value, float) else value for key, value in result.items()}))
    return 0 if result["same_images"] and result["max_pixel_diff"] == 0 else 1
