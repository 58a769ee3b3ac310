"""`unlearn-report <run or sweep folder>`: every job's results below a folder, as tables and figures.

Every job's results.json is collected (a job that failed is listed as failed, not dropped); jobs whose
overrides differ only in `seed=` form a group, reported as mean ± standard deviation over its seeds. In
the folder (or --output) it writes:

  report.md           summary table (mean ± std, n), every job's rows, failed jobs; also printed
  report.tex          the summary as a booktabs LaTeX table (--across: spread across one override's
                      values), the best unlearned value per column in bold
  report.csv          one row per job and model (full precision; a failed job: status failed, its error)
  report_summary.csv  one row per group and model: n, <metric>_mean, <metric>_std
  report.json         jobs with every metric, the summary, failed jobs, which figures were drawn
  report.html         one self-contained page: the tables and every figure inline
  report_figures/     forget_quality_vs_utility.png, eval_curves.png, loss_curves.png, lm_eval.png
                      (a figure without data is left out; the page and report.json say why)

--wandb logs the tables and figures to a W&B run as well; by default that happens when the runs used
logger=wandb (--no-wandb: never).
"""

from __future__ import annotations

import argparse
import html
from dataclasses import asdict
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from unlearning.cli import OneLineParser, console_script
from unlearning.errors import ConfigError
from unlearning.report.collect import Job, collect
from unlearning.report.figures import ReportFigure, draw_figures
from unlearning.report.page import html_page
from unlearning.report.summary import SummaryRow, summarize
from unlearning.report.tables import (HTML, MARKDOWN, across_grid, csv_text, html_table, job_fields, job_records, jobs_grid,
                                      latex_table, markdown_table, summary_caption, summary_fields, summary_grid,
                                      summary_records)
from unlearning.report.wandb_log import log_report, wandb_wanted
from unlearning.results import write_bytes_atomic, write_json_atomic, write_text_atomic

DEFAULT_COLUMNS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "retain_prob")
LINKED_FILES = ("report.md", "report.tex", "report.csv", "report_summary.csv", "report.json")


def markdown_report(name: str, summary: Sequence[SummaryRow], jobs: Sequence[Job], columns: Sequence[str],
                    models: Sequence[str] | None, across: str | None) -> str:
    caption = summary_caption(summary, columns, MARKDOWN)
    parts = [f"# unlearn-report: {name}", "## Summary", *([caption] if caption else []),
             markdown_table(summary_grid(summary, columns, MARKDOWN))]
    if across:
        parts += [f"## Across {across}", markdown_table(across_grid(summary, columns, across, MARKDOWN))]
    parts += ["## Jobs", markdown_table(jobs_grid(jobs, columns, models, MARKDOWN))]
    failed = [job for job in jobs if job.failure is not None]
    if failed:
        parts += ["## Failed jobs", "\n".join(f"- {job.label}: {job.failure}" for job in failed)]
    return "\n\n".join(parts) + "\n"


def report_json(root: Path, jobs: Sequence[Job], summary: Sequence[SummaryRow],
                figures: Sequence[ReportFigure]) -> dict:
    return {
        "folder": str(root),
        "jobs": [{"job": job.label, "group": job.group, "seed": job.seed,
                  "status": "ok" if job.failure is None else "failed", "error": job.failure, "models": job.models}
                 for job in jobs],
        "summary": [{"group": row.group, "model": row.model, "n": row.n,
                     "metrics": {name: asdict(statistic) for name, statistic in row.metrics.items()}}
                    for row in summary],
        "failed": [job.label for job in jobs if job.failure is not None],
        "figures": {figure.name: figure.file for figure in figures if figure.png is not None},
        "not_drawn": {figure.name: figure.reason for figure in figures if figure.png is None},
    }


def write_figures(output: Path, figures: Sequence[ReportFigure]) -> None:
    """Each drawn figure's PNG; a figure not drawn this time loses the file an earlier report wrote."""
    for figure in figures:
        if figure.png is None:
            (output / figure.file).unlink(missing_ok=True)
        else:
            write_bytes_atomic(output / figure.file, figure.png)


