"""Can a model be had? Checked before anything loads.

Tiny models are built here; local directories must hold a diffusers model;
hub ids must be in the local Hugging Face cache or the hub must answer.
"""

from __future__ import annotations

from pathlib import Path

from sweeper.errors import PlanError
from sweeper.model_files import HUB_ID
from sweeper.planning.spec import SINGLE_FILE_SUFFIXES
from sweeper.rendering.tiny import tiny_models

def offline_hint(key: str) -> str:
    tiny = "refiner=tiny" if key.startswith("refiner") else "model=tiny"
    return f"download it first (hf download), or use {tiny} to try sweeper offline"


def is_hub_or_tiny(model_id: str) -> bool:
    """A tiny model's name, or a hub id (org/name) that names nothing on this machine."""
    if model_id in tiny_models():
        return True
    return bool(HUB_ID.fullmatch(model_id)) and ".." not in model_id and not Path(model_id).expanduser().exists()


def check_available(key: str, model_id: str, revision: str | None) -> None:
    """Raise PlanError (one line, naming `key`) unless `model_id` can be loaded."""
    if model_id in tiny_models() or model_id.endswith(SINGLE_FILE_SUFFIXES):  # plan checked the file
        return
    path = Path(model_id).expanduser()
    if path.exists():
        if not (path / "model_index.json").is_file():
            raise PlanError(f"invalid {key}={model_id!r}: not a diffusers model directory (no model_index.json)")
        return
    if model_id.startswith(("/", ".", "~")) or model_id.count("/") != 1:
        raise PlanError(f"invalid {key}={model_id!r}: no such directory, and not a hub id of the form org/name")

    from huggingface_hub import constants, model_info

    if in_local_cache(model_id, revision):
        return
    if constants.HF_HUB_OFFLINE:
        raise PlanError(f"{key}={model_id!r} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set (offline): {offline_hint(key)}")
    try:
        model_info(model_id, revision=revision, timeout=10)
    except Exception as error:  # any failure to reach or read the hub means we cannot load it
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise PlanError(
            f"{key}={model_id!r} is not in the local Hugging Face cache and the hub cannot be reached "
            f"(offline? {reason[:120]}): {offline_hint(key)}"
        ) from None


def in_local_cache(model_id: str, revision: str | None) -> bool:
    """True when the hub model's index is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(model_id, "model_index.json", revision=revision), str)
