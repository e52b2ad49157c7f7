"""What the `slurm` and `ray_actors` launchers share: the sweep planned here, rendered by workers they start.

A subclass says how to check its settings (`check`), what `device: auto`
means where its workers run (`prepare_options`, which may join them, undone
by `release`) and how to render a plan (`render_elsewhere`); _core.py does
the rest. Any other task function runs job by job here, as with Hydra's
basic launcher.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class WorkersLauncher(Launcher):
    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.config: Optional[DictConfig] = None
        self.task_function: Optional[TaskFunction] = None
        self.hydra_context: Optional[HydraContext] = None
        self.planned = None  # (job numbers and overrides, jobs, prepared), set by our sweeper that planned them

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config = config
        self.hydra_context = hydra_context
        self.task_function = task_function

    def check(self) -> None:
        """Refuse bad settings in one line, before anything is written or started."""
        raise NotImplementedError

    def prepare_options(self) -> dict:
        """run.prepare's options for where the workers run."""
        raise NotImplementedError

    def render_elsewhere(self, prepared: Any, sweep_dir: Any) -> list[tuple[str, str]]:
        """Render the plan's to-do list; (image_id, error) of the images that failed or were lost."""
        raise NotImplementedError

    def release(self) -> None:
        """Let go of what prepare_options took (called once the plan is rendered, or failed)."""

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)
