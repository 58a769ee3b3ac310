"""Console entry points. Hydra parses the command line; everything else happens in plain functions."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from unlearning.config import CONFIG_DIR
from unlearning.errors import UnlearningError


def _report_errors(function, cfg: DictConfig):
    """Bad input ends the run with its one-line message and exit status 1, not a traceback; in a sweep,
    a failed job is recorded in its folder and the sweep goes on (unlearning.sweeps)."""
    from unlearning.sweeps import in_multirun, run_sweep_job

    if in_multirun():
        return run_sweep_job(function, cfg)
    try:
        return function(cfg)
    except UnlearningError as error:
        sys.exit(f"error: {error}")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def unlearn(cfg: DictConfig) -> float | list[float] | None:
    from unlearning.pipeline import run

    return _report_errors(run, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def unlearn_eval(cfg: DictConfig) -> dict:
    from unlearning.pipeline import run_evaluation

    return _report_errors(run_evaluation, cfg)


if __name__ == "__main__":  # `python -m unlearning.cli` runs `unlearn` from a checkout
    unlearn()
