"""The report's figures, drawn with matplotlib's Agg backend on Figure objects (no pyplot, no display,
no global state). A figure whose data no job has raises MissingData; the report says why it is absent.
"""

from __future__ import annotations

import io
import math
import statistics
from typing import Mapping, Sequence

import matplotlib
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from unlearning.report.collect import Job
from unlearning.report.summary import UNLEARNED

LOG_SCALE = {"forget_quality"}  # KS p-values span tens of orders of magnitude
UTILITY, FORGET_QUALITY = "model_utility", "forget_quality"
REFERENCE_MARKERS = {"target": ("*", "black"), "retain": ("s", "dimgray")}  # others: a brown diamond
OTHER_REFERENCE_MARKER = ("D", "tab:brown")
LM_EVAL_PREFIX = "lm_eval_"
LM_EVAL_ACCURACIES = ("_acc", "_acc_norm")
PANELS_PER_ROW = 3
SEED_MARKERS = ("o", "^", "s", "P", "X", "v", "D")


class MissingData(Exception):
    """The data a figure needs is in no job; the message says what is missing."""


def png_bytes(figure: Figure) -> bytes:
    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def method_colors(jobs: Sequence[Job]) -> dict[str, tuple]:
    """One colour per method, from the methods' names in order: the same in every figure of a report."""
    palette = matplotlib.colormaps["tab10"].colors
    return {method: palette[i % len(palette)] for i, method in enumerate(sorted({job.method for job in jobs}))}


def seed_markers(jobs: Sequence[Job]) -> dict:
    return {seed: SEED_MARKERS[i % len(SEED_MARKERS)] for i, seed in enumerate(sorted({job.seed for job in jobs},
                                                                                      key=str))}


def by_split(jobs: Sequence[Job]) -> dict[str | None, list[Job]]:
    """The jobs of each forget split (data.split), splits in name order."""
    splits = sorted({job.split for job in jobs}, key=str)
    return {split: [job for job in jobs if job.split == split] for split in splits}


def method_legend(figure: Figure, colors: Mapping[str, tuple], extra: Sequence[tuple[Line2D, str]] = ()) -> None:
    """The figure's legend right of its panels: one entry per method, then `extra` (seeds, references)."""
    handles = [Line2D([], [], color=color, marker="o", linestyle="-") for color in colors.values()]
    figure.legend([*handles, *(h for h, _ in extra)], [*colors, *(label for _, label in extra)],
                  loc="outside right upper", fontsize="small")


def present(colors: Mapping[str, tuple], jobs: Sequence[Job]) -> dict[str, tuple]:
    """The colours of the methods these jobs ran."""
    methods = {job.method for job in jobs}
    return {method: color for method, color in colors.items() if method in methods}


def forget_quality_vs_utility(jobs: Sequence[Job], colors: Mapping[str, tuple]) -> Figure:
    """One panel per forget split (shared axes), one point per job's unlearned model: its method's colour,
    its seed's marker; the split's target and retain models as labelled reference markers."""
    scored = [job for job in jobs if {UTILITY, FORGET_QUALITY} <= set(job.models.get(UNLEARNED, {}))]
    if not scored:
        raise MissingData(f"no unlearned model has both {FORGET_QUALITY} and {UTILITY}")
    colors, markers, splits = present(colors, scored), seed_markers(scored), by_split(scored)
    figure = Figure(figsize=(3.6 * len(splits) + 2.2, 4), layout="constrained")
    panels = figure.subplots(1, len(splits), sharex=True, sharey=True, squeeze=False)[0]
    for panel, (split, split_jobs) in zip(panels, splits.items()):
        for job in split_jobs:
            metrics = job.models[UNLEARNED]
            panel.scatter(metrics[UTILITY], metrics[FORGET_QUALITY], color=colors[job.method],
                          marker=markers[job.seed], zorder=3)
        for model in sorted({m for job in split_jobs for m in job.models if m != UNLEARNED}):
            points = sorted({(job.models[model][UTILITY], job.models[model][FORGET_QUALITY]) for job in split_jobs
                             if {UTILITY, FORGET_QUALITY} <= set(job.models.get(model, {}))})
            if points:
                marker, color = REFERENCE_MARKERS.get(model, OTHER_REFERENCE_MARKER)
                panel.scatter(*zip(*points), marker=marker, color=color, s=120, zorder=2, alpha=0.8)
                panel.annotate(model, points[-1], textcoords="offset points", xytext=(0, -14), ha="center",
                               fontsize="x-small", color=color)
        panel.set_title(f"split {split}" if split else "all jobs", fontsize="medium")
        panel.set_xlabel(f"model utility ({UTILITY})")
        panel.set_yscale("log")
        panel.margins(0.08, 0.12)  # room for the reference labels under their markers
        panel.grid(True, which="major", alpha=0.3)
    panels[0].set_ylabel(f"forget quality ({FORGET_QUALITY}, log)")
    seeds = [(Line2D([], [], color="gray", marker=marker, linestyle=""), f"seed {seed}")
             for seed, marker in markers.items()] if len(markers) > 1 else []
    references = [(Line2D([], [], color=color, marker=marker, linestyle="", markersize=9), f"{model} model")
                  for model, (marker, color) in REFERENCE_MARKERS.items()]
    method_legend(figure, colors, [*seeds, *references])
    return figure


