"""Which scorer models a config names, whether they are on this machine, and loading them once per process.

    scoring(config)           -> Scoring | None   `score` and `scorer.*` checked (PlanError, one line), None when off
    check_available(scoring)                      PlanError (one line) for a model not on this machine; nothing loads
    sources(scoring)          -> {key: Source}    where each model is and its revision (a tiny scorer is built)
    load(scoring, device)     -> (Scorer, names)  the models, loaded once per process and device

Sweeper downloads no scorer: a hub id must be in the local Hugging Face cache
(`hf download <id>`); tiny-clip and tiny-aesthetic are built here (tiny.py).
The revision of a hub model is its snapshot's commit; of a local dir or file,
the sha256 of its weights; so another model, or other weights under one
name, scores beside the first (scores.py keys rows by scorer and revision).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from sweeper.errors import PlanError, invalid
from sweeper.model_files import HUB_ID
from sweeper.scoring.tiny import TINY_SCORERS, tiny_scorer_dir

METRICS = ("clip", "aesthetic", "pickscore")  # metrics.METRICS, without importing torch to check a config
MODEL_KEYS = ("clip_model", "aesthetic_model", "pickscore_model", "pickscore_processor")
AESTHETIC_FILES = ("sac+logos+ava1-l14-linearMSE.pth", "model.safetensors")  # LAION's file, or a safetensors copy
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth")


@dataclass(frozen=True)
class Scoring:
    """What to score and with which models (the `score` key and the `scorer` group)."""

    metrics: tuple[str, ...]
    clip_model: str
    aesthetic_model: str
    pickscore_model: str
    pickscore_processor: str

    def keys(self) -> list[tuple[str, str]]:
        """(key, model) of each model the metrics need."""
        needed = []
        if {"clip", "aesthetic"} & set(self.metrics):
            needed.append(("scorer.clip_model", self.clip_model))
        if "aesthetic" in self.metrics:
            needed.append(("scorer.aesthetic_model", self.aesthetic_model))
        if "pickscore" in self.metrics:
            needed += [("scorer.pickscore_model", self.pickscore_model), ("scorer.pickscore_processor", self.pickscore_processor)]
        return needed


def metrics(value: Any, key: str = "score") -> tuple[str, ...]:
    """The metrics of `score=[clip,aesthetic]` (a list, or one name), in METRICS order; PlanError otherwise."""
    names = [value] if isinstance(value, str) else value
    if names is None:
        return ()
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise invalid(key, value, f"must be a list of metrics: {', '.join(METRICS)}")
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise invalid(key, value, f"{unknown[0]!r} is not a metric; known: {', '.join(METRICS)}")
    return tuple(name for name in METRICS if name in names)


def scoring(config: Mapping[str, Any]) -> Scoring | None:
    """The sweep's scoring from its config (`score`, `scorer.*`), None when `score` is empty."""
    chosen = metrics(config.get("score"))
    if not chosen:
        return None
    scorer = config.get("scorer") or {}
    models = {}
    for name in MODEL_KEYS:
        value = scorer.get(name)
        if not isinstance(value, str) or not value:
            raise invalid(f"scorer.{name}", value, "must be a model: a hub id (org/name), a local path, or a tiny scorer (scorer=tiny)")
        models[name] = value
    return Scoring(chosen, **models)


@dataclass(frozen=True)
class Source:
    name: str  # as the user named it
    path: Path  # a local dir, or a file (an aesthetic head)
    revision: str


def locate(key: str, name: str) -> Source:
    """Where scorer model `name` (the value of `key`) is on this machine, and its revision (a tiny scorer is built here)."""
    where = _where(key, name)
    if where is None:
        path = tiny_scorer_dir(name)
        return Source(name, path, _weights_sha(path))
    path, revision = where
    return Source(name, path, revision or _weights_sha(path))


def _where(key: str, name: str) -> tuple[Path, str | None] | None:
    """(path, hub commit or None) of scorer model `name`; None for a tiny scorer. PlanError (one line) when it is not here."""
    if name in TINY_SCORERS:
        return None
    path = Path(name).expanduser()
    if path.exists():
        if path.is_dir() and not any(p.suffix in WEIGHT_SUFFIXES for p in path.iterdir()):
            raise PlanError(f"invalid {key}={name!r}: no weights (.safetensors, .bin, .pth) in that directory")
        return path, None
    if not HUB_ID.fullmatch(name) or ".." in name:
        raise PlanError(f"invalid {key}={name!r}: no such file or directory, and not a hub id of the form org/name")
    from huggingface_hub import snapshot_download

    try:
        snapshot = Path(snapshot_download(name, local_files_only=True))
    except Exception:  # not in the cache (LocalEntryNotFoundError), or a cache we cannot read
        raise PlanError(
            f"{key}={name!r} is not in the local Hugging Face cache: fetch it first (hf download {name}); sweeper downloads no scorer; "
            "scorer=tiny scores with tiny random-weight models offline"
        ) from None
    return snapshot, snapshot.name


