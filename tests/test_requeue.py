"""SLURM's requeue without SLURM: the job's variables set, a fake `scontrol` first on PATH recording how it
was called, SLURM's requeue signal (SIGUSR1) sent mid-unlearning; then the requeued job, the same command
with SLURM_RESTART_COUNT=1 as SLURM starts it, resumes from the checkpoint written at the signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.test_faults import FAST
from tests.test_hostile import start_unlearn, wait_for

JOB_ID = "4242"
EVERY = 10  # unlearning steps between periodic checkpoints (the stage trains 35: 5 epochs of 7 batches)


def logged_steps(metrics: Path) -> list[int]:
    rows = [line.split(",") for line in metrics.read_text().splitlines()]
    column = rows[0].index("step")
    return [int(float(row[column])) for row in rows[1:] if row[column]]


def slurm_job(tmp_path: Path) -> tuple[dict, Path]:
    """The environment of a one-task SLURM job whose `scontrol` writes its arguments to a file."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "scontrol_calls.txt"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    scontrol.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "SLURM_JOB_ID": JOB_ID,
           "SLURM_JOB_NAME": "unlearn", "SLURM_NTASKS": "1", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
           "SLURM_NODEID": "0", "SLURM_NODELIST": "localhost"}
    return env, calls


@pytest.mark.slow
def test_requeue_signal_checkpoints_requeues_and_the_requeued_job_resumes(tmp_path, monkeypatch):
    env, calls = slurm_job(tmp_path)
    run_dir = tmp_path / "run"
    checkpoint = run_dir / "checkpoints" / "last.ckpt"
    arguments = [f"hydra.run.dir={run_dir}", f"paths.cache_dir={tmp_path / 'cache'}", *FAST, "finetune.max_steps=3",
                 "trainer.max_steps=-1", f"checkpoint_every_n_steps={EVERY}"]
    for name, value in env.items():
        monkeypatch.setenv(name, value)  # start_unlearn's process inherits them
    process = start_unlearn(*arguments)
    try:
        wait_for(checkpoint.exists, process)  # the first periodic checkpoint: unlearning is training
        sent = time.time()
        process.send_signal(signal.SIGUSR1)
        _, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 1, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: interrupted by SIGUSR1 during stage unlearn;"), err[-2000:]
    assert last.endswith(f"SLURM job {JOB_ID} requeued: it resumes from them") and "Traceback" not in err
    assert calls.read_text() == f"requeue {JOB_ID}\n"
    # written at the signal, at the end of the step it came in
    assert checkpoint.stat().st_mtime >= sent
    step = torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"]
    assert step > EVERY
    assert not (run_dir / "results.json").exists()

    requeued = subprocess.run([sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", *arguments],
                              env={**env, "SLURM_RESTART_COUNT": "1"}, capture_output=True, text=True, timeout=900)
    assert requeued.returncode == 0, requeued.stderr[-3000:]
    assert f"stage unlearn: resuming from {checkpoint}" in requeued.stdout
    assert torch.load(checkpoint, map_location="cpu", weights_only=False)["global_step"] > step  # trained on
    # the requeued job's training logged its steps from the checkpoint's on, not from 0 (CSV logger)
    first, resumed = sorted((run_dir / "logs" / "unlearn").glob("version_*/metrics.csv"))
    assert min(logged_steps(first)) < EVERY and min(logged_steps(resumed)) >= step - 1
    assert json.loads((run_dir / "results.json").read_text())["models"]["unlearned"]
    assert calls.read_text() == f"requeue {JOB_ID}\n"  # the finished job requeued nothing
