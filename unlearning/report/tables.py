"""The report's tables. One grid of cells per table, rendered in a Style: Markdown (report.md, the
console), LaTeX (report.tex: booktabs, escaped labels, exponents as powers of ten, for a paper) and
HTML (report.html); and records with full-precision values for the CSV files, report.json and W&B.

Numbers show 3 significant digits, standard deviations 2; the best unlearned mean of a column whose
direction is known (summary.HIGHER_IS_BETTER) is in bold.
"""

from __future__ import annotations

import csv
import html
import io
from dataclasses import dataclass
from typing import Callable, Sequence

from unlearning.report.collect import Job
from unlearning.report.summary import UNLEARNED, Statistic, SummaryRow, best_means, spread_across

MISSING = "-"
FAILED = "failed"
JOB_FIELDS = ("job", "group", "seed", "model", "status")

Grid = list[list[str]]  # the header, then one list of cells per row


def plain_number(value: float, digits: int) -> str:
    return f"{value:.{digits}g}"


def latex_number(value: float, digits: int) -> str:
    r"""`2.23e-17` as `2.23\times10^{-17}` (math mode)."""
    mantissa, exponent_marker, exponent = plain_number(value, digits).partition("e")
    return rf"{mantissa}\times10^{{{int(exponent)}}}" if exponent_marker else mantissa


LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                 "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    return "".join(LATEX_SPECIAL.get(character, character) for character in text)


@dataclass(frozen=True)
class Style:
    escape: Callable[[str], str]  # a label
    number: Callable[[float, int], str]  # a value at that many significant digits
    plus_minus: str
    bold: Callable[[str], str]
    value: Callable[[str], str]  # wraps a number cell


MARKDOWN = Style(escape=str, number=plain_number, plus_minus=" ± ", bold="**{}**".format, value=str)
HTML = Style(escape=html.escape, number=plain_number, plus_minus=" ± ", bold="<b>{}</b>".format, value=str)
LATEX = Style(escape=latex_escape, number=latex_number, plus_minus=r" \pm ", bold=r"\mathbf{{{}}}".format,
              value="${}$".format)


def statistic_cell(statistic: Statistic, style: Style, bold: bool) -> str:
    text = style.number(statistic.mean, 3)
    if statistic.std is not None:
        text += style.plus_minus + style.number(statistic.std, 2)
    return style.value(style.bold(text) if bold else text)


def summary_grid(rows: Sequence[SummaryRow], columns: Sequence[str], style: Style) -> Grid:
    best = best_means(rows, columns)
    grid = [[style.escape(name) for name in ("group", "model", "n", *columns)]]
    for row in rows:
        cells = [style.escape(row.group), style.escape(row.model), str(row.n)]
        for column in columns:
            statistic = row.metrics.get(column)
            bold = row.model == UNLEARNED and statistic is not None and best.get(column) == statistic.mean
            cells.append(MISSING if statistic is None else statistic_cell(statistic, style, bold))
        grid.append(cells)
    return grid


def across_grid(rows: Sequence[SummaryRow], columns: Sequence[str], key: str, style: Style) -> Grid:
    """The summary spread across the values of one override (summary.spread_across): a column per value
    and metric, `forget01 forget_quality`, ...; the best unlearned mean of each such column in bold."""
    values, table = spread_across(rows, key)
    best = {value: best_means([by_value[value] for by_value in table.values() if value in by_value], columns)
            for value in values}
    grid = [[style.escape(name) for name in ("group", "model", *(f"{v} {c}" for v in values for c in columns))]]
    for (label, model), by_value in table.items():
        cells = [style.escape(label), style.escape(model)]
        for value in values:
            row = by_value.get(value)
            for column in columns:
                statistic = row.metrics.get(column) if row is not None else None
                bold = model == UNLEARNED and statistic is not None and best[value].get(column) == statistic.mean
                cells.append(MISSING if statistic is None else statistic_cell(statistic, style, bold))
        grid.append(cells)
    return grid


