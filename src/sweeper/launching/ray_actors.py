"""Ray clusters: a pool of actors that keep the pipelines loaded and pull batches (hydra/launcher=ray_actors).

    python -m sweeper -m hydra/launcher=ray_actors seed='range(0,10000)'                        # a local Ray on this machine
    python -m sweeper -m hydra/launcher=ray_actors hydra.launcher.address=auto seed='range(0,10000)'   # the running cluster

The sweep is planned and checked once, in the driver (where the command runs).
Each actor loads the pipelines once; batches go out costliest first, the next
one to whichever actor finishes (ray_dispatch.py). Actors send back PNG bytes
and manifest rows (and, with score=, the scores of what they rendered), and the driver writes them into the sweep dir as every
launcher does (claims, part files): the nodes need no shared filesystem, and
a re-run renders only what is missing. An actor that dies is restarted by Ray
and its batch goes to the next free actor; a batch that has killed its actor
1 + max_retries times becomes error rows. The driver killed loses at most the
batches in flight.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sweeper.launching import stops
from sweeper.errors import PlanError

_local_dir: str | None = None  # the temp dir of the local Ray that connect started


def check(conf: Mapping[str, Any]) -> None:
    """Refuse bad launcher settings (or no ray) in one line, before Ray starts."""
    address = conf.get("address")
    if address is not None and not (address == "auto" or (isinstance(address, str) and address.startswith("ray://"))):
        raise PlanError(f"invalid hydra.launcher.address={address!r}: allowed: null (a local Ray), auto (the running cluster) or ray://host:port")
    workers = conf.get("workers")
    if workers != "auto" and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 1):
        raise PlanError(f"invalid hydra.launcher.workers={workers!r}: allowed: auto or an integer >= 1")
    for key, low in (("gpus_per_worker", 0), ("cpus_per_worker", 1)):
        value = conf.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or value < low):
            shown = f"{value:g}" if isinstance(value, (int, float)) else repr(value)
            raise PlanError(f"invalid hydra.launcher.{key}={shown}: must be null or a number >= {low}")
    retries = conf.get("max_retries")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise PlanError(f"invalid hydra.launcher.max_retries={retries!r}: must be an integer >= 0")
    if importlib.util.find_spec("ray") is None:
        raise PlanError("hydra/launcher=ray_actors needs ray: pip install ray")


def _running() -> bool:
    """Whether this process already joined a Ray (without importing ray)."""
    return "ray" in sys.modules and sys.modules["ray"].is_initialized()


def connect(conf: Mapping[str, Any]) -> bool:
    """Join the cluster (or start a local Ray), quietly; True when this call started or joined it
    (`leave` undoes it). A Ray already initialised in this process (a notebook, the tests) is used as it is.

    A local Ray is started as one (address="local") in a temp dir of this user's: `ray.init(address=None)`
    would join whatever cluster `ray_current_cluster` in Ray's temp dir names, and /tmp/ray is shared
    by every user of the machine."""
    global _local_dir
    import ray

    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no prompt, no notice
    address = conf.get("address")
    where: dict[str, Any] = {"address": address}
    if address is None:
        _local_dir = tempfile.mkdtemp(prefix="sweeper-ray-")  # mode 0700, ours alone
        where = {"address": "local", "_temp_dir": _local_dir}
    try:
        ray.init(
            **where, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False,
            configure_logging=True, namespace="sweeper",
        )
    except BaseException as error:
        leave()  # a local Ray's temp dir too
        if isinstance(error, ConnectionError):
            raise PlanError(f"cannot join Ray at hydra.launcher.address={address}: {' '.join(str(error).split())}") from None
        raise
    stops.reclaim()  # ray.init makes SIGTERM exit the driver at once; it stops after the batches in flight
    return True


def leave() -> None:
    """Undo `connect`: leave the cluster, or stop the local Ray and remove its temp dir."""
    global _local_dir
    import ray

    ray.shutdown()
    if _local_dir is not None:
        shutil.rmtree(_local_dir, ignore_errors=True)
        _local_dir = None


@dataclass(frozen=True)
class Resources:
    """What the actors can have: the cluster's CPUs and GPUs, and the CPUs of its largest machine."""

    cpus: float
    gpus: float
    machine_cpus: float


def resources() -> Resources:
    """The joined cluster's resources, as Ray counts them."""
    import ray

    total = ray.cluster_resources()
    machine = max((node["Resources"].get("CPU", 1) for node in ray.nodes() if node["Alive"]), default=1)
    return Resources(total.get("CPU", 0), total.get("GPU", 0), machine)


def local_resources() -> Resources:
    """What a local Ray started here will count (before starting it)."""
    from sweeper.rendering.devices import usable_gpus

    cpus = os.cpu_count() or 1
    return Resources(cpus, usable_gpus(), cpus)


def cluster_device(conf: Mapping[str, Any]) -> str:
    """What `device: auto` means on the joined cluster: cuda where it has GPUs (and workers may take them)."""
    return "cuda" if resources().gpus and conf.get("gpus_per_worker") != 0 else "cpu"


@dataclass(frozen=True)
class Pool:
    """How many actors, and what each one asks Ray for."""

    workers: int
    gpus: float
    cpus: float


