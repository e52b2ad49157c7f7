"""Hydra launcher `ray_actors`: a pool of Ray actors that keep the pipelines loaded, sweeper/launching/ray_actors.py does the work.

The sweep is planned and checked once, here (the driver); the actors render
batches and send back PNG bytes and rows, which are written here. ray is
imported only when it launches (a name apart from hydra-ray-launcher's `ray`).
"""

from __future__ import annotations

from typing import Any

from ._workers import WorkersLauncher


class RayActorsLauncher(WorkersLauncher):
    joined = False  # whether prepare_options joined the cluster (then release leaves it)

    def check(self) -> None:
        """Refuse bad settings (or no ray) in one line, before Ray starts."""
        from sweeper.launching import ray_actors

        ray_actors.check(self.settings)

    def prepare_options(self) -> dict:
        """How run.prepare plans for the actors: a local Ray has this machine's devices; on a
        cluster, `device: auto` means cuda where the cluster has GPUs (asked of Ray, joined here)."""
        from sweeper.launching import ray_actors
        from sweeper.rendering.devices import auto_device

        if self.settings.get("address") is None:
            return {"auto_device": auto_device(), "devices_here": True}
        self.joined = self.joined or ray_actors.connect(self.settings)  # asked when planning, and again to launch
        return {"auto_device": ray_actors.cluster_device(self.settings), "devices_here": False}

    def check_plan(self, prepared: Any) -> None:
        """Refuse a pool that cannot render the plan, before anything is written or Ray starts."""
        from sweeper.launching import ray_actors

        ray_actors.check_plan(prepared, self.settings)

    def render_elsewhere(self, prepared: Any, sweep_dir: Any) -> list[tuple[str, str]]:
        """Render the plan with the actors; (image_id, error) of the images that failed."""
        from sweeper.launching import ray_actors

        return ray_actors.render(prepared, sweep_dir, self.settings)

    def release(self) -> None:
        if self.joined:
            from sweeper.launching import ray_actors

            ray_actors.leave()
            self.joined = False
