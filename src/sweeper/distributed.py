"""Ranks started by `accelerate launch` or torchrun, seen from one of them.

Rank 0 decides what must be the same everywhere (the sweep dir, the seed
nonce, what is already done) and broadcasts it; rendering itself needs no
talk, because every rank computes the same assignment of batches. Ranks
finish at different times, so the process group gets a timeout far beyond
NCCL's default 10 minutes, which would kill a long, uneven sweep.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any, TypeVar

T = TypeVar("T")

COLLECTIVE_TIMEOUT = dt.timedelta(days=7)


def world_size() -> int:
    """Ranks of this launch (1 when started as a plain process); no torch import."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def launched() -> bool:
    """True under `accelerate launch` / torchrun with more than one rank."""
    return world_size() > 1


def _state():
    """The process group, made once. Without CUDA accelerate must be told
    `cpu=True`, or every rank believes it is alone."""
    from accelerate import PartialState

    from sweeper.devices import cuda_device_count

    return PartialState(cpu=cuda_device_count() == 0, timeout=COLLECTIVE_TIMEOUT)


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    import torch.distributed as dist

    _state()
    box: list[Any] = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    import torch.distributed as dist

    _state()
    dist.barrier()


def render_device(device_type: str) -> str:
    """This rank's device: its own GPU under several ranks."""
    return f"cuda:{local_rank()}" if device_type == "cuda" else device_type
