"""Sweeps: what a job returns to the sweeper (`objective_metric`, checked at start-up against what the
run will report), a failed job recorded instead of ending the sweep, and a finished job recorded so that
the same sweep launched again skips it.

A failed job returns None, not NaN: the Optuna sweeper (hydra-optuna-sweeper 1.3 with optuna 2.10) tells
a NaN as a complete trial, optuna rejects it, and the sweeper's retry as a failed trial passes the NaN
again and raises, ending the sweep with the trial left RUNNING. A value that is not a float instead
makes the sweeper record the trial as FAIL (left out of the best trial and the sampler's model) and go
on; Hydra's basic sweeper ignores what jobs return.
"""

from __future__ import annotations

import importlib
import logging
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig

from unlearning.config import build, config_fingerprint
from unlearning.dashboards import finish_run
from unlearning.errors import ConfigError, Interrupted, quote
from unlearning.interrupts import SweepInterrupted, interrupted_message
from unlearning.results import FAILED_FILE, FINISHED_FILE, read_json_or_none, write_json_atomic

log = logging.getLogger(__name__)

SQLITE_PREFIX = "sqlite:///"


def in_multirun() -> bool:
    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def objective_names(names: str | Sequence[str]) -> list[str]:
    """`objective_metric` as a list: one name, or several (Optuna's multi-objective `direction: [maximize,
    maximize]`)."""
    return [names] if isinstance(names, str) else list(names)


def check_objective(cfg: DictConfig) -> None:
    """Each name of `objective_metric` is one the run will report for the model it is read from: the
    protocol's module declares those (`reported_metrics`) from the metric groups the config enables.
    Checked before any training; a user's protocol that declares none is checked when results are read."""
    module, _, _ = str(cfg.protocol.get("_target_", "")).rpartition(".")
    declared = getattr(importlib.import_module(module), "reported_metrics", None) if module else None
    if declared is None:
        return
    reported = declared(cfg, {name: build(node) for name, node in cfg.eval.groups.items() if node})
    for name in objective_names(cfg.objective_metric):
        if not any(fnmatchcase(name, pattern) for pattern in reported):
            raise ConfigError(f"objective_metric={quote(name)} is not a metric this run reports (its protocol and "
                              f"the metric groups in eval.groups); valid: {', '.join(reported)}")


def sweep_objective(metrics: Mapping[str, float], names: str | Sequence[str]) -> float | list[float]:
    """`objective_metric` read from one model's metrics: a float, or for a list of names the floats in the
    same order."""
    wanted = objective_names(names)
    unknown = [name for name in wanted if name not in metrics]
    if unknown:
        raise ConfigError(f"objective_metric={quote(unknown[0])} is not a result; valid: {', '.join(sorted(metrics))}")
    values = [float(metrics[name]) for name in wanted]
    return values[0] if isinstance(names, str) else values


def run_sweep_job(function: Callable[[DictConfig], Any], cfg: DictConfig) -> Any:
    """One job of a sweep. A finished job writes what it returns and its config's fingerprint to
    `<job folder>/FINISHED.json`; the same sweep launched again (same `hydra.sweep.dir`) returns that value
    without running the job, and a job left unfinished runs again from what its folder holds (the pipeline
    resumes a sweep job's checkpoint or saved model). Any exception is written to `FAILED.json` (error
    type, first line of the message), logged with its traceback, and returned as None so the other jobs
    still run."""
    job = HydraConfig.get()
    folder = Path(job.runtime.output_dir)
    try:
        config = config_fingerprint(cfg)
        finished = folder / FINISHED_FILE
        stored = read_json_or_none(finished) if finished.exists() else {}
        if isinstance(stored, dict) and stored.get("config") == config and "objective" in stored:
            log.info("job %s finished in an earlier launch: not run again", job.job.override_dirname)
            return stored["objective"]
        (folder / FAILED_FILE).unlink(missing_ok=True)  # an earlier launch's failure
        objective = function(cfg)
        if rank_zero_only.rank == 0:  # each process of a multi-process job returns; rank 0's value is the result
            write_json_atomic(finished, {"objective": objective, "config": config})
        return objective
    except Interrupted as error:  # a signal ends the sweep, not just this job
        raise SweepInterrupted(interrupted_message(error.signal_name, job.job.override_dirname),
                               error.signal_name) from None
    except Exception as error:
        message = next(iter(str(error).strip().splitlines()), "")
        write_json_atomic(folder / FAILED_FILE, {
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


class GridSamplerStopsQuietly(Callback):
    """Lets a grid sweep whose last job failed end normally. Hydra's Optuna sweeper tells the study each
    result itself (ask-and-tell); after the last grid point Optuna's GridSampler calls `study.stop()`,
    which raises outside `study.optimize()` (optuna#5141). The sweeper forgives that for a completed trial
    but not for a failed one, so the sweep crashed after every job had run, without its
    optimization_results.yaml. Stopping is moot there (the sweeper's trial count is the grid's size), so
    the grid sampler's `after_trial` ignores exactly that error."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if "optuna" not in str(config.hydra.sweeper.get("_target_", "")):
            return
        from optuna.samplers import GridSampler
        if getattr(GridSampler.after_trial, "stops_quietly", False):
            return
        after_trial = GridSampler.after_trial

        def after_trial_outside_optimize(sampler, study, trial, state, values) -> None:
            try:
                after_trial(sampler, study, trial, state, values)
            except RuntimeError as error:
                if "Study.stop" not in str(error):
                    raise
        after_trial_outside_optimize.stops_quietly = True
        GridSampler.after_trial = after_trial_outside_optimize