def configured(jobs: Sequence[Job], key: str) -> Any:
    """What the jobs' configs say under `report.<key>` (an experiment sets it), else None."""
    for job in jobs:
        value = OmegaConf.select(job.config, f"report.{key}")
        if value:
            return OmegaConf.to_object(value) if OmegaConf.is_config(value) else value
    return None


def write_report(folder: Path, output: Path, columns: Sequence[str] | None, models: Sequence[str] | None,
                 wandb: bool | None, across: str | None = None) -> str:
    """Every output file of the jobs below `folder`, in `output`; returns the Markdown report.
    `columns` and `across` None: what the jobs' configs name (else TOFU's columns, no spread table)."""
    jobs = collect(folder)
    if not jobs:
        raise ConfigError(f"no run below {folder} (a run folder holds .hydra/config.yaml)")
    columns = columns or configured(jobs, "columns") or list(DEFAULT_COLUMNS)
    across = across or configured(jobs, "across")
    root, output = folder.resolve(), output.resolve()
    summary = summarize(jobs)
    shown = [row for row in summary if models is None or row.model in models]
    figures = draw_figures(jobs, columns)
    write_figures(output, figures)
    tables = {"summary": (summary_fields(columns), summary_records(shown, columns)),
              "jobs": (job_fields(columns), job_records(jobs, columns, models))}
    markdown = markdown_report(root.name, shown, jobs, columns, models, across)
    write_text_atomic(output / "report.md", markdown)
    write_text_atomic(output / "report.tex", latex_table(shown, columns, across) + "\n")
    write_text_atomic(output / "report.csv", csv_text(*tables["jobs"]))
    write_text_atomic(output / "report_summary.csv", csv_text(*tables["summary"]))
    write_json_atomic(output / "report.json", report_json(root, jobs, shown, figures))
    write_text_atomic(output / "report.html", html_page(
        root.name, html_table(summary_grid(shown, columns, HTML)) + (
            f"\n<h3>Across {html.escape(across)}</h3>\n" + html_table(across_grid(shown, columns, across, HTML))
            if across else ""), summary_caption(shown, columns, MARKDOWN),
        html_table(jobs_grid(jobs, columns, models, HTML)), [job for job in jobs if job.failure is not None],
        figures, LINKED_FILES))
    if wandb_wanted(jobs, wandb):
        log_report(root, str(folder), output, jobs, tables, figures)
    return markdown


@console_script
def main(argv: list[str] | None = None) -> None:
    parser = OneLineParser(prog="unlearn-report", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder or a multirun sweep folder (any folder above jobs)")
    parser.add_argument("--columns", nargs="+", default=None,
                        help="the metrics of the tables and CSV files (default: the runs' report.columns, which "
                             f"experiments set; else {' '.join(DEFAULT_COLUMNS)})")
    parser.add_argument("--across", default=None, metavar="KEY",
                        help="also a table with one sweep override (e.g. data.split) spread across the columns, "
                             "which report.tex then holds (default: the runs' report.across)")
    parser.add_argument("--models", nargs="+", default=None,
                        help="only these models in the tables and CSV files, e.g. unlearned (figures use all)")
    parser.add_argument("--output", type=Path, default=None, help="where to write the report (default: the folder)")
    parser.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                        help="log the tables and figures to a W&B run (default: when the runs used logger=wandb)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise ConfigError(f"{args.folder} is not a folder; valid: a run folder or a sweep folder")
    if args.output is not None and args.output.exists() and not args.output.is_dir():
        raise ConfigError(f"--output={args.output} is a file; valid: a folder to write the report to")
    markdown = write_report(args.folder, args.output or args.folder, args.columns, args.models, args.wandb,
                            args.across)
    print(markdown)
    print(f"report: {(args.output or args.folder).resolve() / 'report.html'}")
