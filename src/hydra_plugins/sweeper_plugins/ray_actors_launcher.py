"""Hydra launcher `ray_actors`: a pool of Ray actors that keep the pipelines loaded, sweeper/ray_actors.py does the work.

The sweep is planned and checked once, here (the driver); the actors render
batches and send back PNG bytes and rows, which are written here. Any other
task function runs job by job here, as with Hydra's basic launcher. ray is
imported only when it launches (a name apart from hydra-ray-launcher's `ray`).
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from hydra.core.utils import JobReturn
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig


class RayActorsLauncher(Launcher):
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
        """Refuse bad settings (or no ray) in one line, before Ray starts."""
        from sweeper import ray_actors

        ray_actors.check(self.settings)

    def prepare_options(self) -> dict:
        """How run.prepare plans for the actors: a local Ray has this machine's devices; on a
        cluster, `device: auto` means cuda where the cluster has GPUs (asked of Ray, joined here)."""
        from sweeper import ray_actors
        from sweeper.devices import auto_device

        if self.settings.get("address") is None:
            return {"auto_device": auto_device(), "devices_here": True}
        ray_actors.connect(self.settings)
        return {"auto_device": ray_actors.cluster_device(self.settings), "devices_here": False}

    def render_elsewhere(self, prepared: Any, sweep_dir: Any) -> list[tuple[str, str]]:
        """Render the plan with the actors; (image_id, error) of the images that failed."""
        from sweeper import ray_actors

        return ray_actors.render(prepared, sweep_dir, self.settings)

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from . import _core

        return _core.launch(self, job_overrides, initial_job_idx)
