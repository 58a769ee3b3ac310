"""`unlearn-report`: a run or a sweep's results as tables (Markdown, LaTeX, CSV, JSON), figures and one
HTML page, optionally on W&B. cli.py is the command; collect.py reads the jobs, summary.py averages over
seeds, tables.py, figures.py / plots.py, page.py and wandb_log.py write the outputs."""

from unlearning.report.cli import main

__all__ = ["main"]
