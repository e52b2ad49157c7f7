"""Replay: render an image again from the metadata in its own PNG.

    python -m sweeper.replay outputs/sweeps/<name>/images/<id>.png [-o again.png]
    python -m sweeper.replay IMAGE.png --init-image photos/      # img2img/inpaint: where its init images are
    python -m sweeper.replay IMAGE.png --model /models/mine.safetensors   # made with a local model
    python -m sweeper.replay IMAGE.png --lora loras/                   # with LoRA adapters: where they are
    python -m sweeper.replay IMAGE.png --vae vaes/ --embeddings embeddings/   # with a VAE file, textual inversions

The PNG's `sweeper` chunk holds the full spec and its pipeline call: the
other images rendered with it (batched float math is not batch-invariant)
and the CPU thread count. Replay repeats that call and compares: on the same
device with the same versions the pixels are bit-identical. Exit code 0 when
they are, 1 when they differ, 2 when the file is not a sweeper PNG or what
it says would not pass as a sweep's config.

A PNG may come from anyone: what it says is checked as a sweep's config is
(planning/recorded.py), schedulers must be diffusers' own, and nothing is
downloaded unless you add --download. A PNG names local files (models, init
images, LoRA files) by their base names only; you say where they are.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sweeper.storing.bounds import loads_json
from sweeper.errors import PlanError
from sweeper.storing.files import MAX_IMAGE_PIXELS
from sweeper.planning.recorded import recorded_specs
from sweeper.rendering.runtime import Runtime, this_process
from sweeper.planning.spec import ImageSpec
from sweeper.rendering.tiny import tiny_models

_CALL_LIMIT = 64  # images in one recorded pipeline call (sweeper's batches are at most 16 by default)
_CALL_PIXELS = MAX_IMAGE_PIXELS  # all of them together: one 4096x4096 image, or 64 of 1024x1024
_THREADS_LIMIT = 1024  # CPU threads torch is asked for


@dataclasses.dataclass
class Recorded:
    spec: ImageSpec
    call: list[dict[str, Any]]  # the pipeline call's per-image fields, this image at `index`
    index: int
    threads: int | None
    versions: dict[str, str]
    pixels: np.ndarray


def read(path: Path) -> Recorded:
    """What the PNG says about how it was made. Raises ValueError (one line) if it is not a sweeper PNG."""
    from sweeper.storing.files import open_image

    try:
        with open_image(path) as image:
            chunk = loads_json(image.info["sweeper"])  # bounded: `[` x 100,000 would end in RecursionError
            pixels = np.asarray(image.convert("RGB"))
        spec = ImageSpec.from_json(json.dumps(chunk["spec"]))
        call = chunk.get("call") or {"batch": [{}]}
        batch = [{**_per_image(spec), **fields} for fields in call["batch"]]
        index = chunk["row"]["batch_index"] if "call" in chunk else 0
        threads = call.get("threads")
        if not 0 <= index < len(batch) <= _CALL_LIMIT or not (threads is None or isinstance(threads, int) and 0 < threads <= _THREADS_LIMIT):
            raise ValueError(f"a call of {len(batch)} images at {index}, {threads} threads")
        versions = {str(k): str(v) for k, v in dict(chunk.get("versions") or {}).items()}
    except (OSError, KeyError, ValueError, TypeError, AttributeError) as error:
        raise ValueError(f"{path}: not a PNG written by sweeper ({type(error).__name__}: {' '.join(str(error).split())[:200]})") from None
    return Recorded(spec, batch, index, threads, versions, pixels)


def _per_image(spec: ImageSpec) -> dict[str, Any]:
    from sweeper.storing.store import CALL_FIELDS

    return {name: getattr(spec, name) for name in CALL_FIELDS}


def checked(recorded: Recorded, args: argparse.Namespace) -> list[ImageSpec]:
    """The recorded call as specs that passed a sweep's checks, local files found where `args` say.

    Raises PlanError (one line).
    """
    from sweeper.rendering import devices
    from sweeper import hub

    spec = recorded.spec
    local = {"model_id": args.model, "model_config": args.model_config, "refiner_id": args.refiner}
    for name, given in local.items():
        value = getattr(spec, name)
        if given is not None:
            revision = {"model_id": "model_revision", "refiner_id": "refiner_revision"}.get(name)
            spec = dataclasses.replace(spec, **{name: str(given)}, **({revision: None} if revision else {}))
        elif value is not None and not hub.is_hub_or_tiny(value):
            flag = "--" + name.removesuffix("_id").replace("_", "-")
            raise PlanError(f"the image was made with a local model {value!r}; pass {flag} PATH to say where it is")
    if spec.lora is not None:
        spec = dataclasses.replace(spec, lora=_local_files("lora", "LoRA", spec.lora, args.lora or []))
    if spec.vae is not None:
        spec = dataclasses.replace(spec, vae=_local_files("vae", "VAE", (spec.vae,), args.vae or [])[0])
    if spec.embeddings is not None:
        spec = dataclasses.replace(spec, embeddings=_local_files("embeddings", "embedding", spec.embeddings, args.embeddings or [], hub=False))
    call = [dict(fields, **_local_images(fields, args)) for fields in recorded.call]
    specs = recorded_specs(spec, call, devices.auto_device())
    first = specs[0]
    pixels = sum(s.width * s.height for s in specs)
    if pixels > _CALL_PIXELS:
        raise PlanError(
            f"the recorded call renders {len(specs)} image(s) of {first.width}x{first.height}: {pixels} pixels, "
            f"over the limit of {_CALL_PIXELS} for one replay"
        )
    for key, model_id, revision in (("model.id", first.model_id, first.model_revision), ("refiner.id", first.refiner_id, first.refiner_revision), ("model.config", first.model_config, None)):
        if model_id is None:
            continue
        if not args.download and model_id not in tiny_models() and hub.is_hub_or_tiny(model_id) and not hub.in_local_cache(model_id, revision):
            raise PlanError(f"{key}={model_id!r} is not in the local Hugging Face cache; replay downloads what a PNG names only with --download")
        hub.check_available(key, model_id, revision)
    from sweeper.rendering import pipelines  # diffusers: the render needs it next anyway

    pipelines.check_scheduler_classes(specs)
    return specs


def _local_images(fields: dict[str, Any], args: argparse.Namespace) -> dict[str, str | None]:
    """Where this image's init image and mask are: files named as recorded, in what the user gave."""
    found = {}
    for name, given in (("init_image", args.init_image), ("mask_image", args.mask_image)):
        recorded = fields.get(name)
        if recorded is None:
            found[name] = None
        elif given is None:
            raise PlanError(f"the image was made from the {name.replace('_', ' ')} {recorded!r}; pass --{name.replace('_', '-')} FILE_OR_FOLDER")
        elif given.is_dir():
            found[name] = str(given / Path(str(recorded)).name)  # a base name: never a way out of the folder
        else:
            found[name] = str(given)
    return found