def _weights_sha(path: Path) -> str:
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return _files_sha(tuple((str(file), file.stat().st_size, file.stat().st_mtime_ns) for file in files))


@functools.lru_cache(maxsize=16)
def _files_sha(files: tuple[tuple[str, int, int], ...]) -> str:
    """The sha256 of the files' bytes, once per process for files of the same size and time."""
    digest = hashlib.sha256()
    for file, _, _ in files:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(2**22), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def check_available(config: Scoring) -> None:
    """Refuse (PlanError, one line) a model the metrics need that is not here: before anything loads, nothing built or hashed."""
    for key, name in config.keys():
        _where(key, name)


def scorer_names(config: Scoring, sources: Mapping[str, Source]) -> dict[str, tuple[str, str]]:
    """{metric: (scorer, scorer_revision)}: the names its rows carry. The aesthetic head's is `<head> on <clip>`."""
    names = {}
    for metric in config.metrics:
        if metric == "clip":
            source = sources["scorer.clip_model"]
            names[metric] = (source.name, source.revision)
        elif metric == "aesthetic":
            head, clip = sources["scorer.aesthetic_model"], sources["scorer.clip_model"]
            names[metric] = (f"{head.name} on {clip.name}", f"{head.revision} on {clip.revision}")
        else:
            source = sources["scorer.pickscore_model"]
            names[metric] = (source.name, source.revision)
    return names


_loaded: dict[tuple, Any] = {}  # this process's scorers: loaded once, like the pipeline cache


def sources(config: Scoring) -> dict[str, Source]:
    """Each model the metrics need, located, by its key (scorer.clip_model, ...)."""
    return {key: locate(key, name) for key, name in config.keys()}


def load(config: Scoring, device: str) -> tuple[Any, dict[str, tuple[str, str]]]:
    """This process's Scorer for `config` on `device` (loaded on first use) and its scorer names (scorer_names)."""
    found = sources(config)
    key = (config.metrics, tuple(sorted((k, s.path, s.revision) for k, s in found.items())), device)
    if key not in _loaded:
        _loaded.clear()  # one scorer at a time: another config replaces it
        _loaded[key] = _build(config, found, device)
    return _loaded[key], scorer_names(config, found)


def _build(config: Scoring, sources: Mapping[str, Source], device: str) -> Any:
    from transformers import CLIPModel, CLIPProcessor
    from transformers.utils import logging

    from sweeper.scoring.metrics import Scorer, aesthetic_head

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    models: dict[str, Any] = {}
    if "scorer.clip_model" in sources:
        path = sources["scorer.clip_model"].path
        models["clip"] = (CLIPModel.from_pretrained(path).eval().to(device), CLIPProcessor.from_pretrained(path))
    if "aesthetic" in config.metrics:
        state = _head_weights(sources["scorer.aesthetic_model"])
        head = aesthetic_head(state["layers.0.weight"].shape[1])
        width = models["clip"][0].config.projection_dim
        if head.layers[0].in_features != width:
            raise PlanError(
                f"invalid scorer.aesthetic_model={config.aesthetic_model!r}: it takes {head.layers[0].in_features}-dim CLIP embeddings, "
                f"scorer.clip_model={config.clip_model!r} gives {width}"
            )
        head.load_state_dict(state)
        models["aesthetic"] = head.to(device)
    if "pickscore" in config.metrics:
        model = CLIPModel.from_pretrained(sources["scorer.pickscore_model"].path).eval().to(device)
        models["pickscore"] = (model, CLIPProcessor.from_pretrained(sources["scorer.pickscore_processor"].path))
    return Scorer(config.metrics, models, device)


def _head_weights(source: Source) -> dict[str, Any]:
    """The aesthetic head's state dict, read as tensors only: safetensors, or torch.load(weights_only=True), never unpickling code."""
    import torch
    from safetensors.torch import load_file

    path = source.path
    if path.is_dir():
        found = [path / name for name in AESTHETIC_FILES if (path / name).is_file()]
        if not found:
            raise PlanError(f"invalid scorer.aesthetic_model={source.name!r}: none of {', '.join(AESTHETIC_FILES)} in it")
        path = found[0]
    try:
        state = load_file(str(path)) if path.suffix == ".safetensors" else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a file that is not a state dict of tensors
        raise PlanError(f"invalid scorer.aesthetic_model={source.name!r}: not a state dict of tensors ({' '.join(str(error).split())[:150]})") from None
    if not isinstance(state, dict) or "layers.0.weight" not in state:
        raise PlanError(f"invalid scorer.aesthetic_model={source.name!r}: not the LAION aesthetic predictor's state dict (no layers.0.weight)")
    return state
