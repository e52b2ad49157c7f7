"""Scores: the file (long rows, parts merged like the manifest's, the wide view) and the scoring of sweeps."""

from __future__ import annotations

import multiprocessing
import re
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sweeper.storing import scores

README = Path(__file__).resolve().parents[1] / "README.md"
IDS = [f"{n:020x}" for n in range(1, 5)]


def _rows(metric: str, scorer: str, revision: str = "r1", offset: float = 0.0) -> list[dict]:
    return [scores.row(image_id, metric, index + offset, scorer, revision) for index, image_id in enumerate(IDS)]


def _write_parts(sweep: str, scorer: str) -> None:
    for image_id in IDS:  # one part per image, as many writers would leave them
        scores.write_part(Path(sweep), [scores.row(image_id, "clip", 1.0, scorer, "r1")])


def test_scores_file_parts_merge_dedupe_and_wide_view(tmp_path):
    scores.write_part(tmp_path, _rows("clip", "a/clip"))
    scores.write_part(tmp_path, _rows("aesthetic", "head on a/clip"))
    assert len(scores.read_scores(tmp_path)) == 8  # unmerged parts are read
    assert scores.merge(tmp_path).num_rows == 8
    assert not (tmp_path / scores.PARTS_DIR).exists() and (tmp_path / scores.SCORES).is_file()

    scores.write_part(tmp_path, _rows("clip", "a/clip", offset=100))  # the same scorer again: nothing new
    assert scores.merge(tmp_path).num_rows == 8
    assert sorted(scores.read_scores(tmp_path).query("metric == 'clip'")["value"]) == [0, 1, 2, 3]  # the first scores stay

    long = pq.read_table(tmp_path / scores.SCORES)
    assert long.schema == scores.SCHEMA
    wide = scores.scores_wide(tmp_path)
    assert list(wide.columns) == ["image_id", "aesthetic", "clip"] and list(wide["image_id"]) == IDS
    assert list(wide["clip"]) == [0, 1, 2, 3]

    scores.write_part(tmp_path, _rows("clip", "b/clip", offset=10))  # another scorer: rows beside
    scores.write_part(tmp_path, _rows("clip", "a/clip", revision="r2", offset=20))  # another revision too
    assert len(scores.read_scores(tmp_path)) == 16
    wide = scores.scores_wide(tmp_path)
    assert list(wide.columns) == ["image_id", "aesthetic", "clip[a/clip]", "clip[b/clip]"]
    assert list(wide["clip[b/clip]"]) == [10, 11, 12, 13] and list(wide["clip[a/clip]"]) == [20, 21, 22, 23]  # the latest revision


def test_many_writers_at_once_leave_every_score_once(tmp_path):
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_write_parts, args=(str(tmp_path), f"s{n}/clip")) for n in range(4)]
    for worker in workers:
        worker.start()
    mergers = [context.Process(target=scores.merge, args=(tmp_path,)) for _ in range(3)]
    for merger in mergers:
        merger.start()
    for process in workers + mergers:
        process.join(60)
        assert process.exitcode == 0
    assert scores.merge(tmp_path).num_rows == 16 and not (tmp_path / scores.PARTS_DIR).exists()
    assert scores.read(tmp_path).num_rows == 16


def test_a_sweep_dir_from_someone_else_is_data(tmp_path, capsys):
    part = scores.write_part(tmp_path, _rows("clip", "a/clip"))
    planted = pa.Table.from_pylist(
        [dict(scores.row("../../etc/passwd", "clip", 1.0, "x", "r")), dict(scores.row(IDS[0], "clip", 1.0, "x", "r"), metric=None)], schema=scores.SCHEMA
    )
    pq.write_table(planted, tmp_path / scores.PARTS_DIR / "part-planted.parquet")
    (tmp_path / scores.PARTS_DIR / "part-torn.parquet").write_bytes(b"PAR1 not parquet")
    assert len(scores.read_scores(tmp_path)) == 4
    err = capsys.readouterr().err
    assert "skipping 2 row(s)" in err and "skipping damaged scores file" in err and "part-torn" in err
    scores.merge(tmp_path)
    assert [p.name for p in (tmp_path / scores.PARTS_DIR / "damaged").iterdir()] == ["part-torn.parquet"]
    assert not part.exists()
    (tmp_path / scores.SCORES).unlink()
    (tmp_path / scores.SCORES).symlink_to(tmp_path / scores.PARTS_DIR / "damaged" / "part-torn.parquet")
    assert len(scores.read_scores(tmp_path)) == 0 and "symbolic link" in capsys.readouterr().err


def readme_python(heading: str) -> str:
    """The first ```python block after `heading` in the README."""
    text = README.read_text(encoding="utf-8")
    return re.search(r"```python\n(.*?)```", text[text.index(heading) :], re.S).group(1)


def test_the_readme_join_of_manifest_and_scores(tmp_path, monkeypatch):
    scores.write_part(tmp_path, _rows("clip", "openai/clip-vit-large-patch14"))
    scores.write_part(tmp_path, _rows("aesthetic", "sac+logos+ava1-l14-linearMSE on openai/clip-vit-large-patch14"))
    pd.DataFrame({"image_id": IDS, "guidance": [1.0, 1.0, 7.0, 7.0], "status": "ok"}).to_parquet(tmp_path / "manifest.parquet")
    monkeypatch.chdir(tmp_path)
    code = readme_python("#### The scores file").replace("outputs/sweeps/demo", str(tmp_path))
    found: dict = {}
    exec(code, found)
    assert list(found["table"].columns[-2:]) == ["aesthetic", "clip"]
    assert found["table"]["clip"].tolist() == [0, 1, 2, 3]
    assert found["table"].groupby("guidance")["clip"].mean().tolist() == [0.5, 2.5]
