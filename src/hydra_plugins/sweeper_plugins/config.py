"""Config schemas of sweeper's Hydra plugins (light: read at plugin discovery)."""

from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


@dataclass
class PlanningSweeperConf:
    _target_: str = "hydra_plugins.sweeper_plugins.planning_sweeper.PlanningSweeper"
    # Jobs handed to the launcher at once (null: all); as in Hydra's basic sweeper.
    max_batch_size: Optional[int] = None
    # Sweep axes kept in config instead of on the command line: {key: "a,b,c"}.
    params: Optional[Dict[str, str]] = None
    # Keys that vary together instead of crossing: [[scheduler, steps]] pairs the
    # n-th scheduler with the n-th steps value; each group's sweeps must be equally long.
    zip: Optional[List[List[str]]] = None


@dataclass
class AccelerateLauncherConf:
    _target_: str = "hydra_plugins.sweeper_plugins.accelerate_launcher.AccelerateLauncher"
    # Workers to spawn on this machine: `auto` = one per visible GPU (1 without one).
    # Ignored under `accelerate launch` / torchrun, whose ranks do the work.
    num_processes: Any = "auto"
    # Processes that may share one GPU (more processes than GPUs is refused otherwise).
    processes_per_gpu: int = 1


ConfigStore.instance().store(group="hydra/sweeper", name="sweeper", node=PlanningSweeperConf, provider="sweeper")
ConfigStore.instance().store(group="hydra/launcher", name="accelerate", node=AccelerateLauncherConf, provider="sweeper")
