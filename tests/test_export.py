"""Readable file names (issue 32, part 8): `python -m sweeper.export <sweep> <out> --pattern ...` links
(or copies) each ok image under a name made from its manifest columns, safely, idempotently."""

from __future__ import annotations

import errno
import os
import shutil

import pandas as pd
import pytest
from conftest import run_cli

from sweeper import export
from sweeper.export import MAX_NAME_BYTES, safe_name

PROMPTS = ["a fox in snow", "../../x", "/etc/passwd", " .hidden: a <cat> | *dog*?"]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, warm_cli):
    """A real sweep of hostile prompts (4 prompts x 2 guidance values), shared by this module's tests."""
    cwd = tmp_path_factory.mktemp("export")
    (cwd / "prompts.txt").write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    result = warm_cli.run("-m", "model=tiny", "width=64", "height=64", "steps=2", "seed=3", "guidance=5,7.5",
                          f"prompt_file={cwd / 'prompts.txt'}", "name=s", cwd=cwd)
    assert result.returncode == 0, result.stderr
    folder = cwd / "outputs" / "sweeps" / "s"
    assert len(pd.read_parquet(folder / "manifest.parquet")) == 8
    return folder


def copy_of(sweep, tmp_path):
    """A sweep of one's own to change (the files copied: inodes of their own)."""
    shutil.copytree(sweep, tmp_path / "sweep")
    return tmp_path / "sweep"


def run(*args) -> tuple[int, str, str]:
    return export.main([str(arg) for arg in args])


def test_names_as_asked_hard_links_and_an_idempotent_rerun(sweep, tmp_path, capsys):
    out = tmp_path / "named"
    assert run(sweep, out, "--pattern", "{seed}-{guidance}-{prompt:.40}") == 0
    assert capsys.readouterr().out.strip() == f"sweeper.export: 8 images in {out}: 8 linked, 0 copied, 0 present"
    df = pd.read_parquet(sweep / "manifest.parquet")
    expected = {safe_name(f"3-{row.guidance}-{row.prompt[:40]}") + ".png": row.path for row in df.itertuples()}
    assert set(os.listdir(out)) == set(expected)
    assert {"3-5.0-a fox in snow.png", "3-7.5-._._x.png", "3-5.0-_etc_passwd.png", "3-5.0-.hidden_ a _cat_ _ _dog__.png"} <= set(expected)
    for name, path in expected.items():
        assert os.stat(out / name).st_ino == os.stat(sweep / path).st_ino  # one file, two names

    assert run(sweep, out, "--pattern", "{seed}-{guidance}-{prompt:.40}") == 0  # again: nothing new
    assert "0 linked, 0 copied, 8 present" in capsys.readouterr().out
    assert set(os.listdir(out)) == set(expected)
    assert not (tmp_path / "x.png").exists() and not list(tmp_path.glob("**/passwd*"))  # nothing outside the out dir


def test_index_numbering_truncation_and_name_collisions(sweep, tmp_path, capsys):
    out = tmp_path / "numbered"
    assert run(sweep, out, "--pattern", "{index:05}-{prompt:.4}") == 0
    names = sorted(os.listdir(out))
    assert [name[:6] for name in names] == [f"{n:05}-" for n in range(8)]
    df = pd.read_parquet(sweep / "manifest.parquet").sort_values(["finished_at", "batch_index"])  # numbered as rendered
    assert names == [safe_name(f"{n:05}-{prompt[:4]}") + ".png" for n, prompt in enumerate(df.prompt)]
    assert all(len(name) <= len("00000-") + 4 + len(".png") for name in names)
    # Two images per name: the second gets -2; a re-run finds both where they are.
    collide = tmp_path / "by_seed"
    assert run(sweep, collide, "--pattern", "{seed}") == 0 and run(sweep, collide, "--pattern", "{seed}") == 0
    assert sorted(os.listdir(collide)) == ["3-2.png", "3-3.png", "3-4.png", "3-5.png", "3-6.png", "3-7.png", "3-8.png", "3.png"]
    assert "8 present" in capsys.readouterr().out.splitlines()[-1]
    assert run(sweep, tmp_path / "unset", "--pattern", "{index}-{subseed}x") == 0  # no subseed: empty
    assert sorted(os.listdir(tmp_path / "unset"))[:2] == ["0-x.png", "1-x.png"]


