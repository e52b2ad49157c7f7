"""Ranks started by `accelerate launch` or torchrun, seen from one of them.

Rank 0 decides what must be the same everywhere (the sweep dir, the seed
nonce, what is already done) and broadcasts it; before rendering, every rank
checks that it planned the sweep rank 0 planned. Rendering itself needs no
talk, because every rank computes the same assignment of batches.

All control messages go over a gloo process group with a bounded timeout
(nothing is exchanged on a GPU, so no NCCL and none of its timeouts). Ranks
finish at different times, so the end is not a collective: each rank beats a
counter in the launcher's key-value store while it renders and sets a flag
when done; the others wait for every flag and call a rank lost once its
counter stops for LOST_AFTER seconds. Rendering never times out, a dead rank
is noticed within a minute or so.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import os
import threading
import time
from typing import Any, Iterator, Sequence, TypeVar

from sweeper.errors import RankLost, RanksDisagree

T = TypeVar("T")

CONTROL_TIMEOUT = dt.timedelta(seconds=120)  # a broadcast or gather that takes longer means a rank is gone
BEAT_SECONDS = 5.0
LOST_AFTER_SECONDS = float(os.environ.get("SWEEPER_LOST_AFTER", "60"))  # tests shorten it
_PREFIX = "sweeper/"


def world_size() -> int:
    """Ranks of this launch (1 when started as a plain process); no torch import."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def local_world_size() -> int:
    """Ranks on this machine."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", str(world_size())))


def launched() -> bool:
    """True under `accelerate launch` / torchrun with more than one rank."""
    return world_size() > 1


def _dist():
    """torch.distributed with the gloo group made (from torchrun's environment), once."""
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="gloo", timeout=CONTROL_TIMEOUT)
    return dist


@contextlib.contextmanager
def _control(what: str) -> Iterator[None]:
    """A collective that fails or times out means a rank died or stopped."""
    try:
        yield
    except RuntimeError as error:
        reason = " ".join(str(error).split())[:200]
        raise RankLost(
            f"rank {rank()}: another rank did not take part in {what} within {CONTROL_TIMEOUT.seconds} s ({reason}); "
            "it died or stopped; the same command finishes the sweep"
        ) from None


def broadcast(value: T) -> T:
    """Rank 0's `value` on every rank."""
    dist = _dist()
    box: list[Any] = [value]
    with _control("a broadcast"):
        dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(value: Any) -> list[Any]:
    """Every rank's `value`, in rank order, on every rank."""
    dist = _dist()
    values: list[Any] = [None] * world_size()
    with _control("a gather"):
        dist.all_gather_object(values, value)
    return values


def agree_on_plan(specs: Sequence[Any]) -> None:
    """Stop every rank, naming what differs, unless all planned the images rank 0 planned.

    Ranks started with other configs (another prompt file on one node, another
    version of a preset) would otherwise each render part of a different sweep.
    """
    jobs: dict[int, list[str]] = {}
    for spec in specs:
        jobs.setdefault(spec.job_num, []).append(spec.image_id)
    digests = {num: hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16] for num, ids in jobs.items()}
    plans = gather((len(specs), digests))
    if all(plan == plans[0] for plan in plans):
        return
    other = next(r for r, plan in enumerate(plans) if plan != plans[0])
    nums = sorted(set(plans[0][1]) | set(plans[other][1]))
    job = next(num for num in nums if plans[0][1].get(num) != plans[other][1].get(num))
    described = gather(_describe(next((spec for spec in specs if spec.job_num == job), None)))
    differences = [
        f"{name} {_short(described[0].get(name))} on rank 0, {_short(described[other].get(name))} on rank {other}"
        for name in described[0].keys() | described[other].keys()
        if described[0].get(name) != described[other].get(name)
    ]
    raise RanksDisagree(
        f"rank {other} planned another sweep than rank 0 ({plans[other][0]} images, rank 0 {plans[0][0]} images); "
        f"in job {job}: {'; '.join(sorted(differences)[:3]) or 'other images'}; start every rank with the same command, "
        "config and input files"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _describe(spec: Any) -> dict[str, Any]:
    if spec is None:
        return {"images": "none"}
    fields = spec.render_fields()
    return {**{name: value for name, value in fields.items() if name != "seed"}, "prompt_file": spec.prompt_file}


def _store():
    """The key-value store the launcher set up for this launch (torchrun's agent hosts it)."""
    import torch.distributed as dist

    _dist()
    return dist.PrefixStore(_PREFIX, dist.distributed_c10d._get_default_store())


@contextlib.contextmanager
def heartbeat() -> Iterator[None]:
    """Beat this rank's counter in the store while the block runs (rendering)."""
    store = _store()
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(BEAT_SECONDS):
            try:
                store.add(f"beat/{rank()}", 1)
            except RuntimeError:
                return  # the store is gone: finish_together will say so
    store.add(f"beat/{rank()}", 1)
    thread = threading.Thread(target=beat, name="sweeper-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def finish_together(failed: bool) -> None:
    """Say this rank is done, then wait for every other rank to say so.

    Raises RankLost when a rank stops beating for LOST_AFTER seconds (killed,
    machine gone) or says it failed; the store itself gone means rank 0's
    machine is.
    """
    store = _store()
    me = rank()
    try:
        store.set(f"done/{me}", "failed" if failed else "ok")
        seen: dict[int, tuple[int, float]] = {}
        pending = [r for r in range(world_size()) if r != me]
        while pending:
            now = time.monotonic()
            for other in list(pending):
                if store.check([f"done/{other}"]):
                    pending.remove(other)
                    continue
                beats = store.add(f"beat/{other}", 0)
                if seen.get(other, (None,))[0] != beats:
                    seen[other] = (beats, now)
                elif now - seen[other][1] > LOST_AFTER_SECONDS:
                    raise RankLost(
                        f"rank {other} was lost: no sign of life for {LOST_AFTER_SECONDS:.0f} s (killed, or its machine is gone); "
                        "what it rendered is kept and the same command finishes the sweep"
                    )
            if pending:
                time.sleep(1.0)
        failures = [r for r in range(world_size()) if store.get(f"done/{r}") == b"failed"]
    except RankLost:
        raise
    except RuntimeError as error:
        raise RankLost(
            f"rank {me}: lost contact with the launcher's store on rank 0's machine ({' '.join(str(error).split())[:160]}); "
            "the same command finishes the sweep"
        ) from None
    others = [r for r in failures if r != me]
    if others:
        raise RankLost(f"rank {others[0]} failed (see its error above); what was rendered is kept and the same command finishes the sweep")
