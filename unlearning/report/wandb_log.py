"""The report on Weights & Biases: one run (job_type `report`) holding the tables as wandb.Table and the
figures as wandb.Image, under `report/<name>`.

On with `--wandb`, off with `--no-wandb`; by default on when a job's config used the W&B logger
(logger=wandb). The run takes that logger's project and entity, and its group when the config sets one;
otherwise the group is the folder as given on the command line, which is the group the sweep's own runs got
(unlearning/dashboards.py groups them by `hydra.sweep.dir`) when the report runs from the directory the
sweep ran in. WANDB_MODE=offline keeps the run in <output>/wandb/.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

from unlearning.dashboards import uses_wandb
from unlearning.report.collect import Job
from unlearning.report.figures import ReportFigure

DEFAULT_PROJECT = "unlearning"  # conf/logger/wandb.yaml's


def wandb_wanted(jobs: Sequence[Job], requested: bool | None) -> bool:
    return requested if requested is not None else any(uses_wandb(job.config) for job in jobs)


def log_report(root: Path, group: str, output: Path, jobs: Sequence[Job],
               tables: Mapping[str, tuple[Sequence[str], Sequence[dict]]], figures: Sequence[ReportFigure]) -> None:
    """`root`: the report's folder; `group`: the run's group unless the jobs' logger config sets one;
    `tables`: name -> (column names, records); the figures drawn are read from `output`."""
    import wandb

    logger = next((job.config.logger for job in jobs if uses_wandb(job.config)), {})
    run = wandb.init(project=logger.get("project") or DEFAULT_PROJECT, entity=logger.get("entity"),
                     group=logger.get("group") or group, job_type="report", name=f"report:{root.name}",
                     dir=str(output), config={"folder": str(root), "jobs": len(jobs)})
    logged = {f"report/{name}": wandb.Table(columns=list(fields), data=[[r.get(f) for f in fields] for r in records])
              for name, (fields, records) in tables.items()}
    logged.update({f"report/{figure.name}": wandb.Image(str(output / figure.file), caption=figure.title)
                   for figure in figures if figure.png is not None})
    run.log(logged)
    run.finish()
