"""Set-level distances: each value of an axis (the images of guidance=5, say) against a folder of reference images.

    python -m sweeper.score <dir> --fid <reference folder> --by guidance

torchmetrics' FrechetInceptionDistance and KernelInceptionDistance, with the
CLIP image encoder as their `feature` module: Inception's weights cannot be
fetched here, so these are FD_CLIP and KID_CLIP (`fd_clip`, `kid_clip`,
`kid_clip_std`), comparable only with other distances on the same CLIP. A set
needs more images than the CLIP's feature dimensions for a Frechet distance
(its covariance is singular otherwise), and at least KID_MIN_IMAGES for KID
(subsets of min(1000, set, reference) images); a set with fewer is named and
skipped. Rows go into `<dir>/set_scores.parquet`; the same set, metric,
reference and scorer scored again replaces its row.

The reference folder is data: only its regular files with an image suffix,
directly in it (no links, no subfolders), each within the image bounds
(files.open_image), at most MAX_REFERENCE_IMAGES of them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import os
import stat
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa

from sweeper.errors import PlanError

SET_SCORES = "set_scores.parquet"
KID_MIN_IMAGES = 10
MAX_REFERENCE_IMAGES = 50_000
SCHEMA = pa.schema(
    [
        ("axis", pa.string()), ("axis_value", pa.string()), ("metric", pa.string()), ("value", pa.float64()),
        ("n_images", pa.int64()), ("n_reference", pa.int64()), ("reference", pa.string()), ("reference_sha", pa.string()),
        ("scorer", pa.string()), ("scorer_revision", pa.string()), ("scored_at", pa.timestamp("us", tz="UTC")),
    ]
)
_KEY = ("axis", "axis_value", "metric", "reference_sha", "scorer", "scorer_revision")


def reference_files(folder: Path) -> list[Path]:
    """The reference images of `folder` (module docstring); PlanError (one line) when there are none or too many."""
    from sweeper.planning.image_files import IMAGE_SUFFIXES

    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise PlanError(f"invalid --fid={str(folder)!r}: not a folder" + (" (a symbolic link)" if folder.is_symlink() else ""))
    files = []
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.lower().endswith(IMAGE_SUFFIXES) and stat.S_ISREG(entry.stat(follow_symlinks=False).st_mode):
                files.append(folder / entry.name)
                if len(files) > MAX_REFERENCE_IMAGES:
                    raise PlanError(f"invalid --fid={str(folder)!r}: more than {MAX_REFERENCE_IMAGES} images")
    if not files:
        raise PlanError(f"invalid --fid={str(folder)!r}: the folder holds no image ({', '.join(IMAGE_SUFFIXES)}; links are not followed)")
    return sorted(files)


def _pixels(path: Path, root: Path) -> np.ndarray:
    """An image's (H, W, 3) uint8 pixels, read bounded and inside `root` (files.open_image)."""
    from sweeper.storing.files import open_image

    with open_image(path, root) as image:
        return np.array(image.convert("RGB"))


