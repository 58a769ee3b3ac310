"""Console entry points. Hydra parses the command line; everything else happens in plain functions.

Every console script (`unlearn`, `unlearn-eval`, `unlearn-report`, `unlearn-whp-terms`, `unlearn-plan`)
runs under `console_script`: bad input and signals end it with one `error: ...` line and exit status 1.
The Hydra commands first check the command line itself (`command_line.py`: secrets, `..` in a config
group, the run folder's lock), because Hydra writes `.hydra/` into the run folder before the task runs.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Callable

import hydra
from omegaconf import DictConfig

from unlearning.command_line import (check_command_line, hydra_errors_in_one_line, lock_run_folder, redact_secrets,
                                     without_secrets)
from unlearning.config import CONFIG_DIR
from unlearning.schema import LARGEST_INT
from unlearning.errors import ConfigError, UnlearningError, quote
from unlearning.interrupts import SweepInterrupted, exit_if_lightning_stopped, signals_interrupt
from unlearning.requeue import requeue, requeue_on_signal


def error_line(error: BaseException) -> str:
    """The one line a refusal prints: the message's lines joined, secrets of the environment masked."""
    return "error: " + without_secrets(" ".join(str(error).split()) or type(error).__name__)


def ending_line(error: BaseException) -> str:
    """The line a run ends with; a run the SLURM requeue signal ended also requeues its job here."""
    return error_line(error) + requeue(getattr(error, "signal_name", None))


def console_script(main: Callable) -> Callable:
    """A console script's entry point: SIGTERM/SIGINT and bad input end it with one line and status 1;
    under SLURM, the requeue signal also requeues the job (unlearning/requeue.py)."""

    @functools.wraps(main)
    def wrapped(*args, **kwargs):
        try:
            with signals_interrupt(), requeue_on_signal():
                return main(*args, **kwargs)
        except (UnlearningError, SweepInterrupted) as error:
            sys.exit(ending_line(error))
        except SystemExit as error:
            exit_if_lightning_stopped(error)
            raise

    return wrapped


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one `error:` line (argparse prints the usage, then the error)."""

    def error(self, message: str):
        raise ConfigError(f"{self.prog}: {message}")


def positive_int(text: str) -> int:
    """An argparse type: an integer >= 1 (counts, sizes), also refusing values past int64."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{quote(text)} is not an integer") from None
    if not 1 <= value <= LARGEST_INT:
        raise argparse.ArgumentTypeError(f"{quote(text)} is out of range; valid: 1 to {LARGEST_INT}")
    return value


def _report_errors(function, cfg: DictConfig):
    """Bad input ends the run with its one-line message and exit status 1, not a traceback; in a sweep,
    a failed job is recorded in its folder and the sweep goes on (unlearning.sweeps)."""
    from unlearning.sweeps import in_multirun, run_sweep_job

    redact_secrets()
    if in_multirun():
        return run_sweep_job(function, cfg)
    try:
        return function(cfg)
    except UnlearningError as error:
        sys.exit(ending_line(error))


def hydra_command(task: Callable) -> Callable:
    """A Hydra console script: the command line checked and the run folder locked before Hydra starts."""

    @console_script
    @functools.wraps(task)
    def command():
        check_command_line(sys.argv[1:], CONFIG_DIR)
        with lock_run_folder(sys.argv[1:]), hydra_errors_in_one_line(sys.argv[1:]):
            return task()

    return command


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="config")
def _unlearn(cfg: DictConfig) -> float | list[float] | None:
    from unlearning.pipeline import run

    return _report_errors(run, cfg)


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
def _unlearn_eval(cfg: DictConfig) -> dict:
    from unlearning.pipeline import run_evaluation

    return _report_errors(run_evaluation, cfg)


unlearn = hydra_command(_unlearn)
unlearn_eval = hydra_command(_unlearn_eval)

if __name__ == "__main__":  # `python -m unlearning.cli` runs `unlearn` from a checkout
    unlearn()
