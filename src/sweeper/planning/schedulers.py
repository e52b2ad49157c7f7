"""Schedulers: a job's scheduler config checked, `auto` made the model family's own.

Flow-matching models (Flux, SD 3.5, ...) take flow-matching schedulers and the
noise-prediction ones (SDXL, SD 1.x) the others: a scheduler of the wrong kind
is refused before any model loads. Classes and their kwargs are checked against
diffusers when a sweep starts (rendering/pipelines.scheduler_class).
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Mapping

from sweeper.configs import config_dir
from sweeper.errors import invalid
from sweeper.rendering import families

# Second-order schedulers: the model is called twice in most steps (diffusers' `order` 2).
TWO_CALLS_PER_STEP = frozenset({"HeunDiscreteScheduler", "DPMSolverSDEScheduler", "KDPM2DiscreteScheduler", "KDPM2AncestralDiscreteScheduler"})


def checked(scheduler: Any, family: families.Family) -> dict[str, Any]:
    """The scheduler config; without a class (scheduler=auto) the family's own, with the kwargs,
    name and label given. One of another kind (flow matching or not) is refused."""
    if isinstance(scheduler, Mapping) and scheduler.get("class_name") is None:
        own = config(family.default_scheduler)
        given = {key: scheduler.get(key) for key in ("name", "label", "kwargs") if scheduler.get(key) not in (None, "auto", {})}
        scheduler = {**own, **given}
    found = _scheduler(scheduler)
    if kind(found) != family.schedulers:
        raise invalid("scheduler", found["name"], f"{family.title} models take {family.schedulers} schedulers: auto, {_fitting(family)}")
    if family.scheduler_classes is not None and found["class_name"] not in family.scheduler_classes:
        raise invalid("scheduler", found["name"], f"{family.title}'s pipelines run {' and '.join(family.scheduler_classes)} only (tried here): auto, {_fitting(family)}")
    return found


def _fitting(family: families.Family) -> str:
    """The configs of conf/scheduler the family runs, for a refusal to name."""
    fits = [name for name in names() if kind(_scheduler(config(name))) == family.schedulers]
    return ", ".join(name for name in fits if family.scheduler_classes is None or config(name)["class_name"] in family.scheduler_classes)


def kind(scheduler: Mapping[str, Any]) -> str:
    """Flow matching (FlowMatch* classes, or a solver told to use flow sigmas) or discrete noise prediction."""
    kwargs = scheduler["kwargs"]
    flow = scheduler["class_name"].startswith("FlowMatch") or kwargs.get("use_flow_sigmas") or kwargs.get("prediction_type") == "flow_prediction"
    return families.FLOW if flow else families.DISCRETE


def names() -> list[str]:
    """The configs of conf/scheduler, but auto."""
    return sorted(path.stem for path in (Path(config_dir()) / "scheduler").glob("*.yaml") if path.stem != "auto")


def config(name: str) -> dict[str, Any]:
    """A config of conf/scheduler (sweeper's own files), read once per process: planning asks for the
    family's own at every setting of a sweep."""
    return copy.deepcopy(_config(name))


@functools.lru_cache(maxsize=None)
def _config(name: str) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(Path(config_dir()) / "scheduler" / f"{name}.yaml"))


def _scheduler(scheduler: Any) -> dict[str, Any]:
    if not isinstance(scheduler, Mapping) or not isinstance(scheduler.get("class_name"), str):
        value = scheduler.get("class_name") if isinstance(scheduler, Mapping) else scheduler
        raise invalid("scheduler.class_name", value, "each scheduler config needs the name of a diffusers scheduler class")
    kwargs = scheduler.get("kwargs") or {}
    if not isinstance(kwargs, Mapping):
        raise invalid("scheduler.kwargs", kwargs, "must be a mapping of scheduler config values")
    name = scheduler.get("name") or scheduler["class_name"]
    return {"name": name, "class_name": scheduler["class_name"], "kwargs": dict(kwargs), "label": scheduler.get("label") or name}
