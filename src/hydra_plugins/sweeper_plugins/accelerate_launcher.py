"""Hydra launcher `accelerate`: renders all jobs of a sweep together.

For sweeper's own task it plans every job at once, batches images across
jobs (one model load, one progress bar) and shares the batches among the
ranks of `accelerate launch` / torchrun, or among `num_processes` workers it
spawns itself. Any other task function runs job by job, as with Hydra's
basic launcher. Heavy imports live in `_core.py`, so
plugin discovery stays fast.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class AccelerateLauncher(Launcher):
    def __init__(self, num_processes: Any = "auto", processes_per_gpu: int = 1) -> None:
        self.num_processes = num_processes
        self.processes_per_gpu = processes_per_gpu
        self.planned = None  # (job numbers and overrides, jobs, prepared), set by our sweeper that planned them
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)
