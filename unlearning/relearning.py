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

from unlearning.config import build
from unlearning.dashboards import publish_results
from unlearning.errors import ConfigError
from unlearning.methods.language_modeling import LanguageModeling
from unlearning.pipeline import Protocol, build_protocol, report
from unlearning.strategies import require_one_process, save_full_weights
from unlearning.sweeps import sweep_objective


def split_forget(protocol: Protocol, fraction: float) -> tuple[list[dict], Protocol]:
    """The records the attack relearns on (the first `fraction` of the forget set: whole authors, since
    TOFU lists an author's questions consecutively) and a protocol whose forget set is the rest."""
    if not 0 < fraction < 1:
        raise ConfigError(f"protocol.fraction={fraction} must be in (0, 1): part of the forget set is relearned, "
                          "the rest measures what came back")
    benchmark = protocol.benchmark
    cut = max(1, min(len(benchmark.forget) - 1, round(fraction * len(benchmark.forget))))
    held_out = replace(benchmark, forget=benchmark.forget[cut:], forget_perturbed=benchmark.forget_perturbed[cut:])
    return benchmark.forget[:cut], replace(protocol, benchmark=held_out)


def run_relearning(cfg: DictConfig, fraction: float = 0.5, epochs: int = 1, lr: float = 1e-3,
                   batch_size: int = 16, max_steps: int = -1) -> float | list[float]:
    """TOFU stages, then the relearning attack; returns the relearned model's `cfg.objective_metric`."""
    require_one_process(cfg, "tofu_relearn")
    protocol = build_protocol(cfg)
    relearn_records, held_out = split_forget(protocol, fraction)
    target = protocol.finetune("target", protocol.benchmark.full)
    retain_model = protocol.finetune("retain", protocol.benchmark.retain)
    policy, tokenizer = protocol.unlearn(target, reference_model=retain_model)
    evaluations = {
        "target": held_out.evaluate_cached(target),
        "retain": held_out.evaluate_cached(retain_model),
        "unlearned": held_out.evaluate(policy, tokenizer),
    }
    protocol.train(policy, tokenizer, LanguageModeling(), None, {"train": relearn_records},
                   build(cfg.optimizer, lr=lr), batch_size, "relearn", epochs, max_steps)
    relearned = protocol.run_dir / "relearned"
    save_full_weights(policy, tokenizer, relearned)
    evaluations["relearned"] = held_out.evaluate(policy, tokenizer)
    paths = {"target": str(target), "retain": str(retain_model), "unlearned": str(protocol.run_dir / "unlearned"),
             "relearned": str(relearned)}
    models = report(held_out, evaluations, "retain", paths)
    publish_results(cfg, protocol.run_dir / "results.json", models)
    return sweep_objective(models["relearned"], cfg.objective_metric)
