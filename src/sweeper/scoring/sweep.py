"""Scoring the images of a sweep dir: right after they render (run.execute), or stored ones later (python -m sweeper.score).

    Images(sweep_dir, scoring, device)   this process's scorer (loaded once) writing into the dir's score parts
    AfterEachCall(scoring, sweep_dir)    the render loop's: each call's good images, right after they render
                                         (sweep_dir None: a Ray actor's, whose rows the driver writes: take())
    score_earlier(...)                   after the loop: what earlier runs stored unscored
    missing(sweep_dir, names, ids)       the ok images (with their prompts) that lack one of the metrics' scores

An image is scored from the pixels of its PNG: those of the array it rendered
from (store.to_image), so scoring in the sweep and scoring later agree.
"""

from __future__ import annotations

import shlex
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

    def __init__(self, sweep_dir: Path | None, scoring: Scoring, device: str, per_part: bool = False) -> None:
        self.scorer, self.names = load(scoring, device)
        self._sweep_dir = sweep_dir
        self._parts = None if per_part or sweep_dir is None else scores.PartWriter(sweep_dir)
        self.held: list[dict[str, Any]] = []  # with no sweep dir: the rows, for whoever writes them

    def add(self, image_ids: Sequence[str], images: Sequence[Any], prompts: Sequence[str]) -> None:
        """Score `images` ((H, W, 3) uint8 arrays) against their prompts; their rows go to a part."""
        faults.before_score()
        values = self.scorer.score(images, prompts)
        rows = [
            scores.row(image_id, metric, value, *self.names[metric])
            for metric, column in values.items()
            for image_id, value in zip(image_ids, column)
        ]
        if self._sweep_dir is None:
            self.held.extend(rows)
        elif self._parts is None:
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


class AfterEachCall:
    """`score=[...]` in the render loop: each call's good images scored right after they render, on
    its device, with this process's scorer (loaded once). A scoring failure (out of memory, a scorer
    that does not load) is said once and ends scoring in the loop, not rendering: the images are
    stored apart from their scores, and what is left is scored after the loop or by the next run."""

    def __init__(self, scoring: Any, out_dir: Path | None) -> None:
        self._scoring, self._out_dir = scoring, out_dir
        self._images: Any = None

    def take(self) -> list[dict[str, Any]]:
        """The score rows held since the last take (with no out_dir)."""
        if self._images is None:
            return []
        rows, self._images.held = self._images.held, []
        return rows

    def add(self, done: Any, device: str, progress: Any) -> None:
        good = [index for index, error in enumerate(done.errors) if error is None]
        if self._scoring is None or not good:
            return
        import numpy as np

        try:
            if self._images is None:
                self._images = Images(self._out_dir, self._scoring, device)
            specs = [done.batch.specs[index] for index in good]
            pixels = [(np.asarray(done.arrays[index]) * 255).round().astype("uint8") for index in good]  # the PNG's (store.to_image)
            self._images.add([spec.image_id for spec in specs], pixels, [spec.prompt for spec in specs])
        except Exception as error:  # also a PlanError of a scorer that cannot be used: the images go on
            self._scoring = None  # not retried per call (a scorer loaded again and again, out of memory again)
            progress.write(_failed(error))

    def close(self) -> None:
        if self._images is not None:
            self._images.close()


def score_earlier(scoring: Scoring, specs: Sequence[Any], todo: Sequence[Any], out_dir: Path, rank: int, world_size: int, device: str,
                  say: Callable[[str], Any]) -> None:
    """After rendering: score this rank's share of the plan's images (`specs`) that an earlier run stored
    without their scores (killed before it scored them, or its scoring failed), then merge the scores. Not
    the images of this run (`todo`): the render loop scores those (other ranks may still be at it)."""
    from sweeper.scoring import models

    names = models.scorer_names(scoring, models.sources(scoring))
    earlier = {spec.image_id for spec in specs} - {spec.image_id for spec in todo}
    ids = missing(out_dir, names, earlier)[rank::world_size] if earlier else []
    if ids:
        say(f"sweeper: scoring {len(ids)} stored image(s) that have no {', '.join(scoring.metrics)} score yet")
        images = None
        try:
            images = Images(out_dir, scoring, device)
            score_stored(images, out_dir, ids, BATCH_SIZE, lambda n: None)
        except Exception as error:  # the images are stored: scoring them waits for the next run
            say(_failed(error))
        finally:
            if images is not None:
                images.close()
    scores.merge(out_dir)


def left_unscored(scoring: Scoring, specs: Sequence[Any], out_dir: Path) -> str | None:
    """After a launcher's workers scored what they rendered (their scores merged now): a line naming the
    plan's stored images that still lack a score (stored by an earlier run, or their scoring failed), and
    the command that scores them; None when none does."""
    from sweeper.scoring import models

    scores.merge(out_dir)
    left = missing(out_dir, models.scorer_names(scoring, models.sources(scoring)), {spec.image_id for spec in specs})
    if not left:
        return None
    models_given = " ".join(f"--{key.split('.')[-1].replace('_', '-')} {shlex.quote(name)}" for key, name in scoring.keys())
    return (f"sweeper: {len(left)} stored image(s) lack a {' or '.join(scoring.metrics)} score: "
            f"python -m sweeper.score {shlex.quote(str(out_dir))} --metric {','.join(scoring.metrics)} {models_given} scores them")


def _failed(error: Exception) -> str:
    return f"sweeper: scoring failed, the images are kept ({type(error).__name__}: {' '.join(str(error).split())[:200]}); the same command scores them again"
