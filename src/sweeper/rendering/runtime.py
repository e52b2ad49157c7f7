"""Runtime: what one process keeps between batches, in one object.

    seed_nonce     drawn once: every plan of the sweep gives seeds of -1 the same values
    residents      the loaded pipelines, each with its own caches (Resident)
    embeddings     prompt embeddings per (pipeline, prompts, cfg), least recently used first
    loads          every model and LoRA adapter loaded, in order (logs and tests count them)

Loading a new model evicts the old one (`evict`): the pipelines go, and with
them everything cached for them. Two Runtime objects share nothing. No torch
here: planning reads the nonce without importing it.
"""

from __future__ import annotations

import gc
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable

# Prompt embeddings kept per runtime: SDXL's take ~0.6 MB per prompt in float16.
EMBEDDING_CACHE_SIZE = 256


@dataclass(eq=False)
class Resident:
    """A loaded pipeline and what is cached for it alone."""

    pipe: Any
    scheduler_config: Any  # the model's own scheduler config: every swap starts from it
    schedulers: dict[tuple, Any] = field(default_factory=dict)  # (class, kwargs) -> a scheduler to copy
    warmed: set[tuple] = field(default_factory=set)  # the shapes (width, height, images) it has been called at
    adapters: set[str] = field(default_factory=set)  # the LoRA adapters loaded into its modules (content hashes)
    own_vae: Any = None  # a base model's own VAE, while another may be swapped in (vaes.py)
    vaes: dict[str, Any] = field(default_factory=dict)  # the `vae` values loaded for a base model, by content hash
    inversions: set[str] = field(default_factory=set)  # the textual-inversion embeddings loaded into its text encoders (content hashes)


class Runtime:
    """One process's rendering state: resident pipelines (one base model at a time), their caches, the seed nonce."""

    def __init__(self, seed_nonce: int | None = None) -> None:
        self.seed_nonce = secrets.randbelow(2**32) if seed_nonce is None else seed_nonce
        # Keys: ("base", base key), ("mode", base key, mode), ("refiner", base key, refiner key).
        self.residents: dict[tuple, Resident] = {}
        self.embeddings: OrderedDict[tuple, tuple] = OrderedDict()
        self.loads: list[tuple] = []
        self.hooked: Any = None  # with CPU offload: the pipeline whose hooks are installed

    def pipeline(self, key: tuple) -> Any:
        resident = self.residents.get(key)
        return None if resident is None else resident.pipe

    def add(self, key: tuple, pipe: Any, scheduler_config: Any) -> Any:
        self.residents[key] = Resident(pipe, scheduler_config)
        return pipe

    def resident(self, pipe: Any) -> Resident:
        """The entry of a loaded pipeline (looked up by the object itself, never by id())."""
        for resident in self.residents.values():
            if resident.pipe is pipe:
                return resident
        raise KeyError(f"{type(pipe).__name__} is not resident in this runtime")

    def pipes(self) -> list[Any]:
        return [resident.pipe for resident in self.residents.values()]

    def first_call(self, pipe: Any, shape: tuple) -> bool:
        """True the first time it is asked for a pipeline at a shape (width, height, images): that call needs a warm-up."""
        resident = self.resident(pipe)
        first = shape not in resident.warmed
        resident.warmed.add(shape)
        return first

    def cached_embeddings(self, key: tuple) -> tuple | None:
        """The embeddings stored under `key` (its first item the pipeline), now the most recently used."""
        if key not in self.embeddings:
            return None
        self.embeddings.move_to_end(key)
        return self.embeddings[key]

    def store_embeddings(self, key: tuple, value: tuple) -> tuple:
        self.embeddings[key] = value
        if len(self.embeddings) > EMBEDDING_CACHE_SIZE:
            self.embeddings.popitem(last=False)
        return value

    def evict(self, drop: Callable[[tuple], bool]) -> list[tuple]:
        """Free the resident pipelines whose key `drop` picks, everything cached for them, and the
        memory they held; the keys freed."""
        keys = [key for key in self.residents if drop(key)]
        if not keys:
            return keys
        gone = [self.residents.pop(key).pipe for key in keys]
        if any(self.hooked is pipe for pipe in gone):
            self.hooked = None
        for key in [key for key in self.embeddings if any(key[0] is pipe for pipe in gone)]:
            del self.embeddings[key]
        del gone

        release_memory(keys[0][1][3])  # the device of the base key
        return keys


_this_process: Runtime | None = None


def this_process() -> Runtime:
    """The runtime of this process, made on first use: the Hydra callback, our sweeper and
    launcher plugins and the job function plan and render with the same nonce and models."""
    global _this_process
    if _this_process is None:
        _this_process = Runtime()
    return _this_process


def release_memory(device: str) -> None:
    """Give back what evicted pipelines or a failed call left allocated."""
    import torch  # only a process that renders frees memory

    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
