"""What a launcher started must be what the config asks for, checked before any process group exists.

Three ways a multi-process run starts: `unlearn` itself (Lightning starts `trainer.devices` processes
per node, `start_processes`), `torchrun` (one process per rank, started by torchrun), and SLURM through
the submitit launcher (one task per GPU on `trainer.num_nodes` nodes, conf/hydra/launcher/slurm.yaml).
Under the last two, the processes already exist: a `trainer.num_nodes` or `trainer.devices` that does
not match them would hang at the first collective, so it is refused in one line instead.
"""

from __future__ import annotations

import os
from typing import Mapping

from hydra.core.hydra_config import HydraConfig

from unlearning.errors import ConfigError


def check_launch(trainer: Mapping) -> None:
    """Refuse a `trainer` config that the torchrun or SLURM launch of this process cannot run."""
    nodes = int(trainer.get("num_nodes", 1))
    if nodes < 1:
        raise ConfigError(f"trainer.num_nodes={nodes} must be at least 1")
    if "TORCHELASTIC_RUN_ID" in os.environ:  # set by torchrun for every rank it starts
        check_torchrun(trainer, nodes)
    elif "SLURM_JOB_NUM_NODES" in os.environ and os.environ.get("SLURM_JOB_NAME") not in ("bash", "interactive"):
        # (an interactive allocation, `salloc` then a shell, launches nothing: Lightning ignores it too)
        check_slurm(trainer, nodes)


def check_torchrun(trainer: Mapping, nodes: int) -> None:
    world, per_node = int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_WORLD_SIZE"])
    if nodes * per_node != world:
        raise ConfigError(f"trainer.num_nodes={nodes}, but torchrun started {world} processes, {per_node} per node: "
                          f"set trainer.num_nodes={world // per_node}")
    if str(trainer.get("devices")) != str(per_node):
        raise ConfigError(f"trainer.devices={trainer.get('devices')}, but torchrun started {per_node} processes "
                          f"per node: set trainer.devices={per_node}")
    if HydraConfig.initialized() and not any(o.startswith("hydra.run.dir=") for o in HydraConfig.get().overrides.hydra):
        raise ConfigError("under torchrun every rank composes its own dated run folder: give them one with "
                          "hydra.run.dir=<folder>")


def check_slurm(trainer: Mapping, nodes: int) -> None:
    allocated = int(os.environ["SLURM_JOB_NUM_NODES"])
    if nodes > allocated:
        raise ConfigError(f"trainer.num_nodes={nodes}, but the SLURM job has {allocated} node(s): set "
                          f"hydra.launcher.nodes={nodes} (conf/hydra/launcher/slurm.yaml) or trainer.num_nodes={allocated}")
    tasks = os.environ.get("SLURM_NTASKS")
    devices = trainer.get("devices")
    if tasks and str(devices).isdigit() and trainer.get("strategy") and nodes * int(devices) != int(tasks):
        raise ConfigError(f"trainer.num_nodes={nodes} x trainer.devices={devices} processes, but the SLURM job runs "
                          f"{tasks} task(s): one task per GPU (hydra.launcher.tasks_per_node=trainer.devices)")
