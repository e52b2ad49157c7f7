"""Hydra launcher `slurm`: a SLURM array of long-lived workers (submitit), sweeper/launching/slurm.py does the work.

The sweep is planned and checked once, here; the workers render their shares
of it, each loading the model once. submitit is imported only when it launches.
"""

from __future__ import annotations

from typing import Any

from ._workers import WorkersLauncher


class SlurmLauncher(WorkersLauncher):
    def check(self) -> None:
        """Refuse bad settings (or no submitit) in one line, before anything is written or submitted."""
        from sweeper.launching import slurm

        slurm.check(self.settings)

    def prepare_options(self) -> dict:
        """How run.prepare plans for the workers: on a cluster they run on its nodes, not here,
        so `device: auto` means what the settings ask for and this machine's devices are not checked."""
        from sweeper.rendering.devices import auto_device

        if self.settings.get("cluster") == "local":
            return {"auto_device": auto_device(), "devices_here": True}
        return {"auto_device": "cuda" if self.settings.get("gpus_per_worker") else "cpu", "devices_here": False}

    def check_plan(self, prepared: Any) -> None:
        """Refuse a plan other than the one an array still alive for the sweep dir renders, before anything is written."""
        from pathlib import Path

        from sweeper.launching import slurm

        slurm.check_plan(prepared, self.settings, Path(str(self.config.hydra.sweep.dir)))

    def render_elsewhere(self, prepared: Any, sweep_dir: Any) -> list[tuple[str, str]]:
        """Submit the array and wait for it (unless wait=false); (image_id, error) of the images lost."""
        from sweeper.launching import slurm

        return slurm.render(prepared, sweep_dir, self.settings)
