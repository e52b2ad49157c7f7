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
    from sweeper import launch as sweeper_launch
    from sweeper import run
    from sweeper.hydra_jobs import JobComposer

    composer = JobComposer(launcher.hydra_context.config_loader, launcher.config)
    jobs = composer.jobs(job_overrides, initial_job_idx)
    processes = sweeper_launch.num_processes(launcher.num_processes)
    prepared = run.prepare(jobs, sweep_dir, processes, launcher.processes_per_gpu)
    summary = sweeper_launch.render(prepared, sweep_dir, processes)
    failed = {image_id for image_id, _ in summary.failed}
    returns = []
    for job in jobs:
        job_ids = [spec.image_id for spec in prepared.specs if spec.job_num == job.num]
        returns.append(
            JobReturn(
                overrides=list(job.overrides),
                cfg=OmegaConf.create(job.config),
                hydra_cfg=composer.hydra_config(job.overrides),
                working_dir=str(sweep_dir),
                task_name=launcher.config.hydra.job.name,
                status=JobStatus.COMPLETED,
                _return_value={"images": len(job_ids), "failed": len(failed.intersection(job_ids))},
            )
        )
    return returns


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
