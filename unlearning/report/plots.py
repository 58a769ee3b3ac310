"""The report's figures, drawn with matplotlib's Agg backend on Figure objects (no pyplot, no display,
no global state). A figure whose data no job has raises MissingData; the report says why it is absent.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from unlearning.report.collect import Curves, Job
from unlearning.report.summary import UNLEARNED, SummaryRow, common_items

LOG_SCALE = {"forget_quality"}  # KS p-values span tens of orders of magnitude
UTILITY, FORGET_QUALITY = "model_utility", "forget_quality"
REFERENCE_MARKERS = {"target": ("*", "black"), "retain": ("s", "dimgray")}  # others: a brown diamond
OTHER_REFERENCE_MARKER = ("D", "tab:brown")
LM_EVAL_PREFIX = "lm_eval_"
LM_EVAL_ACCURACIES = ("_acc", "_acc_norm")
PANELS_PER_ROW = 3
GROUP_MARKERS = ("o", "^", "v", "P", "X", "D")


class MissingData(Exception):
    """The data a figure needs is in no job; the message says what is missing."""


def png_bytes(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def short_labels(groups: Sequence[str]) -> dict[str, str]:
    """Each group's label without the override items every group shares (`experiment=tofu`)."""
    shared = set(common_items(groups).split(",")) if len(groups) > 1 else set()
    return {group: ",".join(item for item in group.split(",") if item not in shared) or group for group in groups}


def forget_quality_vs_utility(jobs: Sequence[Job]) -> Figure:
    """One point per job for its unlearned model (a colour per group: a group's seeds share it), and
    every other model (target, retain, ...) as a labelled reference point; forget quality on a log axis."""

    def point(metrics: Mapping[str, float]) -> tuple[float, float] | None:
        return (metrics[UTILITY], metrics[FORGET_QUALITY]) if UTILITY in metrics and FORGET_QUALITY in metrics else None

    unlearned: dict[str, list[tuple[float, float]]] = {}
    references: dict[str, set[tuple[float, float]]] = {}
    for job in jobs:
        for model, metrics in job.models.items():
            if (xy := point(metrics)) is not None:
                if model == UNLEARNED:
                    unlearned.setdefault(job.group, []).append(xy)
                else:
                    references.setdefault(model, set()).add(xy)
    if not unlearned:
        raise MissingData(f"no unlearned model has both {FORGET_QUALITY} and {UTILITY}")
    figure = Figure(figsize=(8, 5), layout="constrained")
    axes = figure.add_subplot()
    labels = short_labels(list(unlearned))
    colors = matplotlib.colormaps["tab20"].colors
    for i, (group, points) in enumerate(unlearned.items()):
        # 20 colours, then the next marker: no two groups look alike, however large the sweep
        axes.scatter(*zip(*points), label=labels[group], color=colors[i % len(colors)],
                     marker=GROUP_MARKERS[i // len(colors) % len(GROUP_MARKERS)], zorder=3)
    for model, points in references.items():
        marker, color = REFERENCE_MARKERS.get(model, OTHER_REFERENCE_MARKER)
        ordered = sorted(points)  # one per seed when the seeds' reference models differ
        axes.scatter(*zip(*ordered), marker=marker, color=color, s=160, label=f"{model} model", zorder=2)
        axes.annotate(model, ordered[-1], textcoords="offset points", xytext=(8, 6), fontsize="small")
    axes.set_yscale("log")
    axes.set_xlabel(f"model utility ({UTILITY})")
    axes.set_ylabel(f"forget quality ({FORGET_QUALITY}, log scale)")
    axes.grid(True, which="major", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    return figure


def curves(curves_by_job: Mapping[str, Curves], preferred: Sequence[str], missing: str) -> Figure:
    """One panel per metric, one line per job (a colour per job across panels): the `preferred` metrics
    the jobs logged, or every logged one when none of those was."""
    logged_jobs = {label: job_curves for label, job_curves in curves_by_job.items() if job_curves}
    if not logged_jobs:
        raise MissingData(missing)
    logged = sorted({metric for job_curves in logged_jobs.values() for metric in job_curves})
    metrics = [metric for metric in preferred if metric in logged] or logged
    columns = min(PANELS_PER_ROW, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    figure = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.4 * math.ceil(len(logged_jobs) / 3)), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).flat
    lines = {}
    for panel, metric in zip(panels, metrics):
        for index, (label, job_curves) in enumerate(logged_jobs.items()):
            if metric in job_curves:
                steps, values = zip(*job_curves[metric])
                (lines[label],) = panel.plot(steps, values, marker=".", color=f"C{index % 10}")
        panel.set_title(metric, fontsize="medium")
        panel.set_xlabel("step")
        if metric in LOG_SCALE:
            panel.set_yscale("log")
        panel.grid(True, alpha=0.3)
    for panel in panels[len(metrics):]:
        panel.set_visible(False)
    figure.legend(list(lines.values()), list(lines), loc="outside lower center", ncols=min(3, len(lines)),
                  fontsize="small")
    return figure


def lm_eval_bars(rows: Sequence[SummaryRow]) -> Figure:
    """Every lm-eval accuracy of the target model (before) and of each group's unlearned model (after);
    error bars: the standard deviation over seeds, or for a single job the harness's stderr."""
    shown = [row for row in rows if row.model in ("target", UNLEARNED)]
    metrics = sorted({name for row in shown for name in row.metrics
                      if name.startswith(LM_EVAL_PREFIX) and name.endswith(LM_EVAL_ACCURACIES)})
    if not metrics:
        raise MissingData("no lm-eval accuracy in the results (the lm_eval metric group was off)")
    height = 0.8 / len(shown)
    figure = Figure(figsize=(8, 1.2 + 0.25 * len(metrics) * len(shown)), layout="constrained")
    axes = figure.add_subplot()
    for index, row in enumerate(shown):
        positions = [m + (index + 0.5) * height - 0.4 for m in range(len(metrics))]
        values = [row.metrics[name].mean if name in row.metrics else math.nan for name in metrics]
        axes.barh(positions, values, height, xerr=[bar_error(row, name) for name in metrics], label=row.name,
                  capsize=2)
    axes.set_yticks(range(len(metrics)), [name.removeprefix(LM_EVAL_PREFIX) for name in metrics], fontsize="small")
    axes.invert_yaxis()
    axes.set_xlim(0, 1)
    axes.set_xlabel("accuracy")
    axes.grid(True, axis="x", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize="small")
    return figure


def bar_error(row: SummaryRow, name: str) -> float:
    statistic = row.metrics.get(name)
    if statistic is None:
        return math.nan
    if statistic.std is not None:
        return statistic.std
    stderr = row.metrics.get(f"{name}_stderr")
    return stderr.mean if stderr is not None else 0.0
