"""Relearning robustness: does forgotten knowledge come back after a short finetune on a part of the forget set?

Following the relearning attacks of Hu et al. 2024 ("Jogging the Memory of Unlearned LLMs", arXiv
2406.13356) and Lynch et al. 2024 (arXiv 2402.16835): after the TOFU stages, the unlearned model is
finetuned briefly on the first `fraction` of the forget records, and every model is scored on the *other*
forget records, which the relearning never showed. Knowledge that returns there was hidden, not removed.

Rows: target, retain, unlearned, relearned, all evaluated on the held-out part of the forget set, so
that `relearned.forget_prob - unlearned.forget_prob` is the knowledge the attack recovered.
"""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig

from unlearning.errors import ConfigError
from unlearning.evaluation.evaluator import ModelSource
from unlearning.experiment import Experiment
from unlearning.methods.language_modeling import LanguageModeling
from unlearning.settings import TrainingSettings
from unlearning.protocols.tofu import reported_metrics  # noqa: F401 (scored as protocol=tofu scores)
from unlearning.stages.finetune import target_and_retain
from unlearning.stages.inputs import Inputs
from unlearning.stages.unlearn import UNLEARNED_FOLDER, unlearn
from unlearning.strategies import require_one_process, save_full_weights


# What this script trains, for unlearn-plan (unlearning/planning/stages.py).
TRAINING_STAGES = ("finetune_target", "finetune_retain", "unlearn", "relearn")


def split_forget(benchmark, fraction: float):
    """The records the attack relearns on (the first `fraction` of the forget set: whole authors, since
    TOFU lists an author's questions consecutively) and the benchmark whose forget set is the rest."""
    if not 0 < fraction < 1:
        raise ConfigError(f"protocol.fraction={fraction} must be in (0, 1): part of the forget set is relearned, "
                          "the rest measures what came back")
    cut = max(1, min(len(benchmark.forget) - 1, round(fraction * len(benchmark.forget))))
    held_out = replace(benchmark, forget=benchmark.forget[cut:], forget_perturbed=benchmark.forget_perturbed[cut:])
    return benchmark.forget[:cut], held_out


def run_relearning(cfg: DictConfig, fraction: float = 0.5, epochs: int = 1, lr: float = 1e-3,
                   batch_size: int = 16, max_steps: int = -1) -> float | list[float]:
    """TOFU stages, then the relearning attack; returns the relearned model's `cfg.objective_metric`."""
    require_one_process(cfg, "tofu_relearn")
    experiment = Experiment.from_config(cfg)
    relearn_records, held_out = split_forget(experiment.benchmark, fraction)
    evaluator = experiment.evaluator.with_benchmark(held_out)
    target, retain_model = target_and_retain(experiment)
    policy, tokenizer = unlearn(experiment, target, reference_model=retain_model)
    sources = [ModelSource("target", target, cached=True), ModelSource("retain", retain_model, cached=True),
               ModelSource("unlearned", experiment.run_dir / UNLEARNED_FOLDER, loaded=(policy, tokenizer))]
    scored = evaluator.score(sources)  # before the attack trains the same policy further
    attack = TrainingSettings(epochs=epochs, lr=lr, batch_size=batch_size, max_steps=max_steps)
    experiment.trainer.fit(policy, tokenizer, LanguageModeling(), Inputs({"train": relearn_records}), attack, "relearn")
    relearned = ModelSource("relearned", experiment.run_dir / "relearned", loaded=(policy, tokenizer))
    save_full_weights(policy, tokenizer, relearned.folder)
    scored.update(evaluator.score([relearned]))
    return experiment.conclude(evaluator.results(scored, "retain", [*sources, relearned]), model="relearned")