def curves(jobs: Sequence[Job], kind: str, preferred: Sequence[str], missing: str,
           colors: Mapping[str, tuple]) -> Figure:
    """One panel per term, one line per job coloured by its method: the `preferred` terms the jobs logged
    (`kind`: "eval_curves" or "loss_curves"), or every logged one when none of those was."""
    logged_jobs = [job for job in jobs if getattr(job, kind)]
    if not logged_jobs:
        raise MissingData(missing)
    logged = sorted({metric for job in logged_jobs for metric in getattr(job, kind)})
    metrics = [metric for metric in preferred if metric in logged] or logged
    columns = min(PANELS_PER_ROW, len(metrics))
    rows = math.ceil(len(metrics) / columns)
    colors = present(colors, logged_jobs)
    figure = Figure(figsize=(3.8 * columns + 1.8, 3.2 * rows), layout="constrained")
    panels = figure.subplots(rows, columns, squeeze=False).flat
    for panel, metric in zip(panels, metrics):
        for job in logged_jobs:
            if metric in getattr(job, kind):
                steps, values = zip(*getattr(job, kind)[metric])
                panel.plot(steps, values, color=colors[job.method], alpha=0.8, linewidth=1.2)
        panel.set_title(metric, fontsize="medium")
        panel.set_xlabel("step")
        if metric in LOG_SCALE:
            panel.set_yscale("log")
        panel.grid(True, alpha=0.3)
    for panel in panels[len(metrics):]:
        panel.set_visible(False)
    method_legend(figure, colors)
    return figure


def lm_eval_bars(jobs: Sequence[Job], colors: Mapping[str, tuple]) -> Figure:
    """Per forget split, every lm-eval accuracy as a group of bars: the target model, then each method's
    unlearned model; the height is the mean over seeds, the error bar their standard deviation."""
    scored = [job for job in jobs if any(accuracy(name) for name in job.models.get(UNLEARNED, {}))]
    if not scored:
        raise MissingData("no lm-eval accuracy in the results (the lm_eval metric group was off)")
    colors, splits = {"target": REFERENCE_MARKERS["target"][1], **present(colors, scored)}, by_split(scored)
    metrics = sorted({name for job in scored for name in job.models[UNLEARNED] if accuracy(name)})
    figure = Figure(figsize=(max(6.0, 0.9 * len(metrics) * len(splits)) + 1.8, 3.6 * len(splits)),
                    layout="constrained")
    panels = figure.subplots(len(splits), 1, sharey=True, squeeze=False)[:, 0]
    width = 0.8 / len(colors)
    for panel, (split, split_jobs) in zip(panels, splits.items()):
        for index, bar in enumerate(colors):
            chosen = [job.models.get("target", {}) if bar == "target" else job.models[UNLEARNED]
                      for job in split_jobs if bar == "target" or job.method == bar]
            values = [[model[name] for model in chosen if name in model] for name in metrics]
            positions = [m - 0.4 + (index + 0.5) * width for m in range(len(metrics))]
            panel.bar(positions, [statistics.mean(v) if v else math.nan for v in values], width,
                      yerr=[statistics.stdev(v) if len(v) > 1 else 0.0 for v in values], color=colors[bar],
                      capsize=2)
        panel.set_xticks(range(len(metrics)), [name.removeprefix(LM_EVAL_PREFIX) for name in metrics],
                         rotation=30, ha="right", fontsize="x-small")
        panel.set_ylim(0, 1)
        panel.set_ylabel("accuracy")
        panel.set_title(f"split {split}" if split else "all jobs", fontsize="medium")
        panel.grid(True, axis="y", alpha=0.3)
    method_legend(figure, colors)
    return figure


def accuracy(name: str) -> bool:
    return name.startswith(LM_EVAL_PREFIX) and name.endswith(LM_EVAL_ACCURACIES)
