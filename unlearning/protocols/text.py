"""The plain-text protocol (WHP's setting, arXiv 2310.02238): base -> finetune target on the forget text
-> (reinforced: target further finetuned on it) -> unlearn -> probability familiarity + perplexity.

Rows of the table: base (the model before it read the text), target, reinforced, unlearned, and
`whp_inference` (MUSE's inference-time WHP on target and reinforced, no training); columns: the text
metrics (unlearning/evaluation/text.py), and the configured metric groups a text corpus can feed.
"""

from __future__ import annotations

from typing import Mapping

from omegaconf import DictConfig

from unlearning.data.anchored_terms import load_dictionary
from unlearning.evaluation.base import MetricGroup
from unlearning.evaluation.base_drift import BaseDrift, general_texts
from unlearning.errors import ConfigError
from unlearning.evaluation.evaluator import ModelSource
from unlearning.evaluation.text import TextMetrics, text_metric_groups
from unlearning.experiment import Experiment
from unlearning.methods.whp import WHPInference
from unlearning.stages.finetune import base_model, finetune, reinforce
from unlearning.stages.unlearn import UNLEARNED_FOLDER, unlearn


# What this script trains, for unlearn-plan (unlearning/planning/stages.py).
TRAINING_STAGES = ("finetune_target", "finetune_reinforced", "unlearn")


def reported_metrics(cfg: DictConfig, groups: Mapping[str, MetricGroup]) -> list[str]:
    """What the unlearned model is reported with (checked at start-up, unlearning/sweeps.py): the text
    metrics, the drift from the base model with `general_path`, and the configured groups a text corpus
    can feed; nothing compared (no reference model). All the text metrics and the drift report are columns."""
    drift = BaseDrift.columns if cfg.protocol.get("general_path") else ()
    return [*TextMetrics.columns, *drift,
            *(name for group in text_metric_groups(groups).values() for name in group.result_names(compared=False))]


def run_text(cfg: DictConfig, n_prompts: int = 200, context_words: int = 40, n_forget_blocks: int = 50,
             batch_size: int = 32, general_path: str | None = None, general_field: str = "text",
             n_general: int = 200, kl_samples: int = 32, kl_new_tokens: int = 32) -> float:
    """Run the stages, print the table, write results.json; returns the unlearned model's `cfg.objective_metric`.
    With `general_path`, also the drift from the base model (unlearning/evaluation/base_drift.py)."""
    if not cfg.data.get("anchored_terms"):
        raise ConfigError("data.anchored_terms is required by the text protocol (a dictionary file or shipped name)")
    experiment = Experiment.from_config(cfg)
    terms = load_dictionary(cfg.data.anchored_terms)
    text = TextMetrics(terms, n_prompts, context_words, n_forget_blocks, batch_size, cfg.max_length)
    # before training: a configured group that cannot score text fails now
    groups = {"text": text, **text_metric_groups(experiment.evaluator.groups)}
    if general_path:
        groups["base_drift"] = drift = BaseDrift(general_texts(general_path, general_field, n_general), kl_samples,
                                                 max_new_tokens=kl_new_tokens, seed=cfg.seed,
                                                 batch_size=batch_size, max_length=cfg.max_length)
        drift.check_disjoint(experiment.benchmark.corpus())
    evaluator = experiment.evaluator.with_groups(groups)
    target = finetune(experiment, "target", experiment.benchmark.forget)
    reinforced = reinforce(experiment, target)
    policy, tokenizer = unlearn(experiment, target)

    def inference():  # MUSE's inference-time WHP on the target and the reinforced model
        spec = experiment.spec
        return WHPInference(spec.load(target)[0], spec.load(reinforced)[0], cfg.method.get("alpha", 5.0)), tokenizer

    if general_path:  # the base model's own samples, drawn once for every model to be compared on
        drift.bind_base(*experiment.spec.load(base_model(experiment)), experiment.spec.template)
    results = experiment.evaluate([
        ModelSource("base", base_model(experiment)), ModelSource("target", target),
        ModelSource("reinforced", reinforced, groups=["text"]),
        ModelSource("unlearned", experiment.run_dir / UNLEARNED_FOLDER, loaded=(policy, tokenizer)),
        ModelSource("whp_inference", make=inference, groups=["text"]),
    ], reference=None, evaluator=evaluator)
    return experiment.conclude(results, n_prompts=len(text.prompts(experiment.benchmark)),
                               anchored_terms=terms)
