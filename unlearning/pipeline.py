"""What the console scripts call: `run(cfg)` runs the configured protocol (unlearning/protocols/) and
returns the sweep metric; `run_evaluation(cfg)` scores saved models (`unlearn-eval`)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from unlearning.config import build
from unlearning.console import hydra_verbose, set_up_console
from unlearning.errors import ConfigError
from unlearning.evaluation.evaluator import ModelSource
from unlearning.experiment import Experiment
from unlearning.launchers import check_launch
from unlearning.schema import prepare_config
from unlearning.settings import EvaluationSettings, RunSettings
from unlearning.strategies import start_processes


def run(cfg: DictConfig) -> float | list[float]:
    """The entry point's only call: run the configured protocol, return the sweep metric. A multi-process
    trainer (conf/hardware/) starts its processes here; each runs the protocol (unlearning/strategies.py)."""
    set_up_console(hydra_verbose())
    prepare_config(cfg, RunSettings)
    check_launch(cfg.trainer)
    start_processes(cfg.trainer)
    return build(cfg.protocol)(cfg)


def run_evaluation(cfg: DictConfig) -> dict:
    """`unlearn-eval`: score a saved checkpoint (and, for forget quality, a retain model)."""
    set_up_console(hydra_verbose())
    prepare_config(cfg, EvaluationSettings)
    folders = {"checkpoint": cfg.checkpoint}
    if cfg.get("retain_checkpoint"):
        folders["retain"] = cfg.retain_checkpoint
    for name, folder in folders.items():
        if not Path(folder).is_dir():
            raise ConfigError(f"{name}={folder} is not a model folder")
    experiment = Experiment.from_config(cfg)
    results = experiment.evaluator.evaluate([ModelSource(name, folder) for name, folder in folders.items()],
                                            "retain" if "retain" in folders else None)
    results.report(experiment.run_dir, cfg)
    return results.models
