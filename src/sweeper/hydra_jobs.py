"""Hydra job configs -> sweeper Jobs (the plan's input)."""

from __future__ import annotations

from typing import Sequence

from omegaconf import DictConfig, OmegaConf

from sweeper.plan import Job


def job_from_config(cfg: DictConfig, num: int, overrides: Sequence[str]) -> Job:
    """A Job from a composed config; the `hydra` node, if present, is left out."""
    task_keys = [key for key in cfg if key != "hydra"]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, task_keys), resolve=True)
    return Job(num=num, config=container, overrides=tuple(overrides))


def compose_jobs(config_loader, master_config: DictConfig, job_overrides: Sequence[Sequence[str]], initial_job_idx: int = 0) -> list[tuple[Job, DictConfig]]:
    """Compose each job's config as Hydra's launchers do, paired with its Job."""
    from omegaconf import open_dict

    composed = []
    for offset, overrides in enumerate(job_overrides):
        num = initial_job_idx + offset
        sweep_config = config_loader.load_sweep_config(master_config, list(overrides))
        with open_dict(sweep_config):
            sweep_config.hydra.job.id = num
            sweep_config.hydra.job.num = num
        composed.append((job_from_config(sweep_config, num, overrides), sweep_config))
    return composed
