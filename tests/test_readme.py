"""The README's `python -m sweeper` examples run, so they cannot drift from the code.

Each command from the README's code blocks is run as written through the real
entry point (all in one interpreter), planned and checked with `dry_run=true`.
There is no hub here: where an example names a hub model (the default SDXL,
`refiner=sdxl`), `model=tiny` / `refiner=tiny` stand in, and with no Ray cluster to
join a local Ray (which a dry run never starts) stands in for `address=auto`. The files examples
read (photos/, masks/, wildcards/, loras/) are made first.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path

import numpy as np
from conftest import main_per_case
from PIL import Image
from safetensors.numpy import save_file

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """`python -m sweeper ...` commands of the README's code blocks (fenced or indented), continuations joined."""
    commands, in_fence = [], False
    lines = README.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if line.startswith("```"):
            in_fence = not in_fence
            continue
        text = line if in_fence else (line[4:] if line.startswith("    ") else "")
        start = text.find("python -m sweeper ")
        if start < 0 or (not in_fence and start != 0):
            continue
        command = text[start:]
        while command.rstrip().endswith("\\"):
            number += 1
            command = command.rstrip()[:-1] + " " + lines[number].strip()
        commands.append(command)
    return commands


def as_tested(command: str) -> list[str]:
    """The command's arguments, with the offline stand-ins (a launcher's dry run submits nothing)."""
    args = shlex.split(command, comments=True)[3:]  # after `python -m sweeper`
    if "--help" in args:
        return args
    args = ["refiner=tiny" if arg == "refiner=sdxl" else arg for arg in args]
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
