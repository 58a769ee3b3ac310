"""Mean and standard deviation over seeds: the numbers of the paper table.

Jobs whose labels differ only in their `seed=` item form a group (collect.Job.group); each model of a
group gets, for every metric, the mean, the sample standard deviation (n - 1; none for a single job) and
n over the group's jobs. A reference model (every model but the unlearned one: target, retain, ...) whose
numbers are the same in several groups, as in a sweep where all methods share the finetuned models of each
seed or split, is reported once (merge_shared).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, replace
from typing import Sequence

from unlearning.report.collect import Job

UNLEARNED = "unlearned"
# The metrics whose better direction is clear (True: higher is better); the best unlearned mean of each is
# marked in the tables.
HIGHER_IS_BETTER = {
    "forget_quality": True,
    "model_utility": True,
    "forget_prob": False,
    "forget_rouge": False,
    "retain_prob": True,
    "retain_rouge": True,
    "retain_truth_ratio": True,
    "real_authors_prob": True,
    "real_authors_rouge": True,
    "world_facts_prob": True,
    "world_facts_rouge": True,
}


@dataclass(frozen=True)
class Statistic:
    mean: float
    std: float | None  # None for a single job
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Statistic:
        return cls(statistics.mean(values), statistics.stdev(values) if len(values) > 1 else None, len(values))


@dataclass
class SummaryRow:
    group: str  # "" for a reference model that is the same in every group
    model: str
    n: int  # jobs
    metrics: dict[str, Statistic]

    @property
    def name(self) -> str:
        """How a figure labels the row: the group for an unlearned model, else the model (and its group)."""
        if self.model == UNLEARNED:
            return self.group
        return f"{self.model} ({self.group})" if self.group else self.model


def summarize(jobs: Sequence[Job]) -> list[SummaryRow]:
    """One row per group and model, reference models first, groups in label order."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        if job.failure is None:
            groups.setdefault(job.group, []).append(job)
    models = list(dict.fromkeys(model for members in groups.values() for job in members for model in job.models))
    models.sort(key=lambda model: model == UNLEARNED)
    rows: list[SummaryRow] = []
    for model in models:
        per_group = [group_row(group, model, [job for job in members if model in job.models])
                     for group, members in groups.items() if any(model in job.models for job in members)]
        rows.extend(per_group if model == UNLEARNED else merge_shared(per_group, len(groups)))
    return rows


def merge_shared(rows: Sequence[SummaryRow], n_groups: int) -> list[SummaryRow]:
    """A reference model's rows with the same numbers, reported once: under an empty group when every
    group shares them, else under the override items those groups have in common (`data.split=forget01`
    for the target and retain model every method of that split shares)."""
    clusters: list[list[SummaryRow]] = []
    for row in rows:
        cluster = next((c for c in clusters if c[0].metrics == row.metrics), None)
        if cluster is None:
            clusters.append([row])
        else:
            cluster.append(row)
    return [replace(cluster[0], group="" if len(cluster) == n_groups else common_items([r.group for r in cluster]))
            for cluster in clusters]


def common_items(groups: Sequence[str]) -> str:
    """The override items (`key=value`, comma-separated in a group's label) that every group has."""
    first, *others = [group.split(",") for group in groups]
    return ",".join(item for item in first if all(item in items for items in others))


def group_row(group: str, model: str, jobs: Sequence[Job]) -> SummaryRow:
    names = dict.fromkeys(name for job in jobs for name in job.models[model])
    metrics = {name: Statistic.of([job.models[model][name] for job in jobs if name in job.models[model]])
               for name in names}
    return SummaryRow(group, model, len(jobs), metrics)


def best_means(rows: Sequence[SummaryRow], columns: Sequence[str]) -> dict[str, float]:
    """For each column with a known direction, the best mean of the unlearned rows, when there are
    several to compare."""
    best = {}
    for column in columns:
        means = [row.metrics[column].mean for row in rows if row.model == UNLEARNED and column in row.metrics]
        if column in HIGHER_IS_BETTER and len(means) > 1:
            best[column] = max(means) if HIGHER_IS_BETTER[column] else min(means)
    return best


def spread_across(rows: Sequence[SummaryRow], key: str) -> tuple[list[str], dict[tuple[str, str], dict[str, SummaryRow]]]:
    """The summary with one override (`data.split`) spread across the columns, as open-unlearning lays
    out its TOFU table: the values of `key` in order, and for each (the group without `key`, model) its
    row per value. A row without `key` (a reference model every group shares) stands under every value;
    override items every unlearned row has (`experiment=tofu`) leave the labels."""
    def split(row: SummaryRow) -> tuple[str | None, list[str]]:
        items = row.group.split(",") if row.group else []
        value = next((item.partition("=")[2] for item in items if item.startswith(f"{key}=")), None)
        return value, [item for item in items if not item.startswith(f"{key}=")]

    values = list(dict.fromkeys(value for value, _ in map(split, rows) if value is not None))
    shared = common_items([",".join(split(row)[1]) for row in rows if row.model == UNLEARNED] or [""]).split(",")
    table: dict[tuple[str, str], dict[str, SummaryRow]] = {}
    for row in rows:
        value, rest = split(row)
        label = ",".join(item for item in rest if item not in shared)
        for column_value in ([value] if value is not None else values):
            table.setdefault((label, row.model), {})[column_value] = row
    return values, table
