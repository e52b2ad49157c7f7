"""The README's `python -m sweeper` examples run, so they cannot drift from the code.

Each command from the README's code blocks is run as written through the real
entry point (all in one interpreter), planned and checked with `dry_run=true`.
There is no hub here: where an example names a hub model (the default SDXL,
`refiner=sdxl`, a family's public checkpoint), that family's tiny model stands in, and with no Ray cluster to
join a local Ray (which a dry run never starts) stands in for `address=auto`. The files examples
read (photos/, masks/, wildcards/, loras/) are made first.

What the README says to run here (the demo of "Two commands", the cluster
commands marked "try it here", the report and replay commands on the demo's
sweep, the wildcard example, the LoRA maker and the first LoRA sweep) is also
run for real, in bash, exactly as written (placeholders such as `<name>` filled
in), offline with the tiny model. Not run: installs (.ci/run runs them), GPU
and multi-machine commands, and scripts/ (benchmarks and the GPU check).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import main_per_case, only_dir
from PIL import Image
from safetensors.numpy import save_file

README = Path(__file__).resolve().parents[1] / "README.md"


def code_lines() -> list[str]:
    """Every line of the README's code blocks (fenced or indented), continuations joined."""
    found, in_fence = [], False
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        if not in_fence and not line.startswith("    "):
            continue
        text = line if in_fence else line[4:]
        while text.rstrip().endswith("\\"):
            number += 1
            text = text.rstrip()[:-1] + " " + lines[number].strip()
        found.append(text)
    return found


def readme_commands() -> list[str]:
    """`python -m sweeper ...` commands of the README's code blocks."""
    return [line[line.index("python -m sweeper ") :] for line in code_lines() if "python -m sweeper " in line]


# Each family's public checkpoints: its tiny model stands in (there is no hub here).
STAND_INS = {
    "model=sdxl": "model=tiny", "model=sd15": "model=tiny-sd", "model=flux-dev": "model=tiny-flux", "model=flux-schnell": "model=tiny-flux-schnell",
    "model=sd35-medium": "model=tiny-sd35", "model=sd35-large": "model=tiny-sd35", "model=qwen-image": "model=tiny-qwen-image",
    "model=z-image-turbo": "model=tiny-z-image", "model=flux2-klein": "model=tiny-flux2-klein",
}


def as_tested(command: str) -> list[str]:
    """The command's arguments, with the offline stand-ins (a launcher's dry run submits nothing)."""
    args = shlex.split(command, comments=True)[3:]  # after `python -m sweeper`
    if "--help" in args:
        return args
    args = ["refiner=tiny" if arg == "refiner=sdxl" else STAND_INS.get(arg, arg) for arg in args]
    args = [arg for arg in args if arg != "hydra.launcher.address=auto"]  # no Ray cluster here: a local one stands in
    if not any(re.match(r"model=", arg) for arg in args):
        args.append("model=tiny")
    return [*args, "dry_run=true"]


def test_the_readme_examples_plan_as_written(tmp_path, tiny_models):
    (tmp_path / "photos").mkdir()
    (tmp_path / "masks").mkdir()
    (tmp_path / "wildcards").mkdir()
    Image.fromarray((np.indices((64, 64)).sum(axis=0) % 256).astype("uint8")).convert("RGB").save(tmp_path / "photos" / "a.png")
    Image.new("L", (64, 64), 255).save(tmp_path / "masks" / "a.png")
    (tmp_path / "wildcards" / "colors.txt").write_text("red\nemerald green\n")
    (tmp_path / "loras").mkdir()
    for name in ("style", "detail"):  # planning hashes the files; no model loads in a dry run
        save_file({"lora_unet_x.lora_down.weight": np.full((4, 8), len(name), dtype="float32")}, tmp_path / "loras" / f"{name}.safetensors")
    commands = readme_commands()
    assert len(commands) >= 12 and any("--help" in c for c in commands) and any("wildcards=" in c for c in commands)
    cases = [(command, as_tested(command)) for command in commands]
    slurm_bin = tmp_path / "bin"  # a login node's commands, for hydra/launcher=slurm (a dry run calls neither)
    slurm_bin.mkdir()
    for name in ("sbatch", "srun"):
        (slurm_bin / name).write_text("#!/bin/sh\nexit 1\n")
        (slurm_bin / name).chmod(0o755)
    results = main_per_case([args for _, args in cases], tmp_path, env={"PATH": f"{slurm_bin}:{os.environ['PATH']}"})["results"]
    for (command, args), (code, stderr) in zip(cases, results):
        assert code == 0, f"README: {command}\n{stderr}"
        if "--help" not in args:
            assert "sweeper: dry_run=true: stopping before rendering" in stderr, command


