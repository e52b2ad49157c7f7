"""Statistics of image scores: per axis value a mean with a bootstrap interval, win rates on paired images.

Pure numpy and pandas. Deterministic: each interval resamples from a fresh
generator of one seed, so a report written twice shows the same numbers, and
one group's interval does not depend on which groups came before it.

The frames these functions take hold one row per scored image: a column per
swept key (the value's label) and `value`, the score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RESAMPLES = 2000  # bootstrap resamples per interval
SEED = 0
LEVEL = 0.95
MIN_INTERVAL = 3  # fewer images: a mean, no interval
REPLICATES = ("prompt", "seed")  # what an axis value's images may differ in
_CHUNK = 4_000_000  # resampled values held at once


@dataclass(frozen=True)
class Mean:
    """A mean over n values and its percentile-bootstrap interval (None under MIN_INTERVAL values)."""

    n: int
    mean: float | None
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class WinRate:
    """How often one side scored higher than the other on n pairs, a tie counting half."""

    wins: float
    n: int

    @property
    def rate(self) -> float | None:
        return self.wins / self.n if self.n else None


def mean_interval(values: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> Mean:
    """The mean of `values` (NaNs left out) and its 95% percentile-bootstrap interval."""
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    n = len(values)
    if n == 0:
        return Mean(0, None)
    mean = float(values.mean())
    if n < MIN_INTERVAL:
        return Mean(n, mean)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    step = max(1, _CHUNK // n)
    for start in range(0, resamples, step):
        count = min(step, resamples - start)
        means[start : start + count] = values[rng.integers(0, n, size=(count, n))].mean(axis=1)
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Mean(n, mean, float(low), float(high))


def follows(frame: pd.DataFrame, name: str, leader: str) -> bool:
    """Each value of `leader` comes with one value of `name` (keys zipped with it): such a key is part of
    the leader's value, not a key its images share."""
    return bool((frame.groupby(leader, sort=False)[name].nunique(dropna=False) <= 1).all())




def within_of(frame: pd.DataFrame, axis: str, swept: list[str]) -> list[str]:
    """The swept keys an axis value's images share: all but the axis, those that follow it, the prompt and the seed."""
    return [name for name in swept if name != axis and name not in REPLICATES and not follows(frame, name, axis)]


def by_value(frame: pd.DataFrame, axis: str, swept: list[str], orders: dict[str, list[str]]) -> list[tuple[tuple[str, ...], str, Mean]]:
    """Per combination of the other swept keys (prompt and seed apart) and per axis value: the mean
    score and its interval over the images that differ only in prompt and seed.
    Rows in display order (`orders`: each key's labels in order); groups without a score left out."""
    within = within_of(frame, axis, swept)
    keys = [*within, axis]
    rows = []
    for key, group in frame.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        rows.append((tuple(key[:-1]), key[-1], mean_interval(group["value"].to_numpy())))
    place = {name: {text: n for n, text in enumerate(orders[name])} for name in keys}
    rows.sort(key=lambda row: tuple(place[name].get(text, len(place[name])) for name, text in zip(keys, (*row[0], row[1]))))
    return [row for row in rows if row[2].n]


def win_rates(frame: pd.DataFrame, axis: str, swept: list[str], values: list[str]) -> dict[tuple[str, str], WinRate]:
    """For each two values a, b of the axis: how often a's image scored higher than b's on images equal
    in every other swept key (prompt and seed included; keys that follow the axis are part of it);
    ties count half. Several images of one key and value (rare: equal keys, other columns differ)
    count as their mean."""
    match = [name for name in swept if name != axis and not follows(frame, name, axis)]
    scored = frame[frame["value"].notna()]
    if match:
        table = scored.groupby([*match, axis], sort=False)["value"].mean().unstack(axis)
    else:
        table = scored.groupby(axis, sort=False)["value"].mean().to_frame().T
    found: dict[tuple[str, str], WinRate] = {}
    for a in values:
        for b in values:
            if a == b or a not in table or b not in table:
                continue
            both = table[a].notna() & table[b].notna()
            found[(a, b)] = wins(table[a][both].to_numpy(), table[b][both].to_numpy())
    return found


def wins(a: np.ndarray, b: np.ndarray) -> WinRate:
    """How often a beat b, pair by pair (equal length, no NaNs), a tie counting half."""
    return WinRate(float((a > b).sum() + 0.5 * (a == b).sum()), len(a))


def paired(a: np.ndarray, b: np.ndarray) -> tuple[Mean, WinRate]:
    """Pairs of scores (a[i], b[i]), NaNs on either side left out: the mean difference a - b with
    its bootstrap interval, and how often a beat b."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    both = ~np.isnan(a) & ~np.isnan(b)
    return mean_interval(a[both] - b[both]), wins(a[both], b[both])
