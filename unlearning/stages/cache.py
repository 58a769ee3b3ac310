"""Where finished work is kept, so that no run loses it: the stage cache, the run folder's saved
models, and the unlearning checkpoint's resume policy.

Finished stages (base model, finetuned target, retain and reinforced models) are cached under
`paths.cache_dir` in folders named by a hash of everything that determines them (model config, the
records trained on, training settings, seed), so a sweep finetunes its target and retain model once. A
stage is built in a temporary folder and renamed into place when complete; a lock makes concurrent
sweep jobs wait for one build, not repeat it. The unlearned model is saved in the run folder the same
way, and a checkpoint records the config it was written under, so a resumed run never continues
another config's training.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import zipfile
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig

from unlearning.config import config_fingerprint, fingerprint
from unlearning.errors import ConfigError, OutputError
from unlearning.interrupts import enter_stage
from unlearning.requeue import CheckpointBeforeRequeue, requeued_job, under_slurm
from unlearning.results import read_json_or_none, write_json_atomic
from unlearning.strategies import barrier, broadcast, global_rank
from unlearning.sweeps import in_multirun

log = logging.getLogger(__name__)

DONE_MARKER = "STAGE_DONE.json"
CHECKPOINT_FOLDER = "checkpoints"
CHECKPOINT_CONFIG = "CONFIG.json"


def build_folder(folder: Path, make: Callable[[Path], Any], record: Mapping) -> Any:
    """`make(<folder>.partial)`, then `record` written there as the done marker and the folder renamed to
    `folder`: a process killed while building leaves a `.partial` folder, never one taken for finished,
    and the next build starts afresh; a build that raises removes its `.partial` folder. Every rank calls
    it (`make` may be collective); rank 0 alone touches the files. Returns what `make` returns."""
    lead = global_rank() == 0
    tmp = folder.with_name(folder.name + ".partial")
    if lead:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        made = make(tmp)
        if lead:
            write_json_atomic(tmp / DONE_MARKER, record)
            shutil.rmtree(folder, ignore_errors=True)  # an earlier build being replaced, or an unmarked one
            tmp.rename(folder)
    except BaseException:
        if lead:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return made


def finished_record(folder: Path) -> dict | None:
    """The done marker of a folder `build_folder` finished; None if it never finished, or if the marker
    is unreadable (truncated, not JSON, not a record): then the folder is named in a warning and taken
    as unfinished, so the next build replaces it instead of every run failing on it."""
    marker = folder / DONE_MARKER
    if not marker.exists():
        return None
    record = read_json_or_none(marker)
    if not isinstance(record, dict):
        log.warning("%s is corrupt: %s is discarded and built again", marker, folder)
        return None
    return record


class StageCache:
    """Stage outputs under `root/<stage>-<hash>/`, complete once `STAGE_DONE.json` exists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()
        self.announced: set[Path] = set()  # a stage two others build on (base) is reported once per run

    def folder(self, stage: str, parts: Any) -> Path:
        return self.root / f"{stage}-{fingerprint(parts)}"

    def get_or_build(self, stage: str, parts: Any, make: Callable[[Path], None]) -> Path:
        """Under several processes rank 0 alone holds the lock and decides for all; every rank runs `make`
        (a training stage is one collective fit, written by rank 0) and waits for rank 0's rename."""
        folder = self.folder(stage, parts)
        lead = global_rank() == 0
        # a complete entry in a read-only cache (a shared, frozen copy) is taken without a lock file
        if broadcast(lead and self.root.is_dir() and not writable(self.root) and finished_record(folder) is not None):
            log.info("stage %s: reusing %s (read-only cache)", stage, folder)
            return folder
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"paths.cache_dir={self.root} cannot be created: {error.strerror or error}") from None
        if lead and not writable(self.root):
            raise OutputError(f"paths.cache_dir={self.root} is read-only and holds no finished {stage} stage "
                              f"({folder.name}); valid: a writable folder, or a cache that holds it")
        with FileLock(str(folder) + ".lock") if lead else nullcontext():
            if broadcast(finished_record(folder) is not None):
                if folder not in self.announced:
                    log.info("stage %s: reusing %s", stage, folder)
                self.announced.add(folder)
                return folder
            if lead:
                log.info("stage %s: building %s", stage, folder)
            enter_stage(stage)
            build_folder(folder, make, {"stage": stage, "parts": parts})
        self.announced.add(folder)
        return folder


