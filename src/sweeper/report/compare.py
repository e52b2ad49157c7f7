"""Two sweeps side by side: their images paired on the columns they share."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sweeper.report.sweep import COMPARED, MATCH_COLUMNS, Sweep


@dataclass
class Comparison:
    """Two sweeps matched on the columns they share."""

    differ: list[tuple[str, str, str]]  # column, value in A, value in B: constant in each, different between
    shown: list[str]  # the matched columns that vary: what tells one pair from the next
    pairs: list[tuple[list[int], list[int]]]  # row indices in A and in B that agree on every matched column
    only_a: int
    only_b: int


def compare(a: Sweep, b: Sweep) -> Comparison:
    """Pair the images of two sweeps that agree on every spec column except the ones that tell the sweeps apart."""
    differ = [
        (name, a.text[0][name], b.text[0][name])
        for name in COMPARED
        if a.constant(name) and b.constant(name) and a.text[0][name] != b.text[0][name]
    ]
    differing = {name for name, _, _ in differ}
    match_on = [name for name in MATCH_COLUMNS if name not in differing]

    def groups(sweep: Sweep) -> dict[tuple[str, ...], list[int]]:
        found: dict[tuple[str, ...], list[int]] = defaultdict(list)
        for index, text in enumerate(sweep.text):
            found[tuple(text[name] for name in match_on)].append(index)
        return found

    in_a, in_b = groups(a), groups(b)
    shown = [name for name in match_on if not (a.constant(name) and b.constant(name))]
    pairs = [(rows, in_b[key]) for key, rows in in_a.items() if key in in_b]
    pairs.sort(key=lambda pair: tuple(a.rank(name, a.rows[pair[0][0]][name]) for name in shown))
    only_a = sum(len(rows) for key, rows in in_a.items() if key not in in_b)
    only_b = sum(len(rows) for key, rows in in_b.items() if key not in in_a)
    return Comparison(differ, shown, pairs, only_a, only_b)
