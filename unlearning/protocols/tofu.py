"""TOFU (Maini et al. 2024, arXiv 2401.06121): finetune the target (all splits) and the retain model
(retainXX) -> unlearn forgetXX from the target -> score the three; forget quality is measured against
the retain model, which never saw the forget set."""

from __future__ import annotations

from typing import Mapping

from omegaconf import DictConfig

from unlearning.evaluation.base import MetricGroup
from unlearning.evaluation.evaluator import ModelSource
from unlearning.experiment import Experiment
from unlearning.stages.finetune import target_and_retain
from unlearning.stages.unlearn import UNLEARNED_FOLDER, unlearn


# What this script trains, for unlearn-plan (unlearning/planning/stages.py); the reinforced model is
# added there when the method declares it.
TRAINING_STAGES = ("finetune_target", "finetune_retain", "unlearn")


def reported_metrics(cfg: DictConfig, groups: Mapping[str, MetricGroup]) -> list[str]:
    """What the model `objective_metric` is read from is reported with (checked at start-up,
    unlearning/sweeps.py): every configured group, compared with the retain model."""
    return [name for group in groups.values() for name in group.result_names(compared=True)]


def run_tofu(cfg: DictConfig) -> float | list[float]:
    """Returns the unlearned model's `cfg.objective_metric` (a name or a list) for sweepers."""
    experiment = Experiment.from_config(cfg)
    target, retain_model = target_and_retain(experiment)
    policy, tokenizer = unlearn(experiment, target, reference_model=retain_model)
    results = experiment.evaluate([
        ModelSource("target", target, cached=True),
        ModelSource("retain", retain_model, cached=True),
        ModelSource("unlearned", experiment.run_dir / UNLEARNED_FOLDER, loaded=(policy, tokenizer)),
    ])
    return experiment.conclude(results)
