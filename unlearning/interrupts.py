"""SIGTERM and SIGINT end a run as an error, not as a success: the message names the signal and the
stage it stopped, and the exit status is 1.

SLURM sends SIGTERM on preemption and at a job's time limit; Lightning's own SIGTERM handling ends
`fit` with an exception that is a `SystemExit` of status 0, so a sweep counted a killed job as finished.
Here the signal raises `Interrupted` where the process is (inside `fit` Lightning composes this handler
with its own and tears the trainer down): work already finished stays (stage folders are renamed into
place only when complete, the unlearning checkpoint `last.ckpt` is the last one written), so
`resume=true` on the same run folder continues it. Under SLURM, the requeue signal (SIGUSR1) requeues
the job, which then resumes by itself (unlearning/requeue.py).
"""

from __future__ import annotations

import signal
import sys
from contextlib import contextmanager
from typing import Iterator

from lightning.pytorch.utilities.exceptions import SIGTERMException

from unlearning.errors import Interrupted

HANDLED = (signal.SIGTERM, signal.SIGINT)
_stage = ["start-up"]  # the stage running now, for the message


class SweepInterrupted(BaseException):
    """A signal ended a sweep's job. Not an Exception: Hydra's launchers keep a job's exception for later
    and the Optuna sweeper records it as a failed trial, both going on to the next job; this one passes
    through them and the sweep ends, with the one line of the console script."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


def enter_stage(name: str) -> None:
    """Record that stage `name` runs now (the pipeline's stages run one after another)."""
    _stage[0] = name


def current_stage() -> str:
    return _stage[0]


def interrupted_message(signal_name: str, job: str | None = None) -> str:
    if job is None:
        return (f"interrupted by {signal_name} during stage {current_stage()}; finished stages and the last "
                "checkpoint are kept: run again with resume=true on the same hydra.run.dir to continue")
    return (f"interrupted by {signal_name} during stage {current_stage()} of sweep job {job or '(no overrides)'}; "
            "finished jobs and the job's stages and last checkpoint are kept: launch the same sweep again (same "
            "hydra.sweep.dir) to continue")


def _raise_interrupted(signum: int, _frame) -> None:
    # a second signal (an impatient user, a scheduler's follow-up) ends the process at once
    for handled in HANDLED:
        signal.signal(handled, signal.SIG_DFL)
    name = signal.Signals(signum).name
    raise Interrupted(interrupted_message(name), name)


@contextmanager
def signals_interrupt() -> Iterator[None]:
    """SIGTERM and SIGINT raise Interrupted while inside (main thread only: signals are delivered there);
    the previous handlers come back after."""
    previous = {handled: signal.getsignal(handled) for handled in HANDLED}
    for handled in HANDLED:
        signal.signal(handled, _raise_interrupted)
    try:
        yield
    finally:
        for handled, handler in previous.items():
            signal.signal(handled, handler)


def exit_if_lightning_stopped(error: BaseException) -> None:
    """Lightning's SIGTERMException (a SystemExit of status 0) when its handler ran alone: status 1 and
    the one line, like Interrupted."""
    if isinstance(error, SIGTERMException):
        sys.exit(f"error: {interrupted_message('SIGTERM')}")
