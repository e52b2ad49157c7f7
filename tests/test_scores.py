"""Scores: the file (long rows, parts merged like the manifest's, the wide view) and the scoring of sweeps."""

from __future__ import annotations

import multiprocessing
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import main_per_case, run_cli

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


# Scoring through the real CLI on the tiny model and the tiny scorers.

SWEEP = ("-m", "model=tiny", "width=64", "height=64", "steps=2", "guidance=1,5", "seed=0", "prompt=a red fox")
BIGGER = (*SWEEP[:-2], "seed=range(0,5)", SWEEP[-1])  # 10 images: SWEEP's 2 and 8 more (sets of 10 for FD and KID)
SCORED = ("score=[clip,aesthetic]", "scorer=tiny")


def _long(sweep: Path) -> pd.DataFrame:
    return scores.read_scores(sweep).set_index(["image_id", "metric"])["value"]


@pytest.fixture(scope="module")
def scored_sweep(tmp_path_factory, warm_cli):
    """A sweep over guidance scored as it renders (score=[clip,aesthetic]), and the same command again."""
    cwd = tmp_path_factory.mktemp("scored")
    first = warm_cli.run(*BIGGER, *SCORED, "name=a", cwd=cwd)
    assert first.returncode == 0, first.stderr
    sweep = cwd / "outputs" / "sweeps" / "a"
    before = (sweep / scores.SCORES).read_bytes()
    again = warm_cli.run(*BIGGER, *SCORED, "name=a", cwd=cwd)
    assert again.returncode == 0, again.stderr
    return sweep, before, again


def test_a_sweep_scores_each_image_once_as_it_renders(scored_sweep):
    sweep, before, again = scored_sweep
    manifest = pd.read_parquet(sweep / "manifest.parquet")
    long = pd.read_parquet(sweep / scores.SCORES)
    assert len(manifest) == 10 and set(manifest["status"]) == {"ok"}
    assert sorted(long.groupby(["image_id", "metric"]).size().items()) == [((i, m), 1) for i in sorted(manifest["image_id"]) for m in ("aesthetic", "clip")]
    assert set(long["scorer"]) == {"tiny-clip", "tiny-aesthetic on tiny-clip"} and long["scorer_revision"].str.startswith("sha256:").all()
    assert (long.query("metric == 'clip'")["value"] > 0).all() and long["value"].nunique() == 20
    assert "score" not in manifest.columns and "scorer" not in manifest.columns  # a run setting, not part of the images
    # The same command again: nothing rendered, nothing scored, the file as it was.
    assert "nothing to render" in again.stderr and "scoring" not in again.stderr
    assert (sweep / scores.SCORES).read_bytes() == before and not (sweep / scores.PARTS_DIR).exists()


