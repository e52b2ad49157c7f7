"""A model's own config files, read where they are on this machine: never the network.

Planning reads a few small JSON files of a model (model_index.json, a component's
config.json) to tell its family and variant before anything loads: from a local
diffusers dir, or the Hugging Face cache for a hub id.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")  # org/name
MAX_CONFIG_BYTES = 1 << 20  # a model's config files are a few hundred bytes to a few KB


def model_json(source: str, revision: str | None, file: str) -> dict[str, Any] | None:
    """`file` (a path inside the model, e.g. "transformer/config.json") of the model at `source` (a
    local dir, or a hub id in the Hugging Face cache); None where it is not on this machine.
    Raises OSError or ValueError where it is there but not a JSON object of at most 1 MB."""
    folder = Path(source).expanduser()
    if folder.is_dir():
        path = folder / file
        if not path.is_file():
            return None
    else:
        if folder.exists() or not HUB_ID.fullmatch(source) or ".." in source:
            return None
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, file, revision=revision)
        if not isinstance(cached, str):
            return None
        path = Path(cached)
    with open(path, "rb") as handle:
        data = handle.read(MAX_CONFIG_BYTES + 1)
    if len(data) > MAX_CONFIG_BYTES:
        raise ValueError(f"{file} is over {MAX_CONFIG_BYTES} bytes")
    found = json.loads(data)
    if not isinstance(found, dict):
        raise ValueError(f"{file} is not a JSON object")
    return found