def test_copies_where_the_filesystem_cannot_link(sweep, tmp_path, monkeypatch, capsys):
    link = os.link

    def across_filesystems(src, dst, **kwargs):
        if "src_dir_fd" in kwargs:  # from the sweep dir: as from another filesystem
            raise OSError(errno.EXDEV, os.strerror(errno.EXDEV))
        return link(src, dst, **kwargs)

    monkeypatch.setattr(os, "link", across_filesystems)
    out = tmp_path / "copied"
    assert run(sweep, out, "--pattern", "{guidance}-{prompt}") == 0
    assert "0 linked, 8 copied, 0 present" in capsys.readouterr().out
    df = pd.read_parquet(sweep / "manifest.parquet")
    for row in df.itertuples():
        copy = out / (safe_name(f"{row.guidance}-{row.prompt}") + ".png")
        assert copy.read_bytes() == (sweep / row.path).read_bytes() and os.stat(copy).st_ino != os.stat(sweep / row.path).st_ino
    assert not [name for name in os.listdir(out) if name.startswith(".")]  # no temp file left
    assert run(sweep, out, "--pattern", "{guidance}-{prompt}") == 0  # copies are found again by their content
    assert "0 linked, 0 copied, 8 present" in capsys.readouterr().out
    assert len(os.listdir(out)) == 8


def test_control_characters_and_long_prompts_in_a_manifest(sweep, tmp_path, capsys):
    """The manifest is data: a prompt with a newline, an escape and 300 characters still makes one safe name."""
    mine = copy_of(sweep, tmp_path)
    df = pd.read_parquet(mine / "manifest.parquet")
    df.loc[0, "prompt"] = "line one\nline two\x1b[31m\u202e"
    df.loc[1, "prompt"] = "é" * 300
    df.to_parquet(mine / "manifest.parquet")
    assert run(mine, tmp_path / "out", "--pattern", "{prompt}-{image_id}") == 0
    names = set(os.listdir(tmp_path / "out"))
    assert f"line one_line two_[31m_-{df.image_id[0]}.png" in names
    assert max(len(name.encode("utf-8")) for name in names) <= MAX_NAME_BYTES + len(".png")
    assert all("\n" not in name and not name.startswith(".") for name in names)


@pytest.mark.parametrize("text, name", [("../../x", "_._x"), ("..", "_"), ("a/b\\c", "a_b_c"), (".env", "env"), ("a..b", "a.b"), ("", "_")])
def test_safe_name(text, name):
    assert safe_name(text) == name


def test_a_manifest_row_outside_the_sweep_is_skipped(sweep, tmp_path, capsys):
    hostile = copy_of(sweep, tmp_path)
    (tmp_path / "secret.png").write_bytes(b"not yours")
    df = pd.read_parquet(hostile / "manifest.parquet")
    df.loc[3, "path"] = "../secret.png"
    df.to_parquet(hostile / "manifest.parquet")
    assert run(hostile, tmp_path / "out", "--pattern", "{image_id}") == 0
    assert "skipping 1 row(s)" in capsys.readouterr().err
    exported = {name: (tmp_path / "out" / name).read_bytes() for name in os.listdir(tmp_path / "out")}
    assert len(exported) == 8 and b"not yours" not in exported.values()  # the image itself is found again from its PNG


def test_what_is_refused_in_one_line_with_nothing_written(sweep, tmp_path, capsys):
    cases = [
        ((sweep, tmp_path / "a", "--pattern", "{seed}-{steps}-{colour}"), "no field {colour}; fields: "),
        ((sweep, tmp_path / "a", "--pattern", "{prompt.upper}"), "no field {prompt.upper}"),
        ((sweep, tmp_path / "a", "--pattern", "{seed:.2f}-{prompt:d}"), "invalid --pattern"),
        ((sweep, sweep / "images" / "named"), "inside the sweep's images folder"),
        ((tmp_path, tmp_path / "a"), "no images folder; is it a sweep dir?"),
    ]
    for args, expected in cases:
        assert run(*args) == 2, args
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("sweeper.export: error: ") and expected in lines[0], (args, lines)
    assert not (tmp_path / "a").exists() and not (sweep / "images" / "named").exists()


def test_the_command_line(sweep, tmp_path):
    result = run_cli(str(sweep), str(tmp_path / "out"), cwd=tmp_path, module="sweeper.export")  # the default pattern: {index:05}-{seed}-{prompt:.40}
    assert result.returncode == 0, result.stderr
    assert len(os.listdir(tmp_path / "out")) == 8 and "00000-3-a fox in snow.png" in os.listdir(tmp_path / "out")
