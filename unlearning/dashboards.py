"""Dashboards: the configured Lightning logger for each training stage, and the final results on W&B.

Every logger receives the full resolved config; on W&B with the comparison keys (sweep, method, split,
seed) at its top level, the method's settings under `method_settings`. With W&B, each stage (finetune_target, finetune_retain,
unlearn, ...) is a run of its own: `job_type` = the stage, named after the sweep job's overrides,
grouped by sweep folder (a single run: by experiment), tagged with the chosen method, model and data.
The unlearn run, still open when the protocol ends, gets the final metrics as its summary and
results.json as an artifact, then is finished.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Mapping

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from unlearning.config import build

WANDB_TARGETS = ("lightning.pytorch.loggers.WandbLogger", "lightning.pytorch.loggers.wandb.WandbLogger")
TAGGED_CHOICES = ("method", "model", "data")


def uses_wandb(cfg: DictConfig) -> bool:
    return bool(cfg.get("logger")) and cfg.logger.get("_target_") in WANDB_TARGETS


def wandb_run_settings(cfg: DictConfig, stage: str) -> dict:
    """name / job_type / group / tags of one stage's W&B run; group and tags given in the config win."""
    settings = {"name": stage, "job_type": stage}
    if not HydraConfig.initialized():
        return settings
    hydra = HydraConfig.get()
    if hydra.job.override_dirname:
        settings["name"] = f"{hydra.job.override_dirname}/{stage}"
    if not cfg.logger.get("group"):
        settings["group"] = hydra.sweep.dir if hydra.mode == RunMode.MULTIRUN else hydra.runtime.choices.get("experiment")
    choices = [hydra.runtime.choices.get(group) for group in TAGGED_CHOICES]
    settings["tags"] = [*(cfg.logger.get("tags") or []), *(choice for choice in choices if choice)]
    return settings


def comparison_keys(cfg: DictConfig) -> dict:
    """The top-level config keys a dashboard groups and compares runs by: the sweep folder, the method's
    config name, the forget split and the seed (the method's own settings move to `method_settings`)."""
    hydra = HydraConfig.get() if HydraConfig.initialized() else None
    method = hydra.runtime.choices.get("method") if hydra else None
    return {"sweep": hydra.sweep.dir if hydra and hydra.mode == RunMode.MULTIRUN else None,
            "method": method or OmegaConf.select(cfg, "method._target_", default=None),
            "split": OmegaConf.select(cfg, "data.split", default=None), "seed": cfg.get("seed")}


def stage_logger(cfg: DictConfig, stage: str):
    """The configured Lightning logger for one training stage (False without one)."""
    if not cfg.get("logger"):
        return False
    config = OmegaConf.to_container(cfg, resolve=True)
    if uses_wandb(cfg):
        finish_run()  # the previous stage's run: each stage is a run of its own
        logger = build(cfg.logger, **wandb_run_settings(cfg, stage))
        config = {**config, "method_settings": config.get("method"), **comparison_keys(cfg)}
    else:
        logger = build(cfg.logger, name=stage)
    logger.log_hyperparams(config)
    return logger


def publish_results(cfg: DictConfig, results_file: Path, models: Mapping[str, Mapping[str, float]]) -> None:
    """With the W&B logger, on the open (unlearn) run: the unlearned model's metrics as its summary (the
    other models' as `<model>/<metric>`) and `results_file` as an artifact; then the run is finished."""
    wandb = sys.modules.get("wandb")
    if not uses_wandb(cfg) or wandb is None or wandb.run is None:  # no run: W&B is off, or not rank 0
        return
    summary = dict(models.get("unlearned", {}))
    summary.update({f"{name}/{key}": value for name, metrics in models.items() if name != "unlearned"
                    for key, value in metrics.items()})
    wandb.run.summary.update(summary)
    artifact = wandb.Artifact(f"results-{wandb.run.id}", type="results")
    artifact.add_file(str(results_file))
    wandb.run.log_artifact(artifact)
    finish_run()


def finish_run(exit_code: int = 0) -> None:
    """Finish the open W&B run, if W&B was ever used in this process."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)