def test_scoring_later_and_after_a_kill_gives_the_same_scores_once(scored_sweep, tmp_path, warm_cli, capsys):
    from sweeper import score

    expected = _long(scored_sweep[0])
    # Scoring fails (out of memory): the images are kept, unscored.
    failing = warm_cli.run(*SWEEP, *SCORED, "name=b", cwd=tmp_path, env={"SWEEPER_FAULT": "score:all=1"})
    sweep = tmp_path / "outputs" / "sweeps" / "b"
    assert failing.returncode == 0, failing.stderr
    assert "scoring failed, the images are kept (OutOfMemoryError" in failing.stderr
    assert len(pd.read_parquet(sweep / "manifest.parquet")) == 2 and len(scores.read_scores(sweep)) == 0
    # python -m sweeper.score killed (kill -9) after its first batch's part: that batch is kept.
    killed = run_cli(str(sweep), "--metric", "clip,aesthetic", "--scorer", "tiny", "--batch-size", "1",
                     cwd=tmp_path, module="sweeper.score", env={"SWEEPER_FAULT": "kill:part=1"})
    assert killed.returncode == -9
    assert len(list((sweep / scores.PARTS_DIR).glob("part-*.parquet"))) == 1 and len(scores.read_scores(sweep)) == 2
    # The same sweep command scores the image left, from its PNG: each image once, the values of the first sweep.
    resumed = warm_cli.run(*SWEEP, *SCORED, "name=b", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "scoring 1 stored image(s) that have no clip, aesthetic score yet" in resumed.stderr
    stored = pd.read_parquet(sweep / scores.SCORES)
    assert len(stored) == 4 and not stored.duplicated(["image_id", "metric"]).any() and not (sweep / scores.PARTS_DIR).exists()
    pd.testing.assert_series_equal(_long(sweep).sort_index(), expected[_long(sweep).index].sort_index(), atol=1e-4, rtol=0)
    assert score.main([str(sweep), "--metric", "clip,aesthetic", "--scorer", "tiny"]) == 0
    assert "0 image(s) scored" in capsys.readouterr().out and len(scores.read_scores(sweep)) == 4
    # Another CLIP model (here the tiny one's weights under another name) scores beside the first.
    from sweeper.scoring.tiny import tiny_scorer_dir

    other = tmp_path / "other-clip"
    shutil.copytree(tiny_scorer_dir("tiny-clip"), other)
    assert score.main([str(sweep), "--metric", "clip", "--scorer", "tiny", "--clip-model", str(other)]) == 0
    wide = scores.scores_wide(sweep)
    assert list(wide.columns) == ["image_id", "aesthetic", f"clip[{other}]", "clip[tiny-clip]"]
    assert np.allclose(wide[f"clip[{other}]"], wide["clip[tiny-clip]"], atol=1e-4)
    # PickScore: logit_scale * cos, here on the tiny CLIP, so clip / 100 * exp(logit_scale) (cos > 0).
    assert score.main([str(sweep), "--metric", "pickscore", "--scorer", "tiny"]) == 0
    from transformers import CLIPModel

    scale = CLIPModel.from_pretrained(tiny_scorer_dir("tiny-clip")).logit_scale.exp().item()
    wide = scores.scores_wide(sweep)
    assert np.allclose(wide["pickscore"], wide["clip[tiny-clip]"] / 100 * scale, atol=1e-4) and (wide["pickscore"] > 0).all()


def test_our_clip_score_is_torchmetrics_clip_score(scored_sweep):
    import torch
    from PIL import Image
    from torchmetrics.functional.multimodal import clip_score
    from transformers import CLIPModel, CLIPProcessor

    from sweeper.scoring.tiny import tiny_scorer_dir

    sweep = scored_sweep[0]
    folder = tiny_scorer_dir("tiny-clip")
    model, processor = CLIPModel.from_pretrained(folder).eval(), CLIPProcessor.from_pretrained(folder)

    class Features(torch.nn.Module):
        """torchmetrics 1.9 expects tensors from get_*_features; transformers 5 returns outputs holding them."""

        def __init__(self) -> None:
            super().__init__()
            self.model, self.config = model, model.config

        def get_image_features(self, *args, **kwargs):
            return model.get_image_features(*args, **kwargs).pooler_output

        def get_text_features(self, *args, **kwargs):
            return model.get_text_features(*args, **kwargs).pooler_output

    ours = _long(sweep).xs("clip", level="metric")
    assert len(ours) == 10
    for image_id, value in list(ours.items())[:3]:
        pixels = torch.tensor(np.asarray(Image.open(sweep / "images" / f"{image_id}.png").convert("RGB"))).permute(2, 0, 1)
        theirs = clip_score(pixels, "a red fox", lambda: (Features(), processor)).item()
        assert abs(theirs - value) < 1e-4, (theirs, value)
    # The scorer is loaded once per process; a prompt past CLIP's 77 tokens is cut, not refused.
    from sweeper.scoring import models

    tiny = models.Scoring(("clip",), "tiny-clip", "tiny-aesthetic", "tiny-clip", "tiny-clip")
    scorer = models.load(tiny, "cpu")[0]
    assert models.load(tiny, "cpu")[0] is scorer
    image = [np.asarray(Image.open(sweep / "images" / f"{image_id}.png").convert("RGB"))]
    long = "a red fox " * 40
    assert scorer.score(image, [long])["clip"] == scorer.score(image, [long + "in the snow"])["clip"] != scorer.score(image, ["a red fox"])["clip"]


def test_refusals_exit_2_in_one_line_and_write_nothing(tmp_path, capsys, tiny_models):
    from sweeper import score

    cases = [
        [*SWEEP, "score=[clip,beauty]"],
        [*SWEEP, "score=[clip]"],  # the default scorer, not on this machine
        [*SWEEP, "score=[aesthetic]", "scorer=tiny", "scorer.aesthetic_model=nobody/nothing"],
    ]
    report = main_per_case(cases, cwd=tmp_path)
    lines = [err.strip().splitlines() for _, err in report["results"]]
    assert [code for code, _ in report["results"]] == [2, 2, 2] and not report["outputs"], report
    assert all(len(found) == 1 for found in lines), lines
    assert """invalid score=["clip", "beauty"]: 'beauty' is not a metric; known: clip, aesthetic, pickscore""" in lines[0][0]
    assert "scorer.clip_model='openai/clip-vit-large-patch14' is not in the local Hugging Face cache: fetch it first (hf download openai/clip-vit-large-patch14)" in lines[1][0]
    assert "scorer.aesthetic_model='nobody/nothing' is not in the local Hugging Face cache" in lines[2][0]

    sweep = tmp_path / "sweep"
    (sweep / "images").mkdir(parents=True)
    pd.DataFrame({"image_id": IDS}).to_parquet(sweep / "manifest.parquet")
    for argv, said in [
        ([str(tmp_path / "nothing"), "--scorer", "tiny"], "no such sweep dir"),
        ([str(sweep / "images"), "--scorer", "tiny"], "not a sweep dir (no manifest.parquet)"),
        ([str(sweep), "--scorer", "tiny", "--device", "tpu"], "invalid --device='tpu': auto, cpu, cuda, cuda:N or mps"),
        ([str(sweep), "--metric", "clip,beauty", "--scorer", "tiny"], 'invalid --metric=["clip", "beauty"]: \'beauty\' is not a metric'),
        ([str(sweep), "--metric", "clip", "--clip-model", "openai/clip-vit-base-patch32"], "fetch it first (hf download openai/clip-vit-base-patch32)"),
        ([str(sweep), "--metric", "pickscore"], "scorer.pickscore_model='yuvalkirstain/PickScore_v1' is not in the local Hugging Face cache"),
    ]:
        assert score.main(argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err
    assert sorted(p.name for p in sweep.iterdir()) == ["images", "manifest.parquet"] and not any((sweep / "images").iterdir())
    assert not (tmp_path / "nothing").exists()


def test_fd_and_kid_on_clip_features_per_axis_value(scored_sweep, tmp_path, capsys):
    from PIL import Image

    from sweeper import score
    from sweeper.scoring import sets

    sweep = scored_sweep[0]
    same, noise = tmp_path / "same", tmp_path / "noise"
    shutil.copytree(sweep / "images", same)
    noise.mkdir()
    rng = np.random.default_rng(0)
    for n in range(10):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(noise / f"{n}.png")
    (noise / "notes.txt").write_text("not an image")
    (noise / "outside.png").symlink_to(same / next(same.iterdir()).name)  # a link out: not read
    assert [path.name for path in sets.reference_files(noise)] == [f"{n}.png" for n in range(10)]

    for reference in (same, noise, same):  # the same reference again replaces its rows
        assert score.main([str(sweep), "--fid", str(reference), "--by", "model", "--scorer", "tiny"]) == 0
    table = pd.read_parquet(sweep / sets.SET_SCORES)
    assert len(table) == 6 and set(table["metric"]) == {"fd_clip", "kid_clip", "kid_clip_std"}
    assert set(table["axis_value"]) == {"tiny"} and set(table["n_images"]) == {10} and table["reference_sha"].nunique() == 2
    fd = table.query("metric == 'fd_clip'").set_index("reference")["value"]
    assert abs(fd[str(same)]) < 1e-3 < fd[str(noise)]  # a set against its own images, against noise
    capsys.readouterr()
    # Sets of 5 (per guidance value): too few for either, said and skipped.
    assert score.main([str(sweep), "--fid", str(noise), "--by", "guidance", "--scorer", "tiny"]) == 0
    err = capsys.readouterr().err
    assert "guidance=1: 5 image(s) and 10 reference image(s); fd_clip needs more than 8 (the CLIP's feature dimensions) in each: skipped" in err
    assert "kid_clip needs at least 10 in each: skipped" in err and len(pd.read_parquet(sweep / sets.SET_SCORES)) == 6
    (sweep / sets.SET_SCORES).write_bytes(b"PAR1 torn")  # a damaged file (or someone else's) is said and written anew
    assert score.main([str(sweep), "--fid", str(noise), "--by", "model", "--scorer", "tiny"]) == 0
    assert "is damaged" in capsys.readouterr().err and len(pd.read_parquet(sweep / sets.SET_SCORES)) == 3
    for argv, said in [
        (["--fid", str(noise)], "--fid and --by go together"),
        (["--fid", str(tmp_path / "nothing"), "--by", "guidance"], "not a folder"),
        (["--fid", str(noise), "--by", "colour"], "invalid --by='colour': not a manifest column"),
    ]:
        assert score.main([str(sweep), "--scorer", "tiny", *argv]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and said in err, err


def test_score_is_a_run_setting_not_part_of_the_images_or_the_dir_name():
    from conftest import composed_job

    from sweeper.callbacks import default_name
    from sweeper.planning.plan import plan

    plain = ["model=tiny", "guidance=1", "seed=3"]
    scored = [*plain, "score=[clip,aesthetic]", "scorer=tiny", "scorer.clip_model=tiny-clip"]
    assert [s.image_id for s in plan([composed_job(0, *scored)])] == [s.image_id for s in plan([composed_job(0, *plain)])]
    assert "score" not in plan([composed_job(0, *scored)])[0].to_dict()
    assert default_name(["guidance=1,5", *scored[3:]]) == default_name(["guidance=1,5"])  # adding score resumes the same dir
