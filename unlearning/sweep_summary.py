"""The sweep summary printed when a multirun ends: each job's unlearned model on the two headline
metrics (or that it failed), then the command that reports the sweep in full."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from unlearning.results import format_table

HEADLINE = ("forget_quality", "model_utility")


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from unlearning.report.collect import collect  # reads the finished jobs; not needed before

        folder = Path(config.hydra.sweep.dir)
        jobs = collect(folder) if folder.is_dir() else []
        if not jobs:
            return
        rows = {job.label: {**{key: job.models.get("unlearned", {}).get(key) for key in HEADLINE},
                            "status": "failed" if job.failure else "ok"} for job in jobs}
        print(f"\nsweep: {len(jobs)} jobs in {folder.resolve()}, {sum(job.failure is not None for job in jobs)} failed")
        print(format_table(rows, [*HEADLINE, "status"]).replace("model ", "job   ", 1))
        print(f"report: unlearn-report {folder}")
