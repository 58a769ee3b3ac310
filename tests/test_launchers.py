"""Multi-node launches: the SLURM launcher config follows `trainer.num_nodes` with one task per GPU, and a
torchrun or SLURM launch that does not match the config is refused in one line before any process group."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import REPO
from unlearning.cli import CONFIG_DIR
from unlearning.errors import ConfigError
from unlearning.launchers import check_launch

TORCHRUN = {"TORCHELASTIC_RUN_ID": "x", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}
SLURM = {"SLURM_JOB_NUM_NODES": "2", "SLURM_NTASKS": "8", "SLURM_JOB_NAME": "unlearn"}
LAUNCH_VARIABLES = ("TORCHELASTIC_RUN_ID", "WORLD_SIZE", "LOCAL_WORLD_SIZE", *SLURM)


@pytest.fixture
def launched(monkeypatch):
    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)

    def under(variables: dict) -> None:
        for name, value in variables.items():
            monkeypatch.setenv(name, value)

    return under


def test_slurm_launcher_gives_every_node_one_task_per_gpu():
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose("config", overrides=["hydra/launcher=slurm", "hydra.launcher.gpus_per_node=8",
                                           "trainer.num_nodes=3"], return_hydra_config=True)
    launcher = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    assert (launcher["nodes"], launcher["gpus_per_node"], launcher["tasks_per_node"]) == (3, 8, 8)


def test_a_plain_launch_is_not_checked(launched):
    check_launch({"num_nodes": 4, "devices": 8, "strategy": "ddp"})  # unlearn starts its own processes


def test_torchrun_world_must_match_nodes_and_devices(launched):
    launched(TORCHRUN)
    check_launch({"num_nodes": 2, "devices": 2, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=3, but torchrun started 4 processes, 2 per node: "
                                          r"set trainer.num_nodes=2$"):
        check_launch({"num_nodes": 3, "devices": 2, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"^trainer.devices=4, but torchrun started 2 processes per node"):
        check_launch({"num_nodes": 2, "devices": 4, "strategy": "ddp"})


def test_slurm_nodes_and_tasks_must_cover_the_config(launched):
    launched(SLURM)
    check_launch({"num_nodes": 2, "devices": 4, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=3, but the SLURM job has 2 node\(s\)"):
        check_launch({"num_nodes": 3, "devices": 4, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=2 x trainer.devices=2 processes, but the SLURM job "
                                          r"runs 8 task\(s\)"):
        check_launch({"num_nodes": 2, "devices": 2, "strategy": "ddp"})
    with pytest.raises(ConfigError, match=r"^trainer.num_nodes=0 must be at least 1$"):
        check_launch({"num_nodes": 0})


@pytest.mark.ci
@pytest.mark.slow
def test_torchrun_with_two_local_processes(tmp_path):
    """The README's torchrun command on 2 local CPU processes (gloo): one run folder, results written once."""
    unlearn = os.path.join(os.path.dirname(sys.executable), "unlearn")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", unlearn,
               "hardware=ddp", "trainer.accelerator=cpu", "trainer.devices=2", f"hydra.run.dir={tmp_path / 'run'}",
               f"paths.cache_dir={tmp_path / 'cache'}", "finetune.epochs=1", "trainer.max_steps=2", "~lm_eval",
               "logger=none", "eval.groups.tofu.max_examples=4", "eval.groups.tofu.max_new_tokens=4", "hydra.verbose=true"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "run" / "results.json").is_file()
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in done.stderr + done.stdout