def refuse_foreign_checkpoint(path: Path, key: str) -> None:
    """Only a checkpoint this project wrote is resumed: `last.ckpt`-style Lightning files in a run's
    checkpoints folder beside its CONFIG.json, and whole (torch saves a zip archive: a truncated one
    has no central directory)."""
    if path.suffix != ".ckpt" or not (path.parent / CHECKPOINT_CONFIG).is_file():
        raise ConfigError(f"{key}: {path} is not a checkpoint this project wrote (no {CHECKPOINT_CONFIG} beside it); "
                          "valid: <run folder>/checkpoints/last.ckpt")
    if not zipfile.is_zipfile(path):
        raise ConfigError(f"{key}: {path} is corrupt or truncated (not a torch checkpoint archive); valid: a whole "
                          "checkpoint (delete it to start afresh)")


def writable(folder: Path) -> bool:
    return os.access(folder, os.W_OK)


@dataclass(frozen=True)
class ResumePolicy:
    """How a run continues its run folder's unlearning: `resume` (true: this run folder's last
    checkpoint; a path: that checkpoint; unset: only in a sweep job relaunched after an interruption),
    the hash of the config the run computes (`config`), and the checkpoint interval (`every`, null: none)."""

    resume: bool | str | None
    config: str
    every: int | None
    in_sweep: bool = False

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "ResumePolicy":
        return cls(cfg.get("resume"), config_fingerprint(cfg), cfg.get("checkpoint_every_n_steps"), in_multirun())

    @property
    def record(self) -> dict:
        """The done marker of a model this config saved in its run folder."""
        return {"stage": "unlearn", "config": self.config}

    def resumes_run_folder(self) -> bool:
        """`resume=true`, or with `resume` unset a sweep job (a relaunched sweep continues each job's folder)
        or a requeued SLURM job (unlearning/requeue.py)."""
        return self.resume is True or (self.resume is None and (self.in_sweep or requeued_job()))

    def saved_model(self, folder: Path) -> bool:
        """Whether `folder` holds the model this config saved (a resumed run killed while evaluating)."""
        return self.resumes_run_folder() and broadcast(finished_record(folder) == self.record)

    def checkpointing(self, run_dir: Path) -> list:
        """`<run>/checkpoints/last.ckpt` every `every` unlearning steps, and the config it belongs to."""
        if not self.every:
            return []
        folder = run_dir / CHECKPOINT_FOLDER
        if global_rank() == 0:  # which config the checkpoints belong to: `checkpoint` checks it
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / CHECKPOINT_CONFIG, {"config": self.config})
        requeue = [CheckpointBeforeRequeue(folder / "last.ckpt")] if under_slurm() else []
        return [ModelCheckpoint(dirpath=folder, every_n_train_steps=self.every, save_last=True, save_top_k=0), *requeue]

    def checkpoint(self, run_dir: Path) -> str | None:
        """`resume=true`: this run folder's last checkpoint; `resume=<file>`: that checkpoint; a sweep job
        (`resume` unset): its folder's last checkpoint when an interrupted launch left one. The run folder's
        checkpoint is taken only if it was written under this config (`resume` aside): a sweep job whose
        config changed since starts afresh (a finished job's checkpoint is at its last step: resuming it
        would train nothing), and `resume=true` refuses it. Call it before `checkpointing` records this
        run's config."""
        if isinstance(self.resume, str):
            path = Path(self.resume)
        elif self.resumes_run_folder():
            path = run_dir / CHECKPOINT_FOLDER / "last.ckpt"
        else:
            return None
        if not path.is_file():
            if self.resume is None:  # the job's first launch
                return None
            raise ConfigError(f"resume={self.resume}: no checkpoint {path} (resume=true needs "
                              "hydra.run.dir=<the killed run's folder>)")
        refuse_foreign_checkpoint(path, f"resume={self.resume}")
        if not isinstance(self.resume, str) and not broadcast(self.written_under_this_config(path)):
            if self.resume is True:
                raise ConfigError(f"resume=true: {path} was written under another config than this run's "
                                  f"(see {path.parent / CHECKPOINT_CONFIG}); resume=<that file> takes it anyway")
            log.warning("stage unlearn: %s was written under another config: starting afresh", path)
            if global_rank() == 0:
                path.unlink()
            return None
        log.info("stage unlearn: resuming from %s", path)
        return str(path)

    def written_under_this_config(self, checkpoint: Path) -> bool:
        recorded = checkpoint.parent / CHECKPOINT_CONFIG
        if not recorded.is_file():
            return False
        record = read_json_or_none(recorded)
        if not isinstance(record, dict) or not isinstance(record.get("config"), str):
            raise ConfigError(f"{recorded} is corrupt (not the record of a checkpoint's config); valid: the "
                              "CONFIG.json a run wrote (delete the checkpoints folder to start afresh)")
        return record == {"config": self.config}
