"""The metric-group contract: one family of metrics (tofu, lm_eval, muse, mia, ...) per group.

A group scores one model at a time (`evaluate`), so a cached model's evaluation is computed once and
reused; metrics that need two models (forget quality against the retain model, PrivLeak against the
retrained model, reference-loss membership inference) come from `compare`, which sees every model's
evaluation. Everything an evaluation holds is JSON-serialisable, so evaluations are cached as files.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, Mapping


@dataclass
class Evaluation:
    """aggregates: flat metric name -> number (the table and results.json);
    per_example: JSON-able per-example values (per_example.json);
    raw: the per-example numbers `compare` needs (e.g. forget-set truth ratios, membership scores)."""

    aggregates: dict[str, float] = field(default_factory=dict)
    per_example: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, list[float]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, payload: Mapping[str, Any]) -> "Evaluation":
        return cls(**payload)


class MetricGroup:
    """Base of every metric group; subclasses are built from `conf/eval/` with `_target_`.

    evaluate(model, tokenizer, template, benchmark) -> Evaluation for one model; the model comes in
    the mode the caller had and must leave in it. compare(evaluations, reference) -> per model, extra
    aggregates computed against `evaluations[reference]` (default: none). result_names(compared) ->
    the names those two report.
    """

    name: ClassVar[str] = ""
    # whether it reads a question-answer benchmark's splits (eval sets, holdout, perturbed retain answers),
    # which a plain-text corpus (protocol=text) does not have
    reads_qa_splits: bool = True
    # the columns of its table, in order (empty: its aggregates, sorted; results.json has them all)
    columns: ClassVar[tuple[str, ...]] = ()

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        raise NotImplementedError

    def compare(self, evaluations: Mapping[str, Evaluation], reference: str | None) -> dict[str, dict[str, float]]:
        return {}

    def result_names(self, compared: bool) -> tuple[str, ...]:
        """The metric names it reports for a model, as `fnmatch` patterns where they depend on what a
        library reports (the harness's metrics per task): its aggregates and, when `compared` (the run
        has a reference model), what `compare` adds. `objective_metric` is checked against them before
        any training (unlearning/sweeps.py). A group that declares none (a user's own) lets any name
        pass there; a name it does not produce is then refused when the results are read."""
        return ("*",)