def _local_files(key: str, what: str, recorded: Any, given: list[Path], hub: bool = True) -> tuple[str, ...]:
    """Where the image's LoRA files (VAE, embeddings) are: each recorded base name in a folder given, or
    a file or folder given of that name (one given for one recorded: that one). A recorded hub id
    stays one (not for embeddings); the files are then checked and hashed as a sweep's are."""
    from sweeper import hub as hubs

    if not isinstance(recorded, tuple) or not recorded or not all(isinstance(name, str) and name for name in recorded):
        raise PlanError(f"invalid {key}={recorded!r}: recorded {what} files must be a list of names")
    found = []
    for name in recorded:
        base = Path(name).name  # a base name: never a way out of a folder given
        matches = [g for g in given if g.exists() and (g.name == base or (len(recorded) == len(given) == 1 and g.is_file()))]
        matches += [g / base for g in given if g.is_dir() and (g / base).exists()]
        if matches:
            found.append(str(matches[0]))
        elif hub and hubs.is_hub_or_tiny(name):
            found.append(name)  # from the local Hugging Face cache unless --download
        else:
            raise PlanError(f"the image was made with the {what} {name!r}; pass --{key} FILE_OR_FOLDER to say where it is")
    return tuple(found)


def replay(recorded: Recorded, specs: list[ImageSpec], runtime: Runtime) -> np.ndarray:
    """Render the recorded call again with `runtime`'s pipelines; the image's pixels (H, W, 3) uint8."""
    import torch

    from sweeper.rendering.render import render_batch
    from sweeper.planning.schedule import Batch
    from sweeper.storing.store import to_image

    device = "cuda:0" if specs[0].device == "cuda" else specs[0].device
    if device == "cpu" and recorded.threads:
        torch.set_num_threads(recorded.threads)
    images = render_batch(Batch(tuple(specs)), device, runtime).images
    return np.asarray(to_image(images[recorded.index]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sweeper.replay", description=__doc__.split("\n\n")[0])
    parser.add_argument("image", type=Path, help="a PNG written by sweeper")
    parser.add_argument("-o", "--output", type=Path, help="where to write the new render (default: none written)")
    parser.add_argument("--init-image", type=Path, help="the init image (img2img, inpaint), or a folder holding it by its recorded name")
    parser.add_argument("--mask-image", type=Path, help="the mask (inpaint), or a folder holding it by its recorded name")
    parser.add_argument("--model", type=Path, help="the local model (file or folder) the image was made with")
    parser.add_argument("--model-config", type=Path, help="the local diffusers folder a single-file model's configs came from")
    parser.add_argument("--refiner", type=Path, help="the local refiner model the image was made with")
    parser.add_argument("--lora", type=Path, action="append", help="a LoRA file the image was made with, or a folder holding them by their recorded names (repeatable)")
    parser.add_argument("--vae", type=Path, action="append", help="the VAE file or folder the image was made with, or a folder holding it by its recorded name")
    parser.add_argument("--embeddings", type=Path, action="append", help="a textual-inversion file the image was made with, or a folder holding them by their recorded names (repeatable)")
    parser.add_argument("--download", action="store_true", help="let the hub model the PNG names be downloaded (default: only the local cache)")
    args = parser.parse_args(argv)
    if not args.download:
        os.environ["HF_HUB_OFFLINE"] = "1"  # before huggingface_hub is imported: nothing a PNG says reaches the network
    try:
        recorded = read(args.image)
        specs = checked(recorded, args)
    except (ValueError, PlanError) as error:
        print(f"sweeper.replay: error: {error}", file=sys.stderr)
        return 2

    import diffusers
    import torch

    from sweeper import __version__
    from sweeper.storing.files import write_atomic
    from sweeper.storing.store import png_bytes

    versions = {"sweeper": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
    changed = [f"{name} {recorded.versions.get(name)} -> {now}" for name, now in versions.items() if recorded.versions.get(name) != now]
    if changed:
        print(f"sweeper.replay: warning: versions differ ({', '.join(changed)}): pixels may differ", file=sys.stderr)
    pixels = replay(recorded, specs, this_process())
    spec = specs[recorded.index]
    if args.output:
        from PIL import Image

        write_atomic(args.output.resolve(), png_bytes(Image.fromarray(pixels), spec, versions))
    if pixels.shape != recorded.pixels.shape:
        print(f"sweeper.replay: {args.image}: differs: {pixels.shape[1]}x{pixels.shape[0]} rendered, {recorded.pixels.shape[1]}x{recorded.pixels.shape[0]} in the file")
        return 1
    levels = np.abs(pixels.astype(int) - recorded.pixels.astype(int))
    if not levels.any():
        print(f"sweeper.replay: {args.image}: identical ({spec.width}x{spec.height}, seed {spec.seed}, batch of {len(specs)})")
        return 0
    print(
        f"sweeper.replay: {args.image}: differs: {int((levels.max(axis=-1) > 0).sum())} pixels, at most {int(levels.max())} levels "
        f"(batch of {len(specs)} on {spec.device})"
    )
    return 1


if __name__ == "__main__":
    sys.exit(main())
