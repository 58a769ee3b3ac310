"""SLURM's requeue of a preempted or time-limited job, the way Lightning's SLURMEnvironment does it (the
same signal, SIGUSR1, and the same `scontrol requeue <job id>`), in every stage.

Under SLURM (Lightning's `SLURMEnvironment.detect()`), SIGUSR1 (`#SBATCH --requeue --signal=USR1@90`,
`srun unlearn ...`) ends the unlearning stage at the end of the running step with its checkpoint
`<run>/checkpoints/last.ckpt` written at that step, and any other stage at once (finished stages are
kept); the console script then requeues the job and exits with status 1 and one line naming the signal.
The requeued job (SLURM sets SLURM_RESTART_COUNT) runs the same command on the same `hydra.run.dir` and
resumes as `resume=true` would.

Lightning's own requeue handler (SLURMEnvironment's auto_requeue) is not used, for three reasons: it
saves `hpc_ckpt_<n>.ckpt` into the trainer's default_root_dir, the working folder, outside the run folder
and with no record of the config it belongs to; a restarted job then resumes whichever `fit` comes first
from it, a finetuning stage included (Lightning resumes an hpc checkpoint whenever it detects SLURM); and
it acts only inside `fit`, so the signal during evaluation would end the process (SIGUSR1's default)
without a requeue. Lightning leaves SIGUSR1 alone when a handler is already set, as here.
"""

from __future__ import annotations

import os
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import lightning as L
from lightning.fabric.plugins.environments import SLURMEnvironment

from unlearning.errors import Interrupted
from unlearning.interrupts import interrupted_message

REQUEUE_SIGNAL = signal.SIGUSR1  # SLURMEnvironment's default requeue_signal
_state = {"training": False, "requested": False}  # inside the unlearning stage's fit; signal received


def under_slurm() -> bool:
    return SLURMEnvironment.detect()


def requeued_job() -> bool:
    """Whether this is a SLURM job started again by a requeue (it resumes its run folder)."""
    return under_slurm() and os.environ.get("SLURM_RESTART_COUNT", "0").strip() not in ("", "0")


def slurm_job_id() -> str:
    """The job to requeue: an array task as `<array job>_<task>`, as Lightning names it."""
    array_job = os.environ.get("SLURM_ARRAY_JOB_ID")
    return f"{array_job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if array_job else os.environ["SLURM_JOB_ID"]


def _on_requeue_signal(signum: int, _frame) -> None:
    if _state["training"]:  # the unlearning stage stops at the end of this step, its checkpoint written
        _state["requested"] = True
        return
    raise Interrupted(interrupted_message(REQUEUE_SIGNAL.name), REQUEUE_SIGNAL.name)


@contextmanager
def requeue_on_signal() -> Iterator[None]:
    """Under SLURM, SIGUSR1 interrupts the run for a requeue while inside; the previous handler comes back after."""
    if not under_slurm():
        yield
        return
    previous = signal.getsignal(REQUEUE_SIGNAL)
    signal.signal(REQUEUE_SIGNAL, _on_requeue_signal)
    try:
        yield
    finally:
        signal.signal(REQUEUE_SIGNAL, previous)
        _state.update(training=False, requested=False)


def requeue(signal_name: str | None) -> str:
    """After the requeue signal ended the run: `scontrol requeue <job id>` (by the first process of the
    launch); what the error line adds about it."""
    if signal_name != REQUEUE_SIGNAL.name or not under_slurm():
        return ""
    from unlearning.command_line import launched_rank

    job = slurm_job_id()
    if launched_rank() > 0:
        return f"; SLURM job {job} is requeued by rank 0"
    try:
        status = subprocess.call(["scontrol", "requeue", job])
    except OSError as error:
        return f"; requeueing SLURM job {job} failed (scontrol: {error.strerror or error})"
    if status != 0:
        return f"; requeueing SLURM job {job} failed (scontrol exit status {status})"
    return f"; SLURM job {job} requeued: it resumes from them"


class CheckpointBeforeRequeue(L.Callback):
    """In the unlearning stage under SLURM: the requeue signal ends training at the end of the running
    step, with `path` (the run's last.ckpt) written at that step. Every rank takes the same decision."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        _state.update(training=True, requested=False)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.strategy.reduce_boolean_decision(_state["requested"], all=False):
            _state["training"] = False
            trainer.save_checkpoint(self.path)
            raise Interrupted(interrupted_message(REQUEUE_SIGNAL.name), REQUEUE_SIGNAL.name)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        _state["training"] = False
        if _state["requested"]:  # it came after the last step: acted on now, as outside training
            os.kill(os.getpid(), REQUEUE_SIGNAL)
