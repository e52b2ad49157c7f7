"""Image files: the init images and masks a job renders from, found and hashed.

An image's content hash, not its path, goes into the image id, so an edited
file renders again. Paths from a CSV prompt file are data that may come from
someone else: by default they must stay inside the CSV's folder.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping

from sweeper.planning import validate
from sweeper.errors import invalid, show
from sweeper.storing.files import MAX_IMAGE_BYTES, read_image_file

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROMPT_FILE_PATHS = ("inside", "anywhere")


def csv_paths(c: Mapping[str, Any], rc: dict[str, Any], params: Mapping[str, Any], prompt_file: str | None) -> dict[str, Path]:
    """Image paths a CSV row gives, resolved against the CSV's folder (in `rc`).

    A CSV is data that may come from someone else: with prompt_file_paths=inside
    (the default) its paths must stay inside its folder; the returned roots tell
    `_image_files` to hold a folder's files to that too.
    """
    where = validate.choice(c, "prompt_file_paths", PROMPT_FILE_PATHS, default="inside")
    roots = {}
    for key in ("init_image", "mask_image"):
        if key not in params:
            continue
        folder = Path(str(prompt_file)).expanduser().absolute().parent
        if where == "anywhere":
            rc[key] = os.path.normpath(folder / Path(str(params[key])).expanduser())
            continue
        resolved = (folder / str(params[key])).resolve()
        if not _inside(resolved, folder):
            raise invalid(
                key, params[key], f"in prompt_file={show(prompt_file)} it leads outside the CSV's folder {folder}; "
                "set prompt_file_paths=anywhere if you trust the file",
            )
        rc[key], roots[key] = str(resolved), folder.resolve()
    return roots


def _inside(path: Path, root: Path) -> bool:
    root = root.resolve()
    return path == root or root in path.resolve().parents


def init_images(c: Mapping[str, Any], mode: str, roots: Mapping[str, Path] = {}) -> list[dict[str, str | None]]:
    """Per image: the init image and mask (paths and content hashes); one all-None entry for txt2img."""
    init, mask = c.get("init_image"), c.get("mask_image")
    if mode == "txt2img":
        for key, value in (("init_image", init), ("mask_image", mask)):
            if value is not None:
                raise invalid(key, value, "only for mode=img2img or mode=inpaint")
        return [dict(init_image=None, init_image_sha=None, mask_image=None, mask_image_sha=None)]
    if init is None:
        raise invalid("init_image", init, f"mode={mode} needs an image file or a folder of images")
    if mode == "img2img" and mask is not None:
        raise invalid("mask_image", mask, "only for mode=inpaint")
    if mode == "inpaint" and mask is None:
        raise invalid("mask_image", mask, "mode=inpaint needs a mask: an image file, or a folder of masks named like the init images")
    inits = _image_files("init_image", init, roots.get("init_image"))
    masks = {} if mask is None else {path.stem: path for path in _image_files("mask_image", mask, roots.get("mask_image"))}
    images = []
    for path in inits:
        if mask is None:
            mask_path = None
        elif Path(str(mask)).expanduser().is_file():
            mask_path = next(iter(masks.values()))
        elif path.stem in masks:
            mask_path = masks[path.stem]
        else:
            raise invalid("mask_image", mask, f"no mask named {path.stem}.* for the init image {path}")
        images.append(dict(
            init_image=str(path), init_image_sha=_sha("init_image", path),
            mask_image=None if mask_path is None else str(mask_path),
            mask_image_sha=None if mask_path is None else _sha("mask_image", mask_path),
        ))
    return images


def _image_files(key: str, value: Any, root: Path | None = None) -> list[Path]:
    """An image file, or every image of a folder (sorted by name): absolute paths.

    With a `root` (paths from a CSV), a folder's files must resolve inside it too.
    """
    if not isinstance(value, str) or not value:
        raise invalid(key, value, "must be the path of an image file or of a folder of images")
    path = Path(value).expanduser().absolute()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if root is not None:
            files = [p for p in files if _inside(p, root)]
        if not files:
            raise invalid(key, value, f"the folder holds no image ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if not path.is_file():
        raise invalid(key, value, "no such file or folder" if not path.exists() else "not a regular file")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise invalid(key, value, f"not an image file ({', '.join(IMAGE_SUFFIXES)})")
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise invalid(key, value, f"{size} bytes, over the limit of {MAX_IMAGE_BYTES} for an image")
    return [path]


def _sha(key: str, path: Path) -> str:
    try:
        return file_sha(path)
    except ValueError as error:
        raise invalid(key, str(path), str(error)) from None


def file_sha(path: Path) -> str:
    """The content hash that stands for an init image or mask in the image id."""
    return content_sha(read_image_file(path))


def content_sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]
