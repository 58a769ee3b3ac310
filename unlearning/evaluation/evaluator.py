"""The Evaluator: every protocol scores its models through it, and it alone writes the results.

Scoring is a list of work items (one model x one metric group), each scored on its own and then
reduced: the per-model aggregates merged with each group's comparisons against the reference model
(forget quality against the retain model, ...). Each model is loaded once for all of its items; a
cached stage's evaluation is kept beside it (`eval-<group>-<hash>.json`, the hash of the group's
settings, the data and the template), so a sweep scores its target and retain model once.

In a multi-process run, evaluation is data-parallel: every rank loads a full replica of each model
(under ZeRO-3 training, the saved full model, as one process would) and scores a share of every metric
group's batches; the results are gathered on every rank (unlearning/sharding.py), equal to one process's,
and rank 0 writes them. The harness's group shards its requests its own way (harness.py).

`Results.write` is the one writer of `results.json` (metrics per model, the models' paths, the config)
and `per_example.json`, both written atomically.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf

from unlearning.config import build, fingerprint
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.models import ModelSpec
from unlearning.errors import NonFiniteMetric
from unlearning.results import format_table, non_finite_entries, read_json_or_none, write_json_atomic
from unlearning.sharding import sharded
from unlearning.strategies import broadcast, global_rank

log = logging.getLogger(__name__)

RESULTS_FILE = "results.json"
PER_EXAMPLE_FILE = "per_example.json"


@dataclass
class ModelSource:
    """A model to score: saved in `folder` (loaded when scored), already `loaded` (model, tokenizer), or
    made when scored by `make()` (a composite of other models). `cached`: a cached stage, whose
    evaluations are kept beside it; `groups`: the metric groups that score it (None: all)."""

    name: str
    folder: str | Path | None = None
    loaded: tuple[Any, Any] | None = None
    make: Callable[[], tuple[Any, Any]] | None = None
    cached: bool = False
    groups: Sequence[str] | None = None

    def load(self, spec: ModelSpec) -> tuple[Any, Any]:
        if self.loaded is not None:
            return self.loaded
        return self.make() if self.make is not None else spec.load(self.folder)


@dataclass(frozen=True)
class WorkItem:
    model: str
    group: str


class Evaluator:
    """The metric groups of a run (`eval.groups`, built once) applied to one benchmark."""

    def __init__(self, nodes: Mapping[str, DictConfig], benchmark, spec: ModelSpec,
                 groups: Mapping[str, MetricGroup] | None = None) -> None:
        self.nodes = {name: node for name, node in nodes.items() if node}
        self.groups = dict(groups) if groups is not None else {name: build(node) for name, node in self.nodes.items()}
        self.benchmark = benchmark
        self.spec = spec

    @classmethod
    def from_config(cls, cfg: DictConfig, benchmark, spec: ModelSpec) -> "Evaluator":
        return cls(cfg.eval.groups, benchmark, spec)

    def with_benchmark(self, benchmark) -> "Evaluator":
        """The same metric groups on another benchmark (a held-out part of the forget set, ...)."""
        return Evaluator(self.nodes, benchmark, self.spec, self.groups)

    def with_groups(self, groups: Mapping[str, MetricGroup]) -> "Evaluator":
        """These groups instead (a protocol's own measurements, or the configured groups it can feed)."""
        return Evaluator({}, self.benchmark, self.spec, groups)

    @cached_property
    def benchmark_key(self) -> str:
        """Fingerprint of every split (groups read more than the TOFU eval sets: holdout, retain, ...)."""
        return fingerprint(asdict(self.benchmark))

    def cache_file(self, folder: str | Path, group: str) -> Path:
        parts = {"group": OmegaConf.to_container(self.nodes[group], resolve=True), "data": self.benchmark_key,
                 "template": str(self.spec.template)}
        return Path(folder) / f"eval-{group}-{fingerprint(parts)}.json"

    def work(self, sources: Sequence[ModelSource]) -> list[WorkItem]:
        return [WorkItem(source.name, group) for source in sources for group in self.groups
                if source.groups is None or group in source.groups]

    def score(self, sources: Sequence[ModelSource], items: Sequence[WorkItem] | None = None) -> dict[WorkItem, Evaluation]:
        """Each item's evaluation: read from a cached stage's folder, else scored (and kept there).
        Collective in a multi-process run: every rank calls it and gets every evaluation."""
        by_name = {source.name: source for source in sources}
        items = list(items) if items is not None else self.work(sources)
        scored: dict[WorkItem, Evaluation] = {}
        with sharded():  # one split over every item: the spare batches of uneven counts go round the ranks
            for name in dict.fromkeys(item.model for item in items):
                scored.update(self.score_model(by_name[name], [item for item in items if item.model == name]))
        return scored

    def score_model(self, source: ModelSource, items: Sequence[WorkItem]) -> dict[WorkItem, Evaluation]:
        """One model's items; the model is loaded once for all of them (a full replica on every rank)."""
        lead = global_rank() == 0
        kept = {item: self.cache_file(source.folder, item.group) for item in items
                if source.cached and item.group in self.nodes}
        # rank 0 reads them for all: the ranks must agree on what is scored, and another job may be writing
        cached = broadcast({item: evaluation for item, file in kept.items()
                            if (evaluation := cached_evaluation(file)) is not None} if lead else None)
        scored = dict(cached)
        missing = [item for item in items if item not in scored]
        if lead:
            log.info("evaluate %s: %s", source.name, ", ".join(
                f"{item.group} ({'kept' if item not in missing else 'scoring'})" for item in items))
        if missing:
            model, tokenizer = source.load(self.spec)
            for item in missing:
                scored[item] = self.groups[item.group].evaluate(model, tokenizer, self.spec.template, self.benchmark)
                if item in kept and lead and os.access(kept[item].parent, os.W_OK):  # a read-only cache: not kept
                    write_json_atomic(kept[item], scored[item].to_json())
        return scored

    def reduce(self, scored: Mapping[WorkItem, Evaluation], reference: str | None) -> dict[str, dict[str, float]]:
        """Metrics per model: every group's aggregates, then its comparisons against `reference`."""
        models: dict[str, dict[str, float]] = {item.model: {} for item in scored}
        for group_name, group in self.groups.items():
            by_model = {item.model: evaluation for item, evaluation in scored.items() if item.group == group_name}
            for name, evaluation in by_model.items():
                models[name].update(evaluation.aggregates)
            for name, extra in group.compare(by_model, reference if reference in by_model else None).items():
                models[name].update(extra)
        return models

    def table(self, models: Mapping[str, Mapping[str, float]], scored: Mapping[WorkItem, Evaluation]) -> str:
        """One table per group: its own columns (`columns`), else its aggregates and comparisons."""
        shown: set[str] = set()
        blocks = []
        for name, group in self.groups.items():
            columns = list(group.columns)
            if not columns:
                aggregates = {key for item, evaluation in scored.items() if item.group == name
                              for key in evaluation.aggregates if not key.endswith("_stderr")}
                columns = sorted(aggregates - shown)
                columns += [key for key in sorted({k for m in models.values() for k in m} - shown - set(columns))
                            if key.startswith(name) and not key.endswith("_stderr")]
            shown.update(columns)
            if columns:
                blocks.append(("" if not blocks else f"{name}\n") + format_table(models, columns, prefix=f"{name}_"))
        return "\n\n".join(blocks)

    def evaluate(self, sources: Sequence[ModelSource], reference: str | None) -> "Results":
        scored = self.score(sources)
        return self.results(scored, reference, sources)

    def results(self, scored: Mapping[WorkItem, Evaluation], reference: str | None,
                sources: Sequence[ModelSource]) -> "Results":
        models = self.reduce(scored, reference)
        per_example: dict[str, dict[str, Any]] = {name: {} for name in models}
        for item, evaluation in scored.items():
            per_example[item.model][item.group] = evaluation.per_example
        paths = {source.name: str(source.folder) for source in sources if source.folder is not None}
        return Results(models, per_example, paths, self.table(models, scored))


def cached_evaluation(file: Path) -> Evaluation | None:
    """A stage folder's kept evaluation; None when there is none, or when it is corrupt (truncated, not
    an evaluation): then it is named in a warning and scored again."""
    if not file.exists():
        return None
    payload = read_json_or_none(file)
    try:
        return Evaluation.from_json(payload)
    except TypeError:  # not a mapping, or not Evaluation's fields
        log.warning("%s is corrupt: it is discarded and the evaluation computed again", file)
        return None


@dataclass
class Results:
    """A run's metrics per model, per-example values, the models' paths, and the printed tables."""

    models: dict[str, dict[str, float]]
    per_example: dict[str, dict[str, Any]]
    paths: dict[str, str]
    table: str

    def write(self, run_dir: Path, cfg: DictConfig, **extra: Any) -> Path:
        """per_example.json, then results.json (which points at it): each written atomically."""
        write_json_atomic(run_dir / PER_EXAMPLE_FILE, self.per_example)
        results = run_dir / RESULTS_FILE
        write_json_atomic(results, {"models": self.models, "paths": self.paths, "per_example": PER_EXAMPLE_FILE,
                                    **extra, "config": OmegaConf.to_container(cfg, resolve=True)})
        return results

    def report(self, run_dir: Path, cfg: DictConfig, **extra: Any) -> Path:
        """Write the results, then print the tables and where the results are."""
        path = self.write(run_dir, cfg, **extra)
        print(self.table)
        print(f"\nresults: {path}")
        return path

    def refuse_non_finite(self, path: Path) -> None:
        """A NaN or infinite metric (written as null) fails the run, naming the metric: a sweep must not
        rank it as a result."""
        bad = non_finite_entries(self.models)
        if bad:
            raise NonFiniteMetric(f"{path}: metric {bad[0]} is not finite (written as null"
                                  f"{f'; {len(bad) - 1} more' if len(bad) > 1 else ''})")