def summary_caption(rows: Sequence[SummaryRow], columns: Sequence[str], style: Style) -> str:
    sentences = []
    if any(row.n > 1 for row in rows):
        sentences.append(f"Mean {style.value(style.plus_minus.strip())} sample standard deviation over the "
                         "seeds of each group (n: its jobs).")
    if best_means(rows, columns):
        sentences.append("The best unlearned value of each column is in bold.")
    return " ".join(sentences)


def jobs_grid(jobs: Sequence[Job], columns: Sequence[str], models: Sequence[str] | None, style: Style) -> Grid:
    """One row per job and model; a failed job is one row whose model cell says so."""
    grid = [[style.escape(name) for name in ("job", "model", *columns)]]
    for job in jobs:
        if job.failure is not None:
            grid.append([style.escape(job.label), FAILED, *(MISSING for _ in columns)])
        for model, metrics in job.models.items():
            if models is None or model in models:
                grid.append([style.escape(job.label), style.escape(model),
                             *(style.value(style.number(metrics[c], 3)) if c in metrics else MISSING for c in columns)])
    return grid


def markdown_table(grid: Grid) -> str:
    header, *body = grid
    return "\n".join([markdown_row(header), "|" + "---|" * len(header), *map(markdown_row, body)])


def markdown_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def html_table(grid: Grid) -> str:
    header, *body = grid
    head = "".join(f"<th>{cell}</th>" for cell in header)
    rows = "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in cells) + "</tr>" for cells in body)
    return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{rows}\n</tbody>\n</table>"


def latex_table(rows: Sequence[SummaryRow], columns: Sequence[str], across: str | None = None) -> str:
    """A booktabs table environment; a rule parts the reference models from the unlearned ones. `across`:
    the layout of across_grid."""
    header, *body = summary_grid(rows, columns, LATEX) if across is None else across_grid(rows, columns, across, LATEX)
    references = sum(cells[1] != UNLEARNED for cells in body)  # summarize() puts them first
    lines = [r"% needs \usepackage{booktabs}", r"\begin{table}[t]", r"\centering",
             rf"\caption{{{summary_caption(rows, columns, LATEX)}}}", r"\label{tab:unlearning}",
             rf"\begin{{tabular}}{{ll{'r' * (len(header) - 2)}}}", r"\toprule", latex_row(header), r"\midrule"]
    for index, cells in enumerate(body):
        if index == references and 0 < references < len(body):
            lines.append(r"\midrule")
        lines.append(latex_row(cells))
    return "\n".join([*lines, r"\bottomrule", r"\end{tabular}", r"\end{table}"])


def latex_row(cells: Sequence[str]) -> str:
    return " & ".join(cells) + r" \\"


def job_fields(columns: Sequence[str]) -> list[str]:
    return [*JOB_FIELDS, *columns, "error"]


def job_records(jobs: Sequence[Job], columns: Sequence[str], models: Sequence[str] | None) -> list[dict]:
    """The rows of jobs_grid with full-precision values, the group, seed, status and error."""
    records = []
    for job in jobs:
        identity = {"job": job.label, "group": job.group, "seed": job.seed}
        if job.failure is not None:
            records.append({**identity, "model": "", "status": FAILED, "error": job.failure})
        for model, metrics in job.models.items():
            if models is None or model in models:
                records.append({**identity, "model": model, "status": "ok", **{c: metrics.get(c) for c in columns}})
    return records


def summary_fields(columns: Sequence[str]) -> list[str]:
    return ["group", "model", "n", *(f"{column}_{part}" for column in columns for part in ("mean", "std"))]


def summary_records(rows: Sequence[SummaryRow], columns: Sequence[str]) -> list[dict]:
    records = []
    for row in rows:
        record = {"group": row.group, "model": row.model, "n": row.n}
        for column, statistic in row.metrics.items():
            if column in columns:
                record.update({f"{column}_mean": statistic.mean, f"{column}_std": statistic.std})
        records.append(record)
    return records


def csv_text(fields: Sequence[str], records: Sequence[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(records)
    return buffer.getvalue()
