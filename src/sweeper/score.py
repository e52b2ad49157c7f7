"""Score a sweep's images: every ok image of its manifest that lacks the metric's score by that scorer.

    python -m sweeper.score outputs/sweeps/<name> --metric clip,aesthetic
    python -m sweeper.score outputs/sweeps/<name> --metric clip --clip-model openai/clip-vit-base-patch32   # beside the first
    python -m sweeper.score outputs/sweeps/<name> --metric clip,aesthetic --scorer tiny                    # tiny random scorers, offline
    python -m sweeper.score outputs/sweeps/<name> --fid reference/ --by guidance   # FD and KID on CLIP features per guidance value

With --fid, each value of the --by axis is compared as a set with the
reference folder's images (scoring/sets.py) into <name>/set_scores.parquet.
Otherwise scores go into <name>/scores.parquet (storing/scores.py): a re-run scores
nothing new, a killed run keeps what it scored batch by batch and the same
command scores the rest. Exit 2 with one line for what you can fix (no such
sweep dir, an unknown metric, a scorer model not on this machine), before
any model loads; nothing is written then.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import Any

from sweeper.errors import PlanError, UnsafePath


def _defaults(preset: str) -> dict[str, Any]:
    """conf/scorer/<preset>.yaml: the models `score=[...]` uses, so both commands share them."""
    from sweeper.configs import config_dir
    from sweeper.scoring.models import MODEL_KEYS
    from sweeper.storing.bounds import load_plain_yaml

    path = Path(config_dir()) / "scorer" / f"{preset}.yaml"
    if preset not in _presets() or not path.is_file():
        raise PlanError(f"invalid --scorer={preset!r}: known: {', '.join(_presets())}")
    values = load_plain_yaml(path.read_text(encoding="utf-8"))
    return {name: values[name] for name in MODEL_KEYS}


def _presets() -> list[str]:
    from sweeper.configs import config_dir

    return sorted(path.stem for path in (Path(config_dir()) / "scorer").glob("*.yaml"))


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m sweeper.score", description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path, help="a sweep (or run) dir holding manifest.parquet")
    parser.add_argument("--metric", default="clip", help="comma-separated: clip, aesthetic, pickscore (default: clip)")
    parser.add_argument("--scorer", default="default", help="a preset of scorer models from conf/scorer: default, tiny")
    for name in ("clip_model", "aesthetic_model", "pickscore_model", "pickscore_processor"):
        parser.add_argument(f"--{name.replace('_', '-')}", dest=name, help=f"scorer.{name} (default: the preset's)")
    parser.add_argument("--device", default="auto", help="auto (cuda if present, else cpu), cpu, cuda, cuda:N, mps")
    parser.add_argument("--batch-size", type=int, default=16, help="images scored at a time (default 16)")
    parser.add_argument("--fid", type=Path, help="a folder of reference images: FD and KID on CLIP features (of --clip-model) per value of --by")
    parser.add_argument("--by", help="with --fid: the manifest column whose values make the sets (guidance, seed, scheduler, ...)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: scorer models must be in the local cache
    args = parse(argv)
    try:
        scoring, device = _checked(args)
    except (PlanError, UnsafePath, ValueError) as error:
        print(f"sweeper.score: error: {error}", file=sys.stderr)
        return 2
    from sweeper.scoring import models, sweep
    from sweeper.storing import scores

    if args.fid is not None:
        return _set_distances(args, scoring, device)
    names = models.scorer_names(scoring, models.sources(scoring))
    todo = sweep.missing(args.sweep_dir, names)
    if todo:
        try:
            images = sweep.Images(args.sweep_dir, scoring, device, per_part=True)
        except PlanError as error:  # found only once loaded: an aesthetic head of another width than the CLIP
            print(f"sweeper.score: error: {error}", file=sys.stderr)
            return 2
        from tqdm import tqdm

        with tqdm(total=len(todo), unit="img", desc="sweeper.score", file=sys.stderr, dynamic_ncols=True) as bar:
            sweep.score_stored(images, args.sweep_dir, todo, args.batch_size, bar.update)
    table = scores.merge(args.sweep_dir)
    print(f"sweeper.score: {len(todo)} image(s) scored ({', '.join(scoring.metrics)}); {table.num_rows} score(s) in {args.sweep_dir / scores.SCORES}")
    return 0


def _set_distances(args: argparse.Namespace, scoring: Any, device: str) -> int:
    from sweeper.scoring import models, sets

    try:
        scorer, names = models.load(scoring, device)
    except PlanError as error:
        print(f"sweeper.score: error: {error}", file=sys.stderr)
        return 2
    model, processor = scorer.models["clip"]
    rows = sets.set_distances(args.sweep_dir, args.by, args.fid, (model, processor, device, *names["clip"]), args.batch_size,
                              lambda text: print(f"sweeper.score: {text}", file=sys.stderr))
    if rows:
        sets.write(args.sweep_dir, rows)
    for row in rows:
        print(f"sweeper.score: {row['axis']}={row['axis_value']}: {row['metric']} {row['value']:.4f} ({row['n_images']} images, {row['n_reference']} reference)")
    print(f"sweeper.score: {len(rows)} set score(s) into {args.sweep_dir / sets.SET_SCORES}")
    return 0


def _checked(args: argparse.Namespace) -> tuple[Any, str]:
    """The scoring and device the arguments ask for; PlanError (one line) for what the user can fix."""
    from sweeper.rendering import devices
    from sweeper.scoring import models
    from sweeper.storing import manifest
    from sweeper.storing.files import check_sweep_dir

    if args.batch_size < 1:
        raise PlanError(f"invalid --batch-size={args.batch_size}: must be an integer >= 1")
    metrics = ["clip"] if args.fid is not None else [name.strip() for name in args.metric.split(",") if name.strip()]
    config = {"score": metrics, "scorer": _defaults(args.scorer)}
    config["scorer"].update({name: getattr(args, name) for name in models.MODEL_KEYS if getattr(args, name)})
    try:
        scoring = models.scoring(config)
    except PlanError as error:
        raise PlanError(str(error).replace("invalid score=", "invalid --metric=")) from None
    if scoring is None:
        raise PlanError("invalid --metric='': name a metric: clip, aesthetic, pickscore")
    sweep_dir = args.sweep_dir
    if not sweep_dir.is_dir():
        raise PlanError(f"{sweep_dir}: no such sweep dir")
    check_sweep_dir(sweep_dir)
    if not (sweep_dir / manifest.MANIFEST).is_file() and not (sweep_dir / manifest.PARTS_DIR).is_dir():
        raise PlanError(f"{sweep_dir}: not a sweep dir (no {manifest.MANIFEST})")
    device = devices.auto_device() if args.device == "auto" else args.device
    if not re.fullmatch(r"cpu|mps|cuda(:\d+)?", device):
        raise PlanError(f"invalid --device={args.device!r}: auto, cpu, cuda, cuda:N or mps")
    if device.startswith("cuda"):
        problem = devices.cuda_problem(int(device.split(":")[1]) if ":" in device else None)
        if problem:
            raise PlanError(f"invalid --device={args.device}: {problem}")
    if (args.fid is None) != (args.by is None):
        raise PlanError("--fid and --by go together: python -m sweeper.score DIR --fid REFERENCE_FOLDER --by guidance")
    if args.fid is not None:
        from sweeper.scoring.sets import reference_files

        reference_files(args.fid)
        if args.by == "image_id" or args.by not in manifest.read(sweep_dir).column_names:
            raise PlanError(f"invalid --by={args.by!r}: not a manifest column (guidance, seed, scheduler, ...)")
    models.check_available(scoring)
    return scoring, device


if __name__ == "__main__":
    sys.exit(main())