def pool(conf: Mapping[str, Any], device: str, batches: int, have: Resources, must_fit: bool) -> Pool:
    """`workers: auto` is one actor per GPU (gpus_per_worker GPUs each), or without GPUs one per
    machine's worth of CPU threads; never more actors than batches. A number of workers without
    GPUs share a machine's CPUs, as the SLURM launcher's local workers do (so they fit on the
    largest machine, whatever the others). Raises PlanError for a pool that cannot render, or
    (`must_fit`: a local Ray) does not fit; on a cluster an autoscaler may add the nodes."""
    gpus = conf.get("gpus_per_worker")
    gpus = (1 if device == "cuda" else 0) if gpus is None else gpus
    if device == "cuda" and not gpus:
        raise PlanError("device=cuda needs GPUs: hydra.launcher.gpus_per_worker=0 gives the actors none")
    if device == "cuda" and not have.gpus and must_fit:
        raise PlanError("device=cuda, but Ray finds no GPU here; use device=cpu, or join a cluster with GPUs (hydra.launcher.address=auto)")
    cpus, workers = conf.get("cpus_per_worker"), conf["workers"]
    if workers == "auto":
        cpus = cpus or (1 if gpus else have.machine_cpus)
        workers = int(have.gpus // gpus) if gpus else int(have.cpus // cpus)
    workers = max(1, min(workers, batches))
    cpus = cpus or (1 if gpus else max(1, have.machine_cpus // workers))
    if must_fit:
        for name, each, total in (("GPU", gpus, have.gpus), ("CPU", cpus, have.cpus)):
            if workers * each > total:
                raise PlanError(
                    f"{workers} Ray actors x {each:g} {name} need {workers * each:g} {name}s; this machine has {total:g}: "
                    f"lower hydra.launcher.workers or hydra.launcher.{name.lower()}s_per_worker"
                )
    return Pool(workers, gpus, cpus)


def check_plan(prepared: Any, conf: Mapping[str, Any]) -> Pool | None:
    """Refuse (PlanError), before Ray starts or anything is written, a plan the actors cannot render;
    the pool of a local Ray that this command starts (None: a running Ray or a cluster says later)."""
    from sweeper.planning import schedule

    if any(spec.gpu is not None for spec in prepared.todo):
        raise PlanError("device=cuda:N pins one GPU, but Ray gives each actor GPUs of its own; use device=cuda")
    if not prepared.todo or conf.get("address") is not None or _running():
        return None
    batches = len(schedule.make_batches(prepared.todo))
    return pool(conf, prepared.todo[0].device, batches, local_resources(), must_fit=True)


class Renderer:
    """One actor: pipelines loaded once in its runtime, batches rendered and encoded as PNG bytes and rows."""

    def __init__(self, rank: int, world_size: int, threads: int | None, environment: dict[str, str], scoring: Any = None) -> None:
        import diffusers
        import torch

        from sweeper import __version__
        from sweeper.rendering.runtime import Runtime
        from sweeper.scoring.sweep import AfterEachCall

        os.environ.update(environment, SWEEPER_WORKER=str(rank))  # for the fault hook (tests)
        if threads:
            torch.set_num_threads(threads)
        self.runtime = Runtime()
        self.versions = {"sweeper": __version__, "diffusers": diffusers.__version__, "torch": torch.__version__}
        self.facts = dict(rank=rank, world_size=world_size, host=socket.gethostname(), **self.versions)
        self.scored = AfterEachCall(scoring, None)  # score=[...]: on this actor's device, its rows sent back

    def ready(self) -> bool:
        return True

    def render(self, specs: Sequence[Any]) -> tuple[list[Any], list[str], bool, list[dict[str, Any]]]:
        """The batch's calls encoded (calls.Encoded), the messages to show, whether a CUDA error
        left this process unable to render on (then the driver has Ray restart it), and the score rows."""
        import torch

        from sweeper.launching import run
        from sweeper.planning import schedule
        from sweeper.rendering.calls import encode, render_backing_off

        device = run.render_device(specs[0], gpu=0)  # Ray shows each actor only its own GPUs
        messages = _Messages()
        done = render_backing_off(schedule.Batch(tuple(specs)), device, messages, self.runtime)
        threads = torch.get_num_threads()
        encoded = [encode(call, self.versions, dict(self.facts, device=device), threads) for call in done]
        for call in done:
            if call.batch_error:
                messages.write(f"sweeper: a batch of {len(call.batch.specs)} failed: {call.batch_error}")
            self.scored.add(call, device, messages)
        return encoded, messages.lines, any(call.fatal for call in done), self.scored.take()


class _Messages:
    """Progress of an actor: its messages go back to the driver, which prints them beside its bar."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def update(self, n: int) -> None:
        pass

    def write(self, message: str) -> None:
        self.lines.append(message)


def render(prepared: Any, sweep_dir: Path, conf: Mapping[str, Any]) -> list[tuple[str, str]]:
    """Render `prepared.todo` with a pool of actors; the images written here. Returns (image_id, error)
    of the images that failed (their rows are in the manifest parts by then)."""
    from sweeper import faults
    from sweeper.planning import schedule
    from sweeper.launching.ray_dispatch import Dispatch

    sweep_dir = Path(sweep_dir)
    batches = schedule.make_batches(prepared.todo)
    if not batches:
        return []
    device = prepared.todo[0].device
    size = check_plan(prepared, conf)
    import ray

    started = connect(conf)
    actors: list[Any] = []
    try:
        size = size or pool(conf, device, len(batches), resources(), must_fit=conf.get("address") is None)
        remote = ray.remote(max_restarts=-1, max_task_retries=0)(Renderer)
        threads = int(size.cpus) if device == "cpu" else None
        actors = [
            remote.options(num_gpus=size.gpus, num_cpus=size.cpus, name=f"sweeper-{os.getpid()}-{time.time_ns()}-{rank}").remote(
                rank, size.workers, threads, faults.environment(), prepared.scoring
            )
            for rank in range(size.workers)
        ]
        return Dispatch(prepared, sweep_dir, actors, batches, int(conf["max_retries"])).run()
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            leave()
