"""Scores in the report: the statistics against a direct computation, the charts, the page's Scores section."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from itertools import product

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

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
