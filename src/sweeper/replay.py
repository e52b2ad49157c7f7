"""Replay: render an image again from the metadata in its own PNG.

    python -m sweeper.replay outputs/sweeps/<name>/images/<id>.png [-o again.png]

The PNG's `sweeper` chunk holds the full spec and its pipeline call: the
other images rendered with it (batched float math is not batch-invariant)
and the CPU thread count. Replay repeats that call and compares: on the same
device with the same versions the pixels are bit-identical. Exit code 0 when
they are, 1 when they differ, 2 when the file is not a sweeper PNG.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from sweeper.plan import ImageSpec


@dataclasses.dataclass
class Recorded:
    spec: ImageSpec
    batch: list[ImageSpec]  # the pipeline call, this image at `index`
    index: int
    threads: int | None
    versions: dict[str, str]
    pixels: np.ndarray


def read(path: Path) -> Recorded:
    """What the PNG says about how it was made. Raises ValueError if it is not a sweeper PNG."""
    try:
        with Image.open(path) as image:
            chunk = json.loads(image.text["sweeper"])
            pixels = np.asarray(image.convert("RGB"))
    except (OSError, KeyError, ValueError, AttributeError) as error:
        raise ValueError(f"{path}: not a PNG written by sweeper ({type(error).__name__}: {error})") from None
    spec = ImageSpec.from_json(json.dumps(chunk["spec"]))
    call = chunk.get("call") or {"batch": [{}]}
    batch = [dataclasses.replace(spec, **fields) for fields in call["batch"]]
    index = chunk["row"]["batch_index"] if "call" in chunk else 0
    return Recorded(spec, batch, index, call.get("threads"), chunk.get("versions", {}), pixels)


def replay(recorded: Recorded) -> np.ndarray:
    """Render the recorded call again; the image's pixels (H, W, 3) uint8."""
    import torch

    from sweeper.render import render_batch
    from sweeper.schedule import Batch
    from sweeper.store import to_image

    device = "cuda:0" if recorded.spec.device == "cuda" else recorded.spec.device
    if device == "cpu" and recorded.threads:
        torch.set_num_threads(recorded.threads)
    images = render_batch(Batch(tuple(recorded.batch)), device).images
    return np.asarray(to_image(images[recorded.index]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="a PNG written by sweeper")
    parser.add_argument("-o", "--output", type=Path, help="where to write the new render (default: none written)")
    args = parser.parse_args(argv)
    try:
        recorded = read(args.image)
    except ValueError as error:
        print(f"sweeper.replay: error: {error}", file=sys.stderr)
        return 2

    import diffusers
    import torch

    from sweeper import __version__
    from sweeper.store import png_bytes, write_atomic

    versions = {"sweeper": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    changed = [f"{name} {recorded.versions.get(name)} -> {now}" for name, now in versions.items() if recorded.versions.get(name) != now]
    if changed:
        print(f"sweeper.replay: warning: versions differ ({', '.join(changed)}): pixels may differ", file=sys.stderr)
    pixels = replay(recorded)
    if args.output:
        write_atomic(args.output, png_bytes(Image.fromarray(pixels), recorded.spec, versions))
    levels = np.abs(pixels.astype(int) - recorded.pixels.astype(int))
    if not levels.any():
        print(f"sweeper.replay: {args.image}: identical ({recorded.spec.width}x{recorded.spec.height}, seed {recorded.spec.seed}, batch of {len(recorded.batch)})")
        return 0
    print(
        f"sweeper.replay: {args.image}: differs: {int((levels.max(axis=-1) > 0).sum())} pixels, at most {int(levels.max())} levels "
        f"(batch of {len(recorded.batch)} on {recorded.spec.device})"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
