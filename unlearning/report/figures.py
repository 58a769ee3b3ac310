"""Which figures the report draws, from which data, and why one is absent.

matplotlib is the optional `report` extra: without it the tables are still written and every figure is
reported as absent, with the install command as the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from unlearning.report.collect import Job

FIGURES_FOLDER = "report_figures"
LOSSES = ("loss", "forget_loss", "retain_loss")
TITLES = {
    "forget_quality_vs_utility": "Forget quality vs model utility per forget split: one point per job's "
                                 "unlearned model (colour: method, marker: seed), the target and retain models "
                                 "as references",
    "eval_curves": "Evaluation during training, one panel per metric, one line per job coloured by method",
    "loss_curves": "Training losses of the unlearning stage, one panel per term, coloured by method",
    "lm_eval": "lm-eval accuracies before (target) and after unlearning, per method: mean and standard "
               "deviation over seeds",
}


@dataclass(frozen=True)
class ReportFigure:
    name: str
    title: str
    png: bytes | None  # None: not drawn,
    reason: str = ""  # because of this

    @property
    def file(self) -> str:
        """Where the PNG goes, relative to the report's folder."""
        return f"{FIGURES_FOLDER}/{self.name}.png"


def draw_figures(jobs: Sequence[Job], columns: Sequence[str]) -> list[ReportFigure]:
    try:
        from unlearning.report import plots
    except ModuleNotFoundError as error:
        if (error.name or "").partition(".")[0] != "matplotlib":
            raise
        reason = "matplotlib is not installed (pip install -e '.[report]')"
        return [ReportFigure(name, title, None, reason) for name, title in TITLES.items()]
    colors = plots.method_colors(jobs)  # a method's colour in every figure
    drawings = {
        "forget_quality_vs_utility": lambda: plots.forget_quality_vs_utility(jobs, colors),
        "eval_curves": lambda: plots.curves(
            jobs, "eval_curves", columns,
            "no job evaluated during training (eval.during_training.every_n_steps=N)", colors),
        "loss_curves": lambda: plots.curves(
            jobs, "loss_curves", LOSSES,
            "no job has per-step losses in logs/unlearn/*/metrics.csv (logger=csv)", colors),
        "lm_eval": lambda: plots.lm_eval_bars(jobs, colors),
    }
    figures = []
    for name, draw in drawings.items():
        try:
            figures.append(ReportFigure(name, TITLES[name], plots.png_bytes(draw())))
        except plots.MissingData as missing:
            figures.append(ReportFigure(name, TITLES[name], None, str(missing)))
    return figures
