"""One sweep dir, several commands (issue 31, part 7): each command is kept and shown,
and job numbers never repeat across them. Through the real CLI."""

from __future__ import annotations

import json

import pandas as pd
from conftest import only_dir

from sweeper.storing import commands, manifest

SMALL = ("model=tiny", "width=32", "height=32", "steps=2", "seed=0")


def test_commands_into_one_dir_keep_their_own_job_numbers_and_the_page_lists_them(tmp_path, warm_cli):
    first = ("-m", *SMALL, "guidance=5,6")
    for overrides in (first, ("-m", *SMALL, "guidance=7,8"), first):  # the same keys: one dir; the first again resumes
        result = warm_cli.run(*overrides, cwd=tmp_path)
        assert result.returncode == 0, result.stderr[-3000:]
    out = only_dir(tmp_path / "outputs" / "sweeps")

    frame = pd.read_parquet(out / manifest.MANIFEST)
    assert dict(zip(frame.guidance, frame.job_num)) == {5.0: 0, 6.0: 1, 7.0: 2, 8.0: 3}  # unique across commands
    recorded = [json.loads(line) for line in (out / commands.COMMANDS_FILE).read_text().splitlines()]
    assert [(entry["first_job"], entry["jobs"], entry["images"], entry["to_render"]) for entry in recorded] == [
        (0, 2, 2, 2), (2, 2, 2, 2), (0, 2, 2, 0),  # the re-run keeps its jobs' numbers and had nothing to render
    ]
    assert recorded[1]["overrides"] == [*SMALL, "guidance=7,8"]

    page = (out / "report.html").read_text()
    assert "Commands (3)" in page
    for guidance in ("guidance=5,6", "guidance=7,8"):
        assert f"python -m sweeper -m model=tiny width=32 height=32 steps=2 seed=0 {guidance}" in page


def test_a_damaged_or_foreign_commands_file_is_read_as_data(tmp_path):
    (tmp_path / commands.COMMANDS_FILE).write_text(
        '{"at": "x", "overrides": ["a=1"], "first_job": 0, "jobs": 3, "images": 3, "to_render": 3}\n'
        "not json\n"
        '{"at": "x", "overrides": "a=2", "first_job": 0, "jobs": 1, "images": 1, "to_render": 1}\n'
        '{"at": "x", "overrides": ["a=2"], "first_job": -5, "jobs": 1, "images": 1, "to_render": 1}\n'
    )
    assert len(commands.read(tmp_path)) == 1
    assert commands.first_job(tmp_path, ["a=1"]) == 0 and commands.first_job(tmp_path, ["a=9"]) == 3
    (tmp_path / commands.COMMANDS_FILE).unlink()
    (tmp_path / commands.COMMANDS_FILE).symlink_to("/etc/passwd")
    assert commands.read(tmp_path) == [] and commands.first_job(tmp_path, ["a=1"]) == 0