def _bash(line: str, cwd: Path, bin_dir: Path) -> subprocess.CompletedProcess:
    """The line as a user types it into bash, `python` being this interpreter."""
    cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(["bash", "-c", line], cwd=cwd, capture_output=True, text=True, timeout=600, env=env)


@pytest.mark.slow
def test_what_the_readme_says_to_run_here_runs_as_written(tmp_path, tiny_models):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    lines = code_lines()
    demo = next(line for line in lines if line.startswith("pip install torch") and "python -m sweeper -m" in line)
    demo = demo[demo.index("python -m sweeper -m") :]  # the install is the CI's (.ci/run)
    try_here = [line for line in lines if "# no SLURM: try it here" in line or "# a local Ray: try it here" in line]
    make_lora = [line for line in lines if line.startswith("python -m sweeper.make_lora")]
    lora_sweep = next(line for line in lines if line.startswith("python -m sweeper -m model=tiny lora=loras/style.safetensors"))
    assert len(try_here) == 2 and len(make_lora) == 1

    runs = {demo: "run0", try_here[0]: "run0", try_here[1]: "run1"}  # the two cluster commands sweep into one dir name
    for line, where in runs.items():
        before = set((tmp_path / where / "outputs" / "sweeps").glob("*"))
        result = _bash(line, tmp_path / where, bin_dir)
        assert result.returncode == 0, f"README: {line}\n{result.stderr[-3000:]}"
        (sweep,) = set((tmp_path / where / "outputs" / "sweeps").glob("*")) - before
        df = pd.read_parquet(sweep / "manifest.parquet")
        assert set(df.status) == {"ok"} and len(df) == (9 if line == demo else 8), line
        if line == demo:  # scored as it rendered: its report has the Scores section
            scored = pd.read_parquet(sweep / "scores.parquet")
            assert set(scored.image_id) == set(df.image_id) and sorted(scored.metric.unique()) == ["aesthetic", "clip"]
            assert 'id="scores"' in (sweep / "report.html").read_text(encoding="utf-8")
    demo_sweep, seeds_sweep = (next((tmp_path / "run0" / "outputs" / "sweeps").glob(name)).name for name in ("guidance_*", "model_seed-*"))
    image_id = pd.read_parquet(tmp_path / "run0" / "outputs" / "sweeps" / demo_sweep / "manifest.parquet").image_id.iloc[0]

    # Reports and replay on the demo's sweep: `<name>` is its dir, `a` and `b` the demo's and the seed sweep's.
    reports = [line for line in lines if line.startswith("python -m sweeper.report outputs/sweeps/")]
    replays = [line for line in lines if line.startswith("python -m sweeper.replay outputs/sweeps/<name>/")]
    assert len(reports) == 6 and len(replays) == 1
    for line in reports + replays:
        line = line.replace("<name>", demo_sweep).replace("<id>", image_id)
        line = line.replace("outputs/sweeps/a ", f"outputs/sweeps/{demo_sweep} ").replace("outputs/sweeps/b ", f"outputs/sweeps/{seeds_sweep} ")
        result = _bash(line, tmp_path / "run0", bin_dir)
        assert result.returncode == 0 and "Traceback" not in result.stderr, f"README: {line}\n{result.stderr[-3000:]}"
    demo_dir = tmp_path / "run0" / "outputs" / "sweeps" / demo_sweep
    assert (demo_dir / "report.html").is_file() and (demo_dir / f"compare-{seeds_sweep}.html").is_file()
    assert (tmp_path / "run0" / "grid.png").is_file()

    wildcards = [line for line in lines if line.startswith("mkdir -p wildcards")]
    wildcard_sweep = [line for line in lines if line.startswith("python -m sweeper") and "wildcards=wildcards" in line]
    assert len(wildcards) == 1 and len(wildcard_sweep) == 1
    made = _bash(f"{wildcards[0]} && {wildcard_sweep[0]}", tmp_path / "run2", bin_dir)
    assert made.returncode == 0, made.stderr[-3000:]
    df = pd.read_parquet(only_dir(tmp_path / "run2" / "outputs" / "sweeps") / "manifest.parquet")
    assert set(df.status) == {"ok"} and len(df) == 8 and "a red car, emerald green" in set(df.prompt)

    lora_dir = tmp_path / "lora"
    made = _bash(make_lora[0], lora_dir, bin_dir)
    assert made.returncode == 0, made.stderr
    assert (lora_dir / "loras" / "style.safetensors").is_file() and (lora_dir / "loras" / "detail.safetensors").is_file()
    swept = _bash(lora_sweep, lora_dir, bin_dir)
    assert swept.returncode == 0, swept.stderr
    df = pd.read_parquet(only_dir(lora_dir / "outputs" / "sweeps") / "manifest.parquet")
    assert set(df.status) == {"ok"} and len(df) == 6 and df.image_id.is_unique
