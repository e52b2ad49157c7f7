"""Hydra job configs -> sweeper Jobs (the plan's input).

Hydra composes every job of a multirun from scratch (~0.1-0.25 s each), which
would be most of an hour of bookkeeping for a 10,000-seed sweep. JobComposer
composes once per distinct set of structural overrides (config-group choices,
`hydra.*`, packages) and applies each job's value overrides to a copy:
plain `key=number` changes of an existing key straight on the container,
anything else with Hydra's own override code. Both give what Hydra would.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from sweeper.planning.plan import Job

# `key=7`, `key=-3`, `key=7.5`: numbers exactly as Hydra's grammar reads them.
_NUMBER_OVERRIDE = re.compile(r"^(?P<key>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(?P<value>[+-]?(?:0|[1-9][0-9]*)(?P<fraction>\.[0-9]+)?)$")


def job_from_config(cfg: DictConfig, num: int, overrides: Sequence[str]) -> Job:
    """A Job from a composed config; the `hydra` node, if present, is left out."""
    task_keys = [key for key in cfg if key != "hydra"]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, task_keys), resolve=True)
    return Job(num=num, config=container, overrides=tuple(overrides))


@dataclass
class _Base:
    container: dict[str, Any]  # the task config, unresolved
    interpolated: bool  # whether it holds ${...}: then every job goes through OmegaConf
    hydra: DictConfig  # the `hydra` node of these jobs


class JobComposer:
    """Jobs of a sweep, with the configs `load_sweep_config` would give, fast."""

    def __init__(self, config_loader, master_config: DictConfig) -> None:
        from hydra.core.override_parser.overrides_parser import OverridesParser

        self._loader = config_loader
        self._master = master_config
        self._parser = OverridesParser.create(config_loader=config_loader)
        self._parsed: dict[str, Any] = {}
        self._is_group: dict[str, bool] = {}
        self._bases: dict[tuple[str, ...], _Base] = {}

    def jobs(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int = 0) -> list[Job]:
        return [self.job(overrides, initial_job_idx + offset) for offset, overrides in enumerate(job_overrides)]

    def job(self, overrides: Sequence[str], num: int) -> Job:
        return Job(num=num, config=self.task_container(overrides), overrides=tuple(overrides))

    def task_container(self, overrides: Sequence[str]) -> dict[str, Any]:
        """The job's task config (no `hydra` node), resolved, as plain containers."""
        structural, changes = self._split(overrides)
        base = self._base(structural)
        if not base.interpolated:
            container = dict(base.container)  # copied on write below: jobs share what they do not change
            if all(_set_plain(container, line, o) for line, o in changes):
                return container
        from hydra._internal.config_loader_impl import ConfigLoaderImpl

        cfg = OmegaConf.create(base.container)
        OmegaConf.set_struct(cfg, True)
        ConfigLoaderImpl._apply_overrides_to_config([o or self._parser.parse_override(line) for line, o in changes], cfg)
        return OmegaConf.to_container(cfg, resolve=True)

    def hydra_config(self, overrides: Sequence[str]) -> DictConfig:
        """The `hydra` node shared by the jobs with these structural overrides."""
        return self._base(self._split(overrides)[0]).hydra

    def _split(self, overrides: Sequence[str]) -> tuple[tuple[str, ...], list[tuple[str, Any]]]:
        """(structural overrides, [(line, parsed or None)] of the value changes)."""
        parsed = [(line, self._parse(line)) for line in overrides]
        structural = tuple(line for line, o in parsed if o is not None and self._is_structural(o))
        return structural, [(line, o) for line, o in parsed if o is None or not self._is_structural(o)]

    def _parse(self, line: str):
        """Hydra's parse of an override (cached); None for a plain `key=number`, read without the parser."""
        match = _NUMBER_OVERRIDE.match(line)
        if match and not match["key"].startswith("hydra") and not self._group_exists(match["key"]):
            return None
        if line not in self._parsed:
            self._parsed[line] = self._parser.parse_override(line)
        return self._parsed[line]

    def _base(self, structural: tuple[str, ...]) -> _Base:
        if structural not in self._bases:
            full = self._loader.load_sweep_config(self._master, list(structural))
            task = OmegaConf.masked_copy(full, [key for key in full if key != "hydra"])
            container = OmegaConf.to_container(task, resolve=False)
            self._bases[structural] = _Base(container, "${" in repr(container), OmegaConf.create({"hydra": full.hydra}))
        return self._bases[structural]

    def _is_structural(self, override) -> bool:
        """Overrides that change composition rather than a value: group choices, hydra.*, packages."""
        key = override.key_or_group
        if key == "hydra" or key.startswith(("hydra.", "hydra/")) or override.package is not None:
            return True
        return self._group_exists(key)

    def _group_exists(self, key: str) -> bool:
        if key not in self._is_group:
            self._is_group[key] = self._loader.repository.group_exists(key)
        return self._is_group[key]


def _set_plain(container: dict[str, Any], line: str, override) -> bool:
    """Apply `key=value` to an existing scalar as Hydra would; False if it needs Hydra's code.

    `container` is a shallow copy of a base shared by every job: the dicts on
    the way to the key are copied before they change, nothing else is.
    """
    if override is None:
        match = _NUMBER_OVERRIDE.match(line)
        key, value = match["key"], float(match["value"]) if match["fraction"] else int(match["value"])
    else:
        from hydra.core.override_parser.types import OverrideType

        if override.type != OverrideType.CHANGE or override.is_sweep_override():
            return False
        key, value = override.key_or_group, override.value()
        if not isinstance(value, (str, int, float, bool, type(None))) or "${" in str(value):
            return False
    *parents, leaf = key.split(".")
    node: Any = container
    for part in parents:
        child = node.get(part)
        if not isinstance(child, dict):
            return False
        node[part] = node = dict(child)  # a copy, so the base and the other jobs keep theirs
    if leaf not in node or isinstance(node[leaf], (dict, list)):
        return False
    node[leaf] = value
    return True
