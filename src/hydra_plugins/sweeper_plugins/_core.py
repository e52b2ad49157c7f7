"""The work of the `accelerate`, `slurm` and `ray_actors` launchers (imported only when they launch)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Sequence

from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides, run_job, setup_globals
from omegaconf import OmegaConf, open_dict

log = logging.getLogger(__name__)


def launch(launcher, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> list[JobReturn]:
    from sweeper.app import render_job

    setup_globals()
    configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    sweep_dir = Path(str(launcher.config.hydra.sweep.dir))
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if launcher.task_function is not render_job:
        return _run_each(launcher, job_overrides, initial_job_idx)
    if hasattr(launcher, "render_elsewhere"):  # SLURM arrays, Ray actors
        return _render_elsewhere(launcher, job_overrides, initial_job_idx, sweep_dir)
    return _render_all(launcher, job_overrides, initial_job_idx, sweep_dir)


def _render_all(launcher, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
    """All jobs planned together; images batched across jobs and shared among processes."""
    from sweeper.launching import launch as sweeper_launch
    from sweeper.planning.hydra_jobs import JobComposer
    from sweeper.rendering.runtime import this_process

    composer = JobComposer(launcher.hydra_context.config_loader, launcher.config)
    processes = sweeper_launch.num_processes(launcher.num_processes)
    jobs, prepared = _planned(launcher, composer, job_overrides, initial_job_idx, sweep_dir, processes=processes, processes_per_gpu=launcher.processes_per_gpu)
    summary = sweeper_launch.render(prepared, sweep_dir, processes, runtime=this_process())
    return _returns(launcher, composer, jobs, prepared, sweep_dir, [image_id for image_id, _ in summary.failed])


def _render_elsewhere(launcher, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
    """All jobs planned here, rendered by workers the launcher starts (sweeper/launching/slurm.py, sweeper/launching/ray_actors.py)."""
    from sweeper.planning.hydra_jobs import JobComposer

    composer = JobComposer(launcher.hydra_context.config_loader, launcher.config)
    try:
        jobs, prepared = _planned(launcher, composer, job_overrides, initial_job_idx, sweep_dir, **launcher.prepare_options())
        failed = launcher.render_elsewhere(prepared, sweep_dir) if prepared.todo else []
    finally:
        launcher.release()
    if prepared.scoring is not None:
        from sweeper.scoring.sweep import left_unscored

        line = left_unscored(prepared.scoring, prepared.specs, sweep_dir)
        if line:
            print(line, file=sys.stderr, flush=True)
    return _returns(launcher, composer, jobs, prepared, sweep_dir, [image_id for image_id, _ in failed])


def _planned(launcher, composer, job_overrides, initial_job_idx: int, sweep_dir: Path, **prepare) -> tuple[list, object]:
    """The jobs and their plan: what our sweeper planned and checked for exactly these jobs, else planned now."""
    from sweeper.launching import run

    planned = launcher.planned
    # Lists compare their items by identity first: the sweeper's own override lists take no time at 100,000 jobs.
    if planned is not None and planned[0] == (initial_job_idx, list(job_overrides)):
        return planned[1], planned[2]
    from sweeper.storing import commands

    jobs = composer.jobs(job_overrides, initial_job_idx + commands.running_first_job(sweep_dir))
    return jobs, run.prepare(jobs, sweep_dir, **prepare)


def _returns(launcher, composer, jobs, prepared, sweep_dir: Path, failed_ids) -> list[JobReturn]:
    from collections import Counter

    failed = set(failed_ids)
    images = Counter(spec.job_num for spec in prepared.specs)
    failures = Counter(spec.job_num for spec in prepared.specs if spec.image_id in failed)
    task_name = launcher.config.hydra.job.name  # once: an OmegaConf lookup per job is seconds at 100,000 jobs
    return [
        _JobReturn(
            job, composer,
            overrides=list(job.overrides),
            working_dir=str(sweep_dir),
            task_name=task_name,
            status=JobStatus.COMPLETED,
            _return_value={"images": images[job.num], "failed": failures[job.num]},
        )
        for job in jobs
    ]


class _JobReturn(JobReturn):
    """A JobReturn whose configs are made when someone asks for them: Hydra's multirun
    reads neither, and making two OmegaConf configs per job costs minutes at 100,000 jobs."""

    def __init__(self, job, composer, **fields) -> None:
        self._job, self._composer = job, composer
        self._cfg = self._hydra_cfg = None
        super().__init__(**fields)

    @property
    def cfg(self):
        if self._cfg is None:
            self._cfg = OmegaConf.create(self._job.config)
        return self._cfg

    @cfg.setter
    def cfg(self, value) -> None:
        self._cfg = value

    @property
    def hydra_cfg(self):
        if self._hydra_cfg is None:
            self._hydra_cfg = self._composer.hydra_config(self._job.overrides)
        return self._hydra_cfg

    @hydra_cfg.setter
    def hydra_cfg(self, value) -> None:
        self._hydra_cfg = value


def _run_each(launcher, job_overrides, initial_job_idx: int) -> list[JobReturn]:
    """Any other task: one job after another, as Hydra's basic launcher does."""
    returns = []
    for offset, overrides in enumerate(job_overrides):
        num = initial_job_idx + offset
        log.info(f"\t#{num} : {' '.join(filter_overrides(overrides))}")
        sweep_config = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        returns.append(
            run_job(
                hydra_context=launcher.hydra_context,
                task_function=launcher.task_function,
                config=sweep_config,
                job_dir_key="hydra.sweep.dir",
                job_subdir_key="hydra.sweep.subdir",
            )
        )
        configure_log(launcher.config.hydra.hydra_logging, launcher.config.hydra.verbose)
    return returns
