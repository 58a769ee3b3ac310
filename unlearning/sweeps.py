"""Sweeps: what a job returns to the sweeper, and a failed job recorded instead of ending the sweep.

A failed job returns None, not NaN: the Optuna sweeper (hydra-optuna-sweeper 1.3 with optuna 2.10) tells
a NaN as a complete trial, optuna rejects it, and the sweeper's retry as a failed trial passes the NaN
again and raises, ending the sweep with the trial left RUNNING. A value that is not a float instead
makes the sweeper record the trial as FAIL (left out of the best trial and the sampler's model) and go
on; Hydra's basic sweeper ignores what jobs return.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from unlearning.dashboards import finish_run
from unlearning.errors import ConfigError
from unlearning.results import write_json_atomic

log = logging.getLogger(__name__)

FAILED_FILE = "FAILED.json"
SQLITE_PREFIX = "sqlite:///"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def sweep_objective(metrics: Mapping[str, float], names: str | Sequence[str]) -> float | list[float]:
    """`objective_metric` read from one model's metrics: a float, or for a list of names (Optuna's
    multi-objective `direction: [maximize, maximize]`) the floats in the same order."""
    wanted = [names] if isinstance(names, str) else list(names)
    unknown = [name for name in wanted if name not in metrics]
    if unknown:
        raise ConfigError(f"objective_metric={unknown[0]!r} is not a result; valid: {', '.join(sorted(metrics))}")
    values = [float(metrics[name]) for name in wanted]
    return values[0] if isinstance(names, str) else values


def run_sweep_job(function: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """One job of a sweep: any exception is written to `<job folder>/FAILED.json` (error type, first line
    of the message), logged with its traceback, and returned as None so the other jobs still run."""
    try:
        return function(cfg)
    except Exception as error:
        job = HydraConfig.get()
        message = next(iter(str(error).strip().splitlines()), "")
        write_json_atomic(Path(job.runtime.output_dir) / FAILED_FILE, {
            "error": type(error).__name__, "message": message, "overrides": list(job.overrides.task)})
        log.exception("job %s failed (%s: %s); the sweep goes on", job.job.override_dirname, type(error).__name__, message)
        finish_run(exit_code=1)
        return None


class SqliteStorageFolder(Callback):
    """Creates the folder of an sqlite sweeper storage before the sweeper opens it: sqlite does not, and
    the Optuna sweeper opens its study before any job has created the sweep folder."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        storage = config.hydra.sweeper.get("storage")
        if isinstance(storage, str) and storage.startswith(SQLITE_PREFIX):
            Path(storage[len(SQLITE_PREFIX):]).expanduser().parent.mkdir(parents=True, exist_ok=True)
