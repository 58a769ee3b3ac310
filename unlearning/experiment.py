"""What every protocol shares: the composed config and the parts built from it, once per run.

A protocol (unlearning/protocols/) is a short script over an `Experiment`: the stages it trains
(unlearning/stages/), the models it scores through the Evaluator, and `conclude`, which writes and
prints the results, publishes them to the dashboard and returns the sweep metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from unlearning.config import build
from unlearning.dashboards import publish_results
from unlearning.interrupts import enter_stage
from unlearning.data.benchmark import QABenchmark
from unlearning.evaluation.evaluator import Evaluator, ModelSource, Results
from unlearning.models import RUNTIME_KEYS, ModelSpec
from unlearning.settings import StageSettings
from unlearning.stages.cache import ResumePolicy, StageCache
from unlearning.stages.training import StageTrainer
from unlearning.strategies import end_processes
from unlearning.sweeps import sweep_objective


@dataclass
class Experiment:
    cfg: DictConfig
    benchmark: QABenchmark
    spec: ModelSpec
    cache: StageCache
    run_dir: Path
    unlearn_stage: str = "unlearn"  # the unlearning stage's logger name (logs/<it>; a sequential request's differs)

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "Experiment":
        run_dir = Path(cfg.paths.run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        return cls(cfg, build(cfg.data.benchmark), build(cfg.model), StageCache(cfg.paths.cache_dir), run_dir)

    @cached_property
    def settings(self) -> StageSettings:
        return StageSettings.from_config(self.cfg)

    @cached_property
    def trainer(self) -> StageTrainer:
        return StageTrainer.from_config(self.cfg, self.spec.template)

    @cached_property
    def evaluator(self) -> Evaluator:
        return Evaluator.from_config(self.cfg, self.benchmark, self.spec)

    @cached_property
    def resume(self) -> ResumePolicy:
        return ResumePolicy.from_config(self.cfg)

    @property
    def model_key(self) -> dict:
        # LoRA applies to unlearning only, and the memory switches change how, not what, a model learns:
        # the cached stages do not depend on them.
        model = {k: v for k, v in OmegaConf.to_container(self.cfg.model, resolve=True).items() if k not in RUNTIME_KEYS}
        return {"model": model, "seed": self.cfg.seed}

    def evaluate(self, sources: Sequence[ModelSource], reference: str | None = "retain",
                 evaluator: Evaluator | None = None) -> Results | None:
        """Score the models after the last training stage, then end the process group; None on the ranks
        that do not report. Every rank evaluates (data-parallel, full model replicas: see the Evaluator)
        and holds every result; rank 0 reports them."""
        enter_stage("eval")
        results = (evaluator or self.evaluator).evaluate(sources, reference)
        return results if end_processes() else None

    def conclude(self, results: Results | None, model: str = "unlearned", **extra: Any) -> float | list[float]:
        """Write results.json and per_example.json, print the tables and where they are, publish them;
        returns `model`'s `objective_metric` for sweepers."""
        if results is None:
            return math.nan
        path = results.report(self.run_dir, self.cfg, **extra)
        publish_results(self.cfg, path, results.models)
        results.refuse_non_finite(path)
        return sweep_objective(results.models[model], self.cfg.objective_metric)
