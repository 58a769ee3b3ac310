"""report.html: one self-contained page (its figures inline as base64 PNG, each also linked to its file
in report_figures/) that can be mailed or archived without the folder beside it."""

from __future__ import annotations

import base64
import html
from typing import Sequence

from unlearning.report.collect import Job
from unlearning.report.figures import ReportFigure

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 90%; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: right; }
th:nth-child(-n+2), td:nth-child(-n+2) { text-align: left; }
figure { margin: 1.5em 0; }
img { max-width: 100%; }
.note { color: #8a5a00; }
.wide { overflow-x: auto; }  /* a table of many columns scrolls by itself, not the page */
"""


def figure_html(figure: ReportFigure) -> str:
    title = html.escape(figure.title)
    if figure.png is None:
        return f'<p class="note">Not drawn: {title}: {html.escape(figure.reason)}.</p>'
    data = base64.b64encode(figure.png).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{title}">\n'
            f'<figcaption>{title} (<a href="{figure.file}">{figure.file}</a>)</figcaption></figure>')


def html_page(name: str, summary_table: str, caption: str, jobs_table: str, failed: Sequence[Job],
              figures: Sequence[ReportFigure], files: Sequence[str]) -> str:
    title = html.escape(f"unlearn-report: {name}")
    links = ", ".join(f'<a href="{file}">{file}</a>' for file in files)
    sections = [f"<h1>{title}</h1>", f"<p>Also written: {links}.</p>",
                "<h2>Summary</h2>", f"<p>{html.escape(caption)}</p>" if caption else "", f'<div class="wide">{summary_table}</div>',
                "<h2>Figures</h2>", *map(figure_html, figures),
                "<h2>Jobs</h2>", f'<div class="wide">{jobs_table}</div>']
    if failed:
        items = "".join(f"<li>{html.escape(job.label)}: {html.escape(job.failure)}</li>" for job in failed)
        sections += ["<h2>Failed jobs</h2>", f"<ul>{items}</ul>"]
    body = "\n".join(section for section in sections if section)
    return (f'<!doctype html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{title}</title>\n'
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")
