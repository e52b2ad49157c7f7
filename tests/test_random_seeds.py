"""`seed=random:N`: N seeds drawn once for the sweep dir and recorded as concrete seeds, so the same
command resumes (renders nothing new) and each image replays from its PNG. Through the real CLI."""

from __future__ import annotations

import pandas as pd
from conftest import only_dir, run_cli


def test_random_seeds_are_drawn_once_per_sweep_dir_and_recorded(tmp_path, warm_cli):
    command = ["-m", "model=tiny", "seed=random:3", "guidance=3,5", "steps=2"]
    first = warm_cli.run(*command, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert "guidance (2) x seed (3) = 6 images" in first.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    df = pd.read_parquet(sweep / "manifest.parquet")
    seeds = sorted(set(df.seed))
    assert df.seed.dtype == "int64" and len(seeds) == 3 and set(df.status) == {"ok"}
    assert all(sorted(group.seed) == seeds for _, group in df.groupby("guidance"))  # every cell on the same seeds
    assert sorted(set(pd.read_parquet(sweep / "plan.parquet").seed)) == seeds

    again = warm_cli.run(*command, cwd=tmp_path)  # a fresh process: the seeds come from the sweep dir, not a new draw
    assert again.returncode == 0 and "6 already done, 0 to render" in again.stderr, again.stderr
    assert sorted(set(pd.read_parquet(sweep / "manifest.parquet").seed)) == seeds

    other = warm_cli.run(*command, "name=other", cwd=tmp_path)  # another sweep dir draws its own
    assert other.returncode == 0, other.stderr
    assert not set(pd.read_parquet(tmp_path / "outputs" / "sweeps" / "other" / "manifest.parquet").seed) & set(seeds)

    replayed = run_cli(str(sweep / df.path.iloc[-1]), module="sweeper.replay", cwd=tmp_path)
    assert replayed.returncode == 0 and "identical" in replayed.stdout + replayed.stderr, replayed.stderr


def test_a_bad_random_seed_count_is_refused_in_one_line(tmp_path, warm_cli):
    for value in ("random:0", "random:x", "random:11", "random:" + "9" * 30):
        result = warm_cli.run("-m", "model=tiny", f"seed={value}", "max_images=10", cwd=tmp_path)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and f"invalid seed='{value}': random:N draws N seeds" in lines[0], result.stderr
    assert not (tmp_path / "outputs").exists()