def clip_features(model: Any, processor: Any, device: str) -> Any:
    """The `feature` module torchmetrics' FID and KID call: (N, 3, H, W) uint8 images -> (N, D) CLIP image embeddings."""
    import torch

    class ClipFeatures(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model
            self.num_features = int(model.config.projection_dim)

        @torch.inference_mode()
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            pixels = processor(images=list(images.cpu()), return_tensors="pt")["pixel_values"].to(device, model.dtype)
            output = model.get_image_features(pixel_values=pixels)
            return (output if isinstance(output, torch.Tensor) else output.pooler_output).double()

    return ClipFeatures()


def set_distances(
    sweep_dir: Path, axis: str, reference: Path, scorer: tuple[Any, Any, str, str, str], batch_size: int, say: Callable[[str], None]
) -> list[dict[str, Any]]:
    """Rows of fd_clip, kid_clip and kid_clip_std for each value of `axis` with enough ok images.

    `scorer`: (CLIPModel, CLIPProcessor, device, name, revision)."""
    import torch
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    from sweeper.storing import manifest
    from sweeper.storing.store import IMAGES_DIR

    model, processor, device, name, revision = scorer
    table = manifest.read(sweep_dir)
    if axis not in table.column_names or axis == "image_id":
        raise PlanError(f"invalid --by={axis!r}: not a manifest column (guidance, seed, scheduler, ...)")
    done = manifest.done_ids(sweep_dir)
    sets: dict[str, list[str]] = {}
    for image_id, value in zip(table.column("image_id").to_pylist(), table.column(axis).to_pylist()):
        if image_id in done:
            sets.setdefault(_shown(value), []).append(image_id)
    files = reference_files(reference)
    features = clip_features(model, processor, device)
    dims = features.num_features
    digest = hashlib.sha256()
    fid = FrechetInceptionDistance(feature=features, reset_real_features=False)
    kid = KernelInceptionDistance(feature=features, subset_size=KID_MIN_IMAGES, reset_real_features=False)  # sized per set below
    for path in files:  # one at a time: reference images may differ in size
        pixels = _pixels(path, reference)
        digest.update(path.name.encode("utf-8") + b"\0" + str(pixels.shape).encode() + pixels.tobytes())  # what was compared
        batch = torch.from_numpy(pixels).permute(2, 0, 1)[None]
        fid.update(batch, real=True)
        kid.update(batch, real=True)
    reference_sha = digest.hexdigest()[:20]
    rows = []
    now = dt.datetime.now(dt.timezone.utc)
    for value, ids in sets.items():
        enough_fd = len(ids) > dims and len(files) > dims
        enough_kid = len(ids) >= KID_MIN_IMAGES and len(files) >= KID_MIN_IMAGES
        if not enough_fd:
            say(f"{axis}={value}: {len(ids)} image(s) and {len(files)} reference image(s); fd_clip needs more than {dims} (the CLIP's feature dimensions) in each: skipped")
        if not enough_kid:
            say(f"{axis}={value}: {len(ids)} image(s) and {len(files)} reference image(s); kid_clip needs at least {KID_MIN_IMAGES} in each: skipped")
        if not (enough_fd or enough_kid):
            continue
        fid.reset()
        kid.reset()
        for start in range(0, len(ids), batch_size):
            arrays = [_pixels(Path(sweep_dir) / IMAGES_DIR / f"{image_id}.png", Path(sweep_dir)) for image_id in ids[start : start + batch_size]]
            for same in _same_size(arrays):
                batch = torch.from_numpy(np.stack(same)).permute(0, 3, 1, 2)
                fid.update(batch, real=False)
                kid.update(batch, real=False)
        values = {}
        if enough_fd:
            values["fd_clip"] = float(fid.compute())
        if enough_kid:
            kid.subset_size = min(1000, len(ids), len(files))
            mean, std = kid.compute()
            values.update(kid_clip=float(mean), kid_clip_std=float(std))
        for metric, result in values.items():
            rows.append(dict(axis=axis, axis_value=value, metric=metric, value=result, n_images=len(ids), n_reference=len(files),
                             reference=str(reference), reference_sha=reference_sha, scorer=name, scorer_revision=revision, scored_at=now))
    return rows


def _shown(value: Any) -> str:
    """An axis value as the set's label: numbers as the manifest prints them, lists joined."""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(item) for item in value)
    return str(value)


def _same_size(arrays: Sequence[np.ndarray]) -> list[list[np.ndarray]]:
    groups: dict[tuple, list[np.ndarray]] = {}
    for array in arrays:
        groups.setdefault(array.shape, []).append(array)
    return list(groups.values())


def write(sweep_dir: Path, rows: list[dict[str, Any]]) -> pa.Table:
    """Add `rows` to set_scores.parquet (replacing rows of the same set, metric, reference and scorer), atomically."""
    import pyarrow.parquet as pq

    from sweeper.storing.bounds import read_table
    from sweeper.storing.files import write_atomic
    from sweeper.storing.writers import merging

    path = Path(sweep_dir) / SET_SCORES
    with merging(sweep_dir):
        old = SCHEMA.empty_table()
        if path.is_file() and not path.is_symlink():  # a link in its place is replaced, never followed
            try:
                old = read_table(path, SCHEMA.names).select(SCHEMA.names).cast(SCHEMA)  # bounded: it may come from someone else
            except (pa.ArrowException, OSError, ValueError, KeyError) as error:
                print(f"sweeper: warning: {path} is damaged ({' '.join(str(error).split())[:200]}): written anew", file=sys.stderr, flush=True)
        new = pa.Table.from_pylist(rows, schema=SCHEMA)
        replaced = set(zip(*(new.column(name).to_pylist() for name in _KEY)))
        keep = [index for index, key in enumerate(zip(*(old.column(name).to_pylist() for name in _KEY))) if key not in replaced]
        table = pa.concat_tables([old.take(pa.array(keep, pa.int64())), new])
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        write_atomic(path, buffer.getvalue())
    return table
