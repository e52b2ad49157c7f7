"""A sweeper with Hydra's basic `-m` syntax that checks every job first.

Hydra's BasicSweeper creates the sweep dir before it composes the jobs, so a
bad value leaves files behind, and it composes every job from scratch
(~0.25 s each). This one composes fast (hydra_jobs.JobComposer), plans and
checks every job of a sweeper task (the image count, the estimate,
`dry_run`) and only then makes the sweep dir, saves multirun.yaml and
launches. `zip` lets keys vary together instead of crossing (zipped_jobs).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.core.utils import JobReturn
from hydra.errors import HydraException
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf

from sweeper.launching import distributed
from sweeper.storing.files import write_atomic
from sweeper.errors import PlanError


def sweep_axes(overrides: List[Override]) -> Dict[str, List[str]]:
    """Each key's `key=value` overrides, keys in Hydra's order.

    As BasicSweeper.split_arguments lists them before its cross product: a later override of a key wins.
    """
    axes: Dict[str, List[str]] = {}
    for override in overrides:
        key = override.get_key_element()
        if not override.is_sweep_override():
            axes[key] = [f"{key}={override.get_value_element_as_str()}"]
        elif override.is_discrete_sweep():
            axes[key] = [f"{key}={value}" for value in override.sweep_string_iterator()]
        else:
            raise HydraException(f"{PlanningSweeper.__name__} does not support sweep type : {override.value_type.name}")
    return axes


def zipped_jobs(axes: Dict[str, List[str]], groups: Sequence[Sequence[str]]) -> List[List[str]]:
    """The jobs' overrides: the cross product of `axes`, except that the keys of each
    group advance together (the n-th value of one with the n-th of the others).

    Jobs list their overrides in the order of `axes`, a group crossing the rest at the
    place of its first key. Raises PlanError (one line) for a group naming a key that
    is not in `axes` or twice, or whose sweeps differ in length.
    """
    keys = {key.lstrip("+~"): key for key in axes}  # a zip names `steps` for `+steps=...` too
    position = {key: n for n, key in enumerate(axes)}
    group_of: Dict[str, List[str]] = {}
    for group in groups:
        members: List[str] = []
        for name in group:
            if name not in keys:
                raise PlanError(
                    f"invalid hydra.sweeper.zip: {name!r} is neither an override on the command line "
                    f"nor in hydra.sweeper.params; allowed: {', '.join(keys) or 'none'}"
                )
            if keys[name] in group_of or keys[name] in members:
                raise PlanError(f"invalid hydra.sweeper.zip: {name!r} is named twice; a key is in one zip group at most")
            members.append(keys[name])
        lengths = {len(axes[key]) for key in members}
        if len(lengths) > 1:
            counts = ", ".join(f"{name}: {_values(len(axes[keys[name]]))}" for name in group)
            hint = "; a single value is not repeated to fit: sweep it as often or leave it out of the zip"
            raise PlanError(
                f"invalid hydra.sweeper.zip: the keys of a zip group need sweeps of the same length ({counts})"
                + (hint if 1 in lengths else "")
            )
        members.sort(key=position.__getitem__)
        group_of.update(dict.fromkeys(members, members))
    factors: List[List[Tuple[Tuple[int, str], ...]]] = []
    for key in axes:
        members = group_of.get(key, [key])
        if key == members[0]:  # a group crosses the other keys where its first key stands
            factors.append(list(zip(*([(position[member], value) for value in axes[member]] for member in members))))
    return [[value for _, value in sorted(itertools.chain(*combo))] for combo in itertools.product(*factors)]


def _values(count: int) -> str:
    return f"{count} value" if count == 1 else f"{count} values"


class PlanningSweeper(BasicSweeper):
    def __init__(
        self,
        max_batch_size: Optional[int],
        params: Optional[Dict[str, str]] = None,
        zip: Optional[List[List[str]]] = None,
    ) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.zip = [list(group) for group in zip or []]

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        super().setup(hydra_context=hydra_context, task_function=task_function, config=config)
        self.task_function = task_function

    def sweep(self, arguments: List[str]) -> Any:
        try:
            return self._sweep(arguments)
        finally:
            if hasattr(self.launcher, "release"):
                self.launcher.release()  # what planning joined (a Ray cluster), left however the sweep ends

    def _sweep(self, arguments: List[str]) -> Any:
        from sweeper.app import render_job

        params_conf = self._parse_config()
        params_conf.extend(arguments)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        jobs = zipped_jobs(sweep_axes(parser.parse_overrides(params_conf)), self.zip)
        self.overrides = (
            [jobs] if self.max_batch_size is None else list(self.split_overrides_to_chunks(jobs, self.max_batch_size))
        )
        every_job = [job for batch in self.overrides for job in batch]
        sweep_dir = Path(str(self.config.hydra.sweep.dir))

        from sweeper.storing import commands

        prepared = None
        command = [str(item) for item in params_conf]
        first_job = commands.first_job(sweep_dir, command)  # jobs numbered after those of other commands into the dir
        if self.task_function is render_job:
            prepared = self._plan(every_job, sweep_dir, first_job)
            if prepared.dry_run:
                return []
        else:
            self.validate_batch_is_legal(every_job)

        sweep_dir.mkdir(parents=True, exist_ok=True)
        if distributed.rank() == 0:
            write_atomic(sweep_dir / "multirun.yaml", OmegaConf.to_yaml(self.config).encode("utf-8"))
            from sweeper.launching import run

            if prepared is not None and (prepared.todo or not (sweep_dir / run.PLAN_FILE).exists()):
                run.write_plan(prepared, sweep_dir)  # what the sweep asks for, whichever launcher renders it
            if prepared is not None:
                commands.record(sweep_dir, command, first_job, prepared.jobs, len(prepared.specs), len(prepared.todo))
        returns: List[Sequence[JobReturn]] = []
        initial_job_idx = 0
        for batch in self.overrides:
            results = self.launcher.launch(batch, initial_job_idx=initial_job_idx)
            initial_job_idx += len(batch)
            for result in results:
                _ = result.return_value  # re-raises what a job raised
            returns.append(results)
        return returns

    def _plan(self, every_job: list, sweep_dir: Path, first_job: int):
        """Plan and check all jobs (raises PlanError); says what will happen."""
        from sweeper.launching import run
        from sweeper.planning.hydra_jobs import JobComposer

        from hydra_plugins.sweeper_plugins.accelerate_launcher import AccelerateLauncher
        from sweeper.launching import launch

        launcher = self.launcher
        if hasattr(launcher, "check"):
            launcher.check()  # its settings, before anything is written or submitted
        jobs = JobComposer(self.hydra_context.config_loader, self.config).jobs(every_job, first_job)
        if isinstance(launcher, AccelerateLauncher):
            prepared = run.prepare(jobs, sweep_dir, launch.num_processes(launcher.num_processes), launcher.processes_per_gpu)
        elif hasattr(launcher, "prepare_options"):  # SLURM, Ray: workers maybe elsewhere
            prepared = run.prepare(jobs, sweep_dir, **launcher.prepare_options())
        else:
            prepared = run.prepare(jobs, sweep_dir)
        if hasattr(launcher, "check_plan"):
            launcher.check_plan(prepared)  # what its workers cannot render, before anything is written
        ours = hasattr(launcher, "planned")
        if distributed.launched():
            distributed.agree_on_plan(prepared.specs)
        if distributed.rank() == 0:
            run.announce(prepared, sweep_dir)
        if ours and len(self.overrides) == 1:  # one launch of every job: it renders this plan, not a second one
            self.launcher.planned = ((0, every_job), jobs, prepared)  # the very override lists it launches with (from job 0)
        return prepared
