"""Config schemas of sweeper's Hydra plugins (light: read at plugin discovery)."""

from dataclasses import dataclass, field
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


@dataclass
class SlurmLauncherConf:
    _target_: str = "hydra_plugins.sweeper_plugins.slurm_launcher.SlurmLauncher"
    # slurm: an array submitted with sbatch; local: submitit's local executor (no SLURM: try it, test it)
    cluster: str = "slurm"
    # Array tasks: each one long-lived process that loads the model once and renders its share.
    workers: int = 1
    # As submitit (and sbatch) name them.
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    timeout_min: int = 24 * 60
    gpus_per_worker: int = 1
    cpus_per_worker: Optional[int] = None
    mem_gb: Optional[int] = None
    # Shell lines run before each worker starts (module load ..., source venv/bin/activate).
    setup: Optional[List[str]] = None
    # Any other sbatch option: {"mail-user": "me@lab.org"}.
    additional_parameters: Dict[str, Any] = field(default_factory=dict)
    # Requeues of a worker that hit its time limit (preempted workers are requeued as often as SLURM does).
    max_num_timeout: int = 3
    # false: submit and return at once, printing the job id and the command that merges and reports later.
    wait: bool = True
    # submitit's pickles and logs; null: sweeper's cache in your home (never the sweep dir, which others may write to).
    submitit_folder: Optional[str] = None


@dataclass
class RayActorsLauncherConf:
    _target_: str = "hydra_plugins.sweeper_plugins.ray_actors_launcher.RayActorsLauncher"
    # null: a Ray of its own on this machine (in a private temp dir); auto: the running cluster; or ray://host:port
    address: Optional[str] = None
    # auto: one actor per GPU in the cluster (without GPUs, one per machine's worth of CPU threads), or an int
    workers: Any = "auto"
    # null: 1 where the sweep renders on cuda, else 0
    gpus_per_worker: Optional[float] = None
    # The actor's torch threads on the CPU. null: 1 with a GPU, else a machine's CPUs, shared among
    # the actors when workers is a number
    cpus_per_worker: Optional[float] = None
    # Times a batch is tried again after its actor died rendering it; then its images are error rows.
    max_retries: int = 3


ConfigStore.instance().store(group="hydra/sweeper", name="sweeper", node=PlanningSweeperConf, provider="sweeper")
ConfigStore.instance().store(group="hydra/launcher", name="slurm", node=SlurmLauncherConf, provider="sweeper")
ConfigStore.instance().store(group="hydra/launcher", name="accelerate", node=AccelerateLauncherConf, provider="sweeper")
ConfigStore.instance().store(group="hydra/launcher", name="ray_actors", node=RayActorsLauncherConf, provider="sweeper")
