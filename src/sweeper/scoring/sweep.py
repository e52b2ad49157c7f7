"""Scoring the images of a sweep dir: right after they render (run.execute), or stored ones later (python -m sweeper.score).

    Images(sweep_dir, scoring, device)   this process's scorer (loaded once) writing into the dir's score parts
    missing(sweep_dir, names, ids)       the ok images (with their prompts) that lack one of the metrics' scores

An image is scored from the pixels of its PNG: those of the array it rendered
from (store.to_image), so scoring in the sweep and scoring later agree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Collection, Sequence

from sweeper import faults
from sweeper.scoring.models import Scoring, load
from sweeper.storing import scores

BATCH_SIZE = 16  # stored images scored at a time, unless asked otherwise


class Images:
    """Scores images into the sweep dir's score parts with this process's scorer.

    `per_part`: each add() becomes a part file of its own (the command line
    scores stored images: what a kill leaves is kept batch by batch); else rows
    gather in few parts (the render loop: rows lost to a kill are scored by the
    next run of the same command).
    """

    def __init__(self, sweep_dir: Path, scoring: Scoring, device: str, per_part: bool = False) -> None:
        self.scorer, self.names = load(scoring, device)
        self._sweep_dir = Path(sweep_dir)
        self._parts = None if per_part else scores.PartWriter(sweep_dir)

    def add(self, image_ids: Sequence[str], images: Sequence[Any], prompts: Sequence[str]) -> None:
        """Score `images` ((H, W, 3) uint8 arrays) against their prompts; their rows go to a part."""
        faults.before_score()
        values = self.scorer.score(images, prompts)
        rows = [
            scores.row(image_id, metric, value, *self.names[metric])
            for metric, column in values.items()
            for image_id, value in zip(image_ids, column)
        ]
        if self._parts is None:
            scores.write_part(self._sweep_dir, rows)
            faults.event("part")
        else:
            self._parts.add(rows)

    def close(self) -> None:
        if self._parts is not None:
            self._parts.close()


def missing(sweep_dir: Path, names: dict[str, tuple[str, str]], among: Collection[str] | None = None) -> list[tuple[str, str]]:
    """(image_id, prompt) of each ok image of the dir (its PNG there) that lacks a score of one of `names`' metrics
    by that scorer; only images of `among` when given. In the manifest's order."""
    from sweeper.storing import manifest

    table = manifest.read(sweep_dir)
    done = manifest.done_ids(sweep_dir)
    have = scores.read(sweep_dir)
    scored: dict[str, set[str]] = {}
    for image_id, metric, scorer, revision in zip(*(have.column(name).to_pylist() for name in scores.KEY)):
        if names.get(metric) == (scorer, revision):
            scored.setdefault(image_id, set()).add(metric)
    return [
        (image_id, prompt)
        for image_id, prompt in zip(table.column("image_id").to_pylist(), table.column("prompt").to_pylist())
        if image_id in done and (among is None or image_id in among) and scored.get(image_id, set()) != set(names)
    ]


def score_stored(images: Images, sweep_dir: Path, todo: Sequence[tuple[str, str]], batch_size: int, progress: Callable[[int], None]) -> None:
    """Score the stored PNGs of `todo` ((image_id, prompt)), `batch_size` at a time."""
    import numpy as np

    from sweeper.storing.files import open_image
    from sweeper.storing.store import IMAGES_DIR

    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        arrays = []
        for image_id, _ in chunk:
            with open_image(Path(sweep_dir) / IMAGES_DIR / f"{image_id}.png", sweep_dir) as image:  # bounded, no link out
                arrays.append(np.asarray(image.convert("RGB")))
        images.add([image_id for image_id, _ in chunk], arrays, [prompt or "" for _, prompt in chunk])
        progress(len(chunk))
