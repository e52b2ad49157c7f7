"""The work of the `accelerate` launcher (imported only when it launches)."""

from __future__ import annotations

import logging
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
    if launcher.task_function is render_job:
        return _render_all(launcher, job_overrides, initial_job_idx, sweep_dir)
    return _run_each(launcher, job_overrides, initial_job_idx)


def _render_all(launcher, job_overrides, initial_job_idx: int, sweep_dir: Path) -> list[JobReturn]:
    """All jobs planned together; images batched across jobs and shared among processes."""
    from collections import Counter

    from sweeper import launch as sweeper_launch
    from sweeper import run
    from sweeper.hydra_jobs import JobComposer

    composer = JobComposer(launcher.hydra_context.config_loader, launcher.config)
    processes = sweeper_launch.num_processes(launcher.num_processes)
    planned = getattr(launcher, "planned", None)  # what our sweeper planned and checked for exactly these jobs
    if planned is not None and planned[0] == (initial_job_idx, [list(o) for o in job_overrides]):
        jobs, prepared = planned[1], planned[2]
    else:
        jobs = composer.jobs(job_overrides, initial_job_idx)
        prepared = run.prepare(jobs, sweep_dir, processes, launcher.processes_per_gpu)
    summary = sweeper_launch.render(prepared, sweep_dir, processes)
    failed = {image_id for image_id, _ in summary.failed}
    images = Counter(spec.job_num for spec in prepared.specs)
    failures = Counter(spec.job_num for spec in prepared.specs if spec.image_id in failed)
    return [
        _JobReturn(
            job, composer,
            overrides=list(job.overrides),
            working_dir=str(sweep_dir),
            task_name=launcher.config.hydra.job.name,
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
