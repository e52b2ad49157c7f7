"""Scores in the report: the statistics against a direct computation, the charts, the page's Scores section."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import product
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats
from conftest import only_dir
from test_report import TreeBuilder, browse, embedded_data, fake_sweep

from sweeper import report
from sweeper.report import charts, stats

SVG = "{http://www.w3.org/2000/svg}"


def synthetic(guidances=("3", "7.5", "10"), schedulers=("euler", "ddim"), prompts=("a", "b"), seeds=range(5)) -> pd.DataFrame:
    """A score per image: guidance adds its value, ddim adds 1, each prompt and seed a fixed amount, plus noise."""
    rng = np.random.default_rng(42)
    rows = []
    for scheduler, prompt, seed, guidance in product(schedulers, prompts, seeds, guidances):
        value = float(guidance) + (scheduler == "ddim") + prompts.index(prompt) * 0.5 + seed * 0.1 + rng.normal(0, 0.3)
        rows.append(dict(scheduler=scheduler, prompt=prompt, seed=str(seed), guidance=guidance, value=value))
    return pd.DataFrame(rows)


ORDERS = {"guidance": ["3", "7.5", "10"], "scheduler": ["euler", "ddim"], "prompt": ["a", "b"], "seed": [str(n) for n in range(5)]}
SWEPT = ["scheduler", "prompt", "guidance", "seed"]


def test_means_and_intervals_match_a_direct_computation():
    frame = synthetic()
    rows = stats.by_value(frame, "guidance", SWEPT, ORDERS)
    # One row per scheduler and guidance, in display order; each over the 2 prompts x 5 seeds of its group.
    assert [(key, value) for key, value, _ in rows] == [((s,), g) for s in ORDERS["scheduler"] for g in ORDERS["guidance"]]
    for (scheduler,), guidance, mean in rows:
        values = frame[(frame.scheduler == scheduler) & (frame.guidance == guidance)]["value"].to_numpy()
        assert mean.n == 10 and mean.mean == pytest.approx(values.mean())
        # The percentile bootstrap, written out: 2000 resamples of the group from a generator seeded 0.
        resampled = values[np.random.default_rng(0).integers(0, len(values), size=(2000, len(values)))].mean(axis=1)
        assert (mean.low, mean.high) == pytest.approx(tuple(np.percentile(resampled, [2.5, 97.5])))
        assert mean.low < mean.mean < mean.high
        # scipy's percentile bootstrap (its own resamples) agrees within Monte Carlo error.
        other = scipy_stats.bootstrap((values,), np.mean, n_resamples=2000, method="percentile", random_state=1).confidence_interval
        width = other.high - other.low
        assert abs(mean.low - other.low) < 0.15 * width and abs(mean.high - other.high) < 0.15 * width


def test_intervals_shrink_with_n_are_deterministic_and_small_n_gets_none():
    rng = np.random.default_rng(7)
    widths = []
    for n in (5, 50, 500, 5000):
        values = rng.normal(10, 2, n)
        mean = stats.mean_interval(values)
        assert mean.low < values.mean() < mean.high
        widths.append(mean.high - mean.low)
        if n == 5000:  # the normal approximation, for a large n
            assert mean.high - mean.low == pytest.approx(2 * 1.96 * values.std(ddof=1) / np.sqrt(n), rel=0.1)
        assert stats.mean_interval(values) == mean  # the same numbers every time
    assert widths == sorted(widths, reverse=True) and widths[-1] < widths[0] / 10
    assert stats.mean_interval(np.array([1.0, 2.0])) == stats.Mean(2, 1.5, None, None)  # under 3 images: no interval
    assert stats.mean_interval(np.array([np.nan, 4.0, np.nan])) == stats.Mean(1, 4.0)
    assert stats.mean_interval(np.array([])) == stats.Mean(0, None)


def test_a_group_of_one_other_axis_value_is_its_own_row_and_one_axis_is_per_value():
    frame = synthetic(schedulers=("euler",), prompts=("a",), seeds=range(2))
    rows = stats.by_value(frame, "guidance", ["guidance", "seed"], ORDERS)
    assert [(key, value, mean.n, mean.low) for key, value, mean in rows] == [((), g, 2, None) for g in ORDERS["guidance"]]
    for _, guidance, mean in rows:
        assert mean.mean == pytest.approx(frame[frame.guidance == guidance]["value"].mean())


def test_win_rates_of_a_constructed_example():
    # Four otherwise identical pairs of images (prompt x seed): high beats low in 2, loses 1, ties 1.
    frame = pd.DataFrame(
        [dict(prompt=p, seed=s, guidance=g, value=v) for p, s, g, v in [
            ("a", "0", "low", 1.0), ("a", "0", "high", 2.0),
            ("a", "1", "low", 1.0), ("a", "1", "high", 3.0),
            ("b", "0", "low", 5.0), ("b", "0", "high", 4.0),
            ("b", "1", "low", 2.0), ("b", "1", "high", 2.0),
            ("b", "2", "low", 9.0),  # no partner: left out
        ]]
    )
    rates = stats.win_rates(frame, "guidance", ["prompt", "guidance", "seed"], ["low", "high"])
    assert rates[("high", "low")] == stats.WinRate(2.5, 4) and rates[("high", "low")].rate == 0.625
    assert rates[("low", "high")] == stats.WinRate(1.5, 4)
    # Pairs match on every other swept key: with the scheduler too, euler's images never meet ddim's.
    full = synthetic()
    rates = stats.win_rates(full, "guidance", SWEPT, ORDERS["guidance"])
    assert rates[("10", "3")].n == 2 * 2 * 5 and rates[("10", "3")].rate == 1.0
    pivot = full.pivot_table(index=["scheduler", "prompt", "seed"], columns="guidance", values="value")
    direct = ((pivot["7.5"] > pivot["10"]).sum() + 0.5 * (pivot["7.5"] == pivot["10"]).sum()) / len(pivot)
    assert rates[("7.5", "10")].rate == pytest.approx(direct)
    assert rates[("7.5", "10")].wins + rates[("10", "7.5")].wins == rates[("7.5", "10")].n


def test_a_negative_prompt_unset_at_guidance_1_is_part_of_the_guidance_axis():
    """Planning leaves the negative prompt unset where guidance is 1 or less: one value per guidance is no
    axis of its own (no grid split by it, no Scores block for it), and images pair across it."""
    import pyarrow as pa

    from sweeper.report.sweep import Sweep

    def swept(guidance: list, negative: list) -> list[str]:
        count = len(guidance)
        table = pa.table({"prompt": ["a", "b"] * (count // 2), "guidance": guidance, "negative_prompt": negative, "seed": list(range(count))})
        return Sweep.of(Path("."), table, None).swept

    assert swept([1.0, 1.0, 5.0, 5.0, 9.0, 9.0], [None, None, "", "", "", ""]) == ["prompt", "guidance", "seed"]
    # Swept for itself (two negatives at guidance 5), it is an axis, and guidance stays one (it follows the negative).
    assert swept([1.0, 1.0, 5.0, 5.0], [None, None, "x", "y"]) == ["prompt", "negative_prompt", "guidance", "seed"]
    frame = synthetic(guidances=("1", "5", "9"), schedulers=("euler",))
    frame["negative_prompt"] = np.where(frame.guidance == "1", "null", "")
    orders = {**ORDERS, "guidance": ["1", "5", "9"]}
    assert [(key, value) for key, value, _ in stats.by_value(frame, "guidance", ["prompt", "guidance", "seed"], orders)] == [((), "1"), ((), "5"), ((), "9")]
    rates = stats.win_rates(frame, "guidance", ["prompt", "guidance", "seed"], ["1", "5", "9"])
    assert rates[("5", "1")].n == 2 * 5  # paired on prompt and seed, though their negative prompts differ
    # Keys zipped with the axis follow it: not keys its images share.
    frame["steps"] = frame.guidance.map({"1": "10", "5": "20", "9": "30"})
    assert stats.within_of(frame, "guidance", ["prompt", "guidance", "steps", "seed"]) == []


def test_paired_differences():
    a = np.array([3.0, 2.0, np.nan, 5.0, 1.0])
    b = np.array([1.0, 2.0, 4.0, 4.0, 2.0])
    difference, won = stats.paired(a, b)
    assert difference.n == 4 and difference.mean == pytest.approx(np.mean([2.0, 0.0, 1.0, -1.0]))
    assert won == stats.WinRate(2.5, 4)


def test_the_chart_is_well_formed_svg_with_the_values_and_the_scorer():
    means = [stats.mean_interval(np.array(values)) for values in ([1.0, 2.0, 3.0, 4.0], [5.0, 6.0], [2.5, 2.5, 2.6])]
    labels = ["3", '<b>"7.5"</b> & co', "10"]
    svg = charts.means_chart("clip by guidance", labels, means, "tiny/clip <rev>")
    root = ET.fromstring(svg)  # well-formed XML: the labels and the scorer are escaped
    assert root.tag == f"{SVG}svg"
    texts = ["".join(node.itertext()) for node in root.iter(f"{SVG}text")]
    assert "scorer: tiny/clip <rev>" in texts
    assert any(text.endswith('<b>"7.5"</b> & co') for text in texts)  # the label's tooltip: text, not markup
    for mean in means:
        assert any(text.startswith(charts.number(mean.mean)) for text in texts)
    assert "2.5 (n=2)" not in texts and "5.5 (n=2)" in texts  # a small group says its n
    assert len(list(root.iter(f"{SVG}circle"))) == 3
    assert len([line for line in root.iter(f"{SVG}line") if line.get("class") == "interval"]) == 2  # none for n=2


# The page of a sweep with scores (a fake sweep dir, as in test_report.py, and a scores.parquet beside it)

SCORER = "tiny/clip-64"


def write_scores(sweep: Path, rows: list[dict], metrics: dict[str, tuple[str, str]], offset: float = 0.0) -> pd.DataFrame:
    """A score per ok image and metric (metric -> scorer, revision), in the long format of scores.parquet."""
    scored = []
    for row in rows:
        if row["status"] != "ok":
            continue
        digest = int(row["image_id"][:8], 16)
        for n, (metric, (scorer, revision)) in enumerate(metrics.items()):
            value = row["guidance"] * (1 + n) + (digest % 1000) / 250 + offset  # guidance helps, plus a spread per image
            scored.append(dict(image_id=row["image_id"], metric=metric, value=value, scorer=scorer, scorer_revision=revision,
                               scored_at=pd.Timestamp("2026-01-01", tz="UTC")))
    frame = pd.DataFrame(scored)
    frame.to_parquet(sweep / "scores.parquet", index=False)
    return frame


def cells(node) -> list[list[str]]:
    return [[td.text() for td in tr.find_all("td")] for tr in node.find_all("tr")[1:]]


def static_page(path: Path):
    builder = TreeBuilder()
    builder.feed(path.read_text(encoding="utf-8"))
    return builder.root


def test_the_scores_section_shows_the_numbers_of_a_direct_computation_labelled_with_their_scorer(tmp_path, capsys):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    scored = write_scores(sweep, rows, {"clip": (SCORER, "abc123"), "aesthetic": (f"tiny/head on {SCORER}", "def456")})
    assert report.main([str(sweep)]) == 0
    dom = static_page(sweep / "report.html")
    section = dom.by_id("scores")
    assert [a.attrs["href"] for a in dom.find_all("nav")[0].find_all("a")][:3] == ["#grid", "#scores", "#axes"]
    blocks = {block.attrs["data-score"]: block for block in section.find_all("div", "score")}
    assert list(blocks) == ["aesthetic", "clip"]
    clip = blocks["clip"]
    assert f"scorer: {SCORER} (revision abc123)" in clip.find_all("h3")[0].text()
    # Axes: prompt (its images differ in seed) and guidance; the seed is what varies within a value.
    assert [node.attrs["data-axis"] for node in clip.find_all("div", "score-axis")] == ["prompt", "guidance"]
    (guidance,) = [node for node in clip.find_all("div", "score-axis") if node.attrs["data-axis"] == "guidance"]
    assert f"scorer: {SCORER} (revision abc123)" in guidance.text()

    # The direct computation: the manifest's ok rows joined with the clip scores, by guidance.
    joined = pd.read_parquet(sweep / "manifest.parquet").merge(scored[scored.metric == "clip"], on="image_id")
    expected = []
    for value in (3.0, 7.5, 10.0):
        values = joined[joined.guidance == value]["value"].to_numpy()
        resampled = values[np.random.default_rng(0).integers(0, len(values), size=(2000, len(values)))].mean(axis=1)
        low, high = np.percentile(resampled, [2.5, 97.5])
        expected.append([f"{value:g}", str(len(values)), f"{values.mean():.4g}", f"{low:.4g} – {high:.4g}"])
    (means,) = guidance.find_all("table", "score-means")
    assert cells(means) == expected and [row[1] for row in expected] == ["8", "8", "7"]  # guidance 10 lost its failed image
    pivot = joined.pivot_table(index=["prompt", "seed"], columns="guidance", values="value")
    both = pivot[[7.5, 3.0]].dropna()
    wins = (both[7.5] > both[3.0]).sum() + 0.5 * (both[7.5] == both[3.0]).sum()
    (matrix,) = guidance.find_all("table", "win-rates")
    assert cells(matrix)[1][:2] == ["7.5", f"{wins / len(both):.0%} ({wins:.4g} of {len(both)})"]
    assert cells(matrix)[2][1].endswith("of 7)")  # 10 vs 3: 7 pairs, the failed image has none
    (chart,) = guidance.find_all("svg", "chart")
    assert f"scorer: {SCORER} (revision abc123)" in chart.text() and all(row[2] in chart.text() for row in expected)
    overall = clip.find_all("p", "score-all")[0].text()
    everything = joined["value"].to_numpy()
    resampled = everything[np.random.default_rng(0).integers(0, 23, size=(2000, 23))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    assert overall == f"all 23 scored images: mean {everything.mean():.4g}, 95% interval {low:.4g} – {high:.4g}"

    # The page's data: per score its values by manifest row, for sorting and tinting in the browser.
    data = embedded_data(sweep / "report.html")
    ids = [row["image_id"] for row in pd.read_parquet(sweep / "manifest.parquet").to_dict("records")]
    (clip_data,) = [score for score in data["scores"] if score["id"] == "clip"]
    by_id = dict(zip(scored[scored.metric == "clip"].image_id, scored[scored.metric == "clip"].value))
    assert clip_data["values"] == [None if i not in by_id else pytest.approx(by_id[i], abs=1e-6) for i in ids]
    assert clip_data["by"] == f"{SCORER} (revision abc123)" and data["sortBy"] == data["tint"] == ""

    # --sort-by / --tint must name a score of the sweep: one line, exit 2.
    with pytest.raises(SystemExit) as exit_info:
        report.main([str(sweep), "--tint", "pickscore"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line == "sweeper: error: --tint: no score 'pickscore' in this sweep; scored here: aesthetic, clip"
    with pytest.raises(SystemExit):
        report.main([str(sweep), "--sort-by", "clip[x]", "-o", str(tmp_path / "new" / "page.html")])
    assert not (tmp_path / "new").exists()  # refused before anything is written


def test_a_sweep_without_scores_has_no_scores_section(tmp_path):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    report.write_report(sweep)
    text = (sweep / "report.html").read_text(encoding="utf-8")
    assert 'id="scores"' not in text and 'href="#scores"' not in text
    assert embedded_data(sweep / "report.html")["scores"] == []
    # Scores written after the report make it stale: the next multirun's end writes it again.
    assert not report.is_stale(sweep)
    write_scores(sweep, rows, {"clip": (SCORER, "abc123")})
    assert report.is_stale(sweep)


def test_compare_shows_score_differences_on_paired_images_by_the_same_scorer(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    rows_a = fake_sweep(a, scheduler="euler")
    rows_b = fake_sweep(b, scheduler="ddim", guidances=(7.5, 10.0, 12.0), fail=False)
    scored_a = write_scores(a, rows_a, {"clip": (SCORER, "abc123"), "aesthetic": ("head-a", "1")})
    scored_b = write_scores(b, rows_b, {"clip": (SCORER, "abc123"), "aesthetic": ("head-b", "1")}, offset=0.5)
    output = report.write_report(a, compare=b, output=tmp_path / "compare.html")
    section = static_page(output).by_id("compare-scores")
    (table,) = section.find_all("table", "score-diffs")

    # Pairs: same prompt, seed and guidance (7.5 and 10); A's failed image has no score, so 15 of 16.
    key = ["prompt", "seed", "guidance"]
    side_a = pd.read_parquet(a / "manifest.parquet").merge(scored_a[scored_a.metric == "clip"], on="image_id")[key + ["value"]]
    side_b = pd.read_parquet(b / "manifest.parquet").merge(scored_b[scored_b.metric == "clip"], on="image_id")[key + ["value"]]
    pairs = side_a.merge(side_b, on=key, suffixes=("_a", "_b"))
    difference = (pairs.value_a - pairs.value_b).to_numpy()
    resampled = difference[np.random.default_rng(0).integers(0, len(difference), size=(2000, len(difference)))].mean(axis=1)
    low, high = np.percentile(resampled, [2.5, 97.5])
    wins = (difference > 0).sum() + 0.5 * (difference == 0).sum()
    assert cells(table) == [[
        "clip", f"{SCORER} (revision abc123)", "15", f"{difference.mean():.4g}", f"{low:.4g} – {high:.4g}",
        f"{wins / 15:.0%} ({wins:.4g} of 15)",
    ]]
    # The aesthetic scores came from different heads: not compared, and said so.
    assert "Not compared, scored in one sweep only: A: aesthetic by head-a (revision 1); B: aesthetic by head-b (revision 1)." in section.text()


def test_grids_sorted_and_tinted_by_a_score_in_chromium(tmp_path):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep)
    scored = write_scores(sweep, rows, {"clip": (SCORER, "abc123"), "aesthetic": ("head", "1")})
    assert report.main([str(sweep), "--sort-by", "clip", "--tint", "aesthetic"]) == 0
    opened = rows[5]
    page = browse(sweep / "report.html", tmp_path, fragment=f"#img=0:{opened['image_id']}")
    assert page.console == []
    assert page.dom.by_id("scores").find_all("svg", "chart")  # the section renders with its charts

    # Per grid (one per prompt): rows (guidance) and columns (seed) by their mean clip score, best first.
    joined = pd.read_parquet(sweep / "manifest.parquet").merge(scored[scored.metric == "clip"], on="image_id")
    tints = dict(zip(scored[scored.metric == "aesthetic"].image_id, scored[scored.metric == "aesthetic"].value))
    extremes = []
    for block in page.dom.by_id("grid-blocks").find_all("div", "block"):
        prompt = block.find_all("h3")[0].text().removeprefix("prompt = ")
        mine = joined[joined.prompt == prompt]
        by_seed = mine.groupby("seed")["value"].mean().sort_values(ascending=False)
        assert [th.text() for th in block.find_all("th", "xlabel")] == [str(seed) for seed in by_seed.index]
        assert [th.text() for th in block.find_all("th", "ylabel")] == ["10", "7.5", "3"]
        tinted = block.find_all("button", "tinted")
        assert len(tinted) == len(mine)  # every scored image, none of the failed one
        for tile in tinted:
            image_id = tile.find_all("img")[0].attrs["src"].removeprefix(".thumbs/").removesuffix(".webp")
            if tints[image_id] in (min(tints.values()), max(tints.values())):  # the lowest red, the highest green
                hue = 0 if tints[image_id] == min(tints.values()) else 120
                assert f"--tint: hsl({hue}, " in tile.attrs["style"]
                extremes.append(hue)
            assert tile.find_all("span", "score")[0].text() == f"{tints[image_id]:.4g}"
            assert f"aesthetic {tints[image_id]:.4g} (scorer head (revision 1))" in tile.attrs["title"]
    assert sorted(extremes) == [0, 120]
    # An opened image lists its scores with their scorers.
    box = page.dom.by_id("lightbox")
    listed = {tr.find_all("th")[0].text(): tr.find_all("td")[0].text() for tr in box.find_all("tr", "score")}
    mine = scored[scored.image_id == opened["image_id"]].set_index("metric")["value"]
    assert listed == {f"clip ({SCORER} (revision abc123))": f"{mine['clip']:.4g}", "aesthetic (head (revision 1))": f"{mine['aesthetic']:.4g}"}
    (sort_by,) = page.dom.by_id("grid-controls").find_all("label", "sort-by")
    (tint_by,) = page.dom.by_id("grid-controls").find_all("label", "tint")
    choices = ["aesthetic (head (revision 1))", f"clip ({SCORER} (revision abc123))"]
    assert [option.text() for option in sort_by.find_all("option")] == ["(axis order)", *choices]
    assert [option.text() for option in tint_by.find_all("option")] == ["(none)", *choices]


def test_a_metric_from_two_scorers_is_two_scores_named_by_their_scorer(tmp_path):
    sweep = tmp_path / "sweep-a"
    rows = fake_sweep(sweep, seeds=range(2))
    first = write_scores(sweep, rows, {"clip": ("openai/clip-vit-large-patch14", "r1")})
    second = write_scores(sweep, rows, {"clip": (SCORER, "r2")}, offset=1.0)
    pd.concat([first, second]).to_parquet(sweep / "scores.parquet", index=False)
    assert report.main([str(sweep), "--sort-by", f"clip[{SCORER}]"]) == 0
    section = static_page(sweep / "report.html").by_id("scores")
    names = [block.attrs["data-score"] for block in section.find_all("div", "score")]
    assert names == ["clip[openai/clip-vit-large-patch14]", f"clip[{SCORER}]"]
    assert embedded_data(sweep / "report.html")["sortBy"] == f"clip[{SCORER}]"


@pytest.mark.slow
def test_a_scored_sweep_over_guidance_ends_with_a_report_of_its_scores(tmp_path, warm_cli):
    result = warm_cli.run(
        "-m", "model=tiny", "width=64", "height=64", "steps=2", "guidance=1,5,9", "seed=0,1,2", "prompt=a red fox",
        "score=[clip,aesthetic]", "scorer=tiny", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    sweep = only_dir(tmp_path / "outputs" / "sweeps")
    scored = pd.read_parquet(sweep / "scores.parquet")
    joined = pd.read_parquet(sweep / "manifest.parquet").merge(scored, on="image_id")
    assert len(joined) == 9 * 2 and set(joined.metric) == {"clip", "aesthetic"}

    # The multirun's own report, and the one `python -m sweeper.report` writes, show the numbers of a direct computation.
    for written in ("multirun", "report CLI"):
        if written == "report CLI":
            made = warm_cli.run(str(sweep), "--sort-by", "clip", cwd=tmp_path, module="sweeper.report")
            assert made.returncode == 0 and made.stdout.strip() == str(sweep / "report.html"), made.stderr
        section = static_page(sweep / "report.html").by_id("scores")
        for metric in ("clip", "aesthetic"):
            mine = joined[joined.metric == metric]
            (scorer,) = set(mine.scorer)
            (revision,) = set(mine.scorer_revision)
            (block,) = [node for node in section.find_all("div", "score") if node.attrs["data-score"] == metric]
            assert f"scorer: {scorer} (revision {revision})" in block.find_all("h3")[0].text()
            expected = []
            for guidance in (1.0, 5.0, 9.0):
                values = mine[mine.guidance == guidance]["value"].to_numpy()
                resampled = values[np.random.default_rng(0).integers(0, 3, size=(2000, 3))].mean(axis=1)
                low, high = np.percentile(resampled, [2.5, 97.5])
                expected.append([f"{guidance:g}", "3", f"{values.mean():.4g}", f"{low:.4g} – {high:.4g}"])
            (axis,) = block.find_all("div", "score-axis")  # guidance: the prompt and the seed do not make axes here
            assert axis.attrs["data-axis"] == "guidance" and cells(axis.find_all("table", "score-means")[0]) == expected
            pivot = mine.pivot_table(index="seed", columns="guidance", values="value")
            wins = (pivot[9.0] > pivot[1.0]).sum() + 0.5 * (pivot[9.0] == pivot[1.0]).sum()
            assert cells(axis.find_all("table", "win-rates")[0])[2][1] == f"{wins / 3:.0%} ({wins:.4g} of 3)"
            assert len(axis.find_all("svg", "chart")[0].find_all("circle")) == 3
    assert embedded_data(sweep / "report.html")["sortBy"] == "clip"


def test_set_level_distances_are_listed_per_axis_value_with_reference_and_scorer(tmp_path):
    from sweeper.scoring import sets

    sweep = tmp_path / "sweep-a"
    fake_sweep(sweep)
    report.write_report(sweep)
    at = pd.Timestamp("2026-01-01", tz="UTC").to_pydatetime()
    rows = [
        dict(axis="guidance", axis_value=value, metric=metric, value=distance, n_images=8, n_reference=40, reference="refs",
             reference_sha="sha-refs", scorer="tiny-clip", scorer_revision="r1", scored_at=at)
        for value, (metric, distance) in product(["10", "3", "7.5"], [("fd_clip", 12.5), ("kid_clip", 0.0123)])
    ]
    sets.write(sweep, rows)
    assert report.is_stale(sweep)  # newer than the report: the next run writes it again
    report.write_report(sweep)
    (table,) = static_page(sweep / "report.html").by_id("scores").find_all("table", "set-scores")
    assert cells(table) == [
        ["guidance", value, metric, f"{distance:.4g}", "8", "40", "refs", "tiny-clip (revision r1)"]
        for metric, distance in [("fd_clip", 12.5), ("kid_clip", 0.0123)] for value in ["3", "7.5", "10"]
    ]
