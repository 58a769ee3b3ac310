"""Evaluation during training: a cheap metric subset every N steps, logged as curves.

Every rank runs the same evaluation on the same examples: under DeepSpeed ZeRO-3 a forward pass needs
every rank's shard, so evaluating on rank 0 alone would hang, and so would ranks running different
numbers of batches (the final evaluation's split over the ranks, unlearning/sharding.py, is not used
here); the numbers are identical on all ranks and rank 0 logs them. With `monitor` set, the best model so far is saved to `best_dir` (full weights,
written by rank 0).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import lightning as L

from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.tofu import TofuMetrics
from unlearning.results import write_json_atomic
from unlearning.strategies import save_full_weights

if TYPE_CHECKING:
    from unlearning.experiment import Experiment


class PeriodicEvaluation(L.Callback):
    def __init__(self, groups: Sequence[MetricGroup], benchmark, tokenizer, template, every_n_steps: int,
                 reference: dict[str, Evaluation] | None = None, monitor: str | None = None,
                 mode: str = "max", best_dir: str | Path | None = None, history_file: str | Path | None = None):
        if mode not in ("max", "min"):
            raise ValueError(f"eval.during_training.mode={mode!r}: use max or min")
        self.groups = list(groups)
        self.benchmark = benchmark
        self.tokenizer = tokenizer
        self.template = template
        self.every_n_steps = every_n_steps
        self.reference = reference or {}
        self.monitor = monitor
        self.sign = 1.0 if mode == "max" else -1.0
        self.best_dir = Path(best_dir) if best_dir else None
        self.history_file = Path(history_file) if history_file else None
        self.history: list[dict] = []
        self.best: float | None = None

    def measure(self, policy) -> dict[str, float]:
        metrics: dict[str, float] = {}
        for group in self.groups:
            evaluation = group.evaluate(policy, self.tokenizer, self.template, self.benchmark)
            metrics.update(evaluation.aggregates)
            if group.name in self.reference:
                pair = {"model": evaluation, "reference": self.reference[group.name]}
                metrics.update(group.compare(pair, "reference").get("model", {}))
        return metrics

    def record(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        step = trainer.global_step
        metrics = self.measure(pl_module.policy)
        self.history.append({"step": step, **metrics})
        if trainer.is_global_zero:
            if trainer.logger is not None:
                trainer.logger.log_metrics({f"eval/{k}": v for k, v in metrics.items()}, step=step)
            if self.history_file is not None:
                write_json_atomic(self.history_file, self.history)
        value = metrics.get(self.monitor) if self.monitor else None
        improved = value is not None and self.best_dir is not None and (self.best is None or self.sign * (value - self.best) > 0)
        if trainer.strategy.broadcast(improved):  # every rank saves: under ZeRO-3 that gathers the shards
            self.best = value
            save_full_weights(pl_module.policy, self.tokenizer, self.best_dir)
            if trainer.is_global_zero:
                write_json_atomic(self.best_dir / "best.json", {"step": step, self.monitor: value})

    def state_dict(self) -> dict:
        return {"history": self.history, "best": self.best}  # a resumed run continues the curve

    def load_state_dict(self, state: dict) -> None:
        self.history, self.best = state["history"], state["best"]

    def on_train_start(self, trainer, pl_module) -> None:
        if not self.history:
            self.record(trainer, pl_module)  # step 0: the curve starts at the model before unlearning

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step % self.every_n_steps == 0:
            self.record(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self.record(trainer, pl_module)


def periodic_evaluation(experiment: "Experiment", tokenizer, reference_model: Path | None) -> list:
    """The callback when `eval.during_training.every_n_steps` is set: TOFU's probabilities and truth
    ratios (no generation) on the first `max_examples` of each set, with forget quality against the
    `reference_model` (the retain model) when there is one."""
    cfg = experiment.cfg
    settings = cfg.eval.during_training
    if not settings.every_n_steps:
        return []
    cheap = TofuMetrics(batch_size=cfg.eval.groups.tofu.batch_size, max_length=cfg.max_length,
                        max_examples=settings.max_examples, generate=False, progress=False)
    spec, benchmark, run_dir = experiment.spec, experiment.benchmark, experiment.run_dir
    reference = {}
    if reference_model is not None:
        reference["tofu"] = cheap.evaluate(spec.load(reference_model)[0], tokenizer, spec.template, benchmark)
    return [PeriodicEvaluation([cheap], benchmark, tokenizer, spec.template, settings.every_n_steps, reference,
                               settings.monitor, settings.mode, run_dir / "best", run_dir / "eval_during_training.json")]
