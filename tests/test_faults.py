"""Faults that must lose no finished work, each followed by the rerun that picks up where the run stopped:
killed while evaluating, killed while saving a model, a full disk, an interrupted sweep launched again.
(Killed while training: tests/test_resume.py.) A kill is a hook patched to `os._exit(137)` in a
subprocess running `unlearn`: no cleanup, no final save, like `kill -9`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from unlearning.stages.cache import CHECKPOINT_FOLDER, DONE_MARKER
from unlearning.stages.unlearn import UNLEARNED_FOLDER
from unlearning.results import FINISHED_FILE

FAST = ["trainer.max_steps=4", "eval.groups.tofu.max_examples=8", "~lm_eval"]
CHECKPOINTED = [*FAST, "checkpoint_every_n_steps=2"]

# The unlearned model's evaluation (target and retain are scored first) dies at its first generation,
# after the forget set's probabilities were computed.
KILL_WHILE_EVALUATING = """
import os
from unlearning.evaluation import tofu
from unlearning.evaluation.evaluator import ModelSource
load = ModelSource.load
def die(*args, **kwargs):
    os._exit(137)
def load_until_generation(self, spec):
    if self.name == "unlearned":
        tofu.generate_answers = die
    return load(self, spec)
ModelSource.load = load_until_generation
"""

# Saving into a folder named FOLDER_PREFIX...: the weights are written, the tokenizer never is.
KILL_WHILE_SAVING = """
import os
from unlearning.stages import finetune, unlearn
save = unlearn.save_full_weights
def save_half(model, tokenizer, folder):
    if os.path.basename(folder).startswith(FOLDER_PREFIX):
        model.save_pretrained(folder)
        os._exit(137)
    save(model, tokenizer, folder)
finetune.save_full_weights = unlearn.save_full_weights = save_half
"""

# Every fsync of a file under FULL_FOLDER fails as on a full disk (the atomic writer fsyncs before renaming).
FULL_DISK = """
import errno, os
fsync = os.fsync
def fsync_or_full(fd):
    if os.readlink(f"/proc/self/fd/{fd}").startswith(FULL_FOLDER):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    fsync(fd)
os.fsync = fsync_or_full
"""

# The second job of a sweep dies after step 3, its checkpoint of step 2 written.
KILL_SECOND_JOB = """
import os
from hydra.core.hydra_config import HydraConfig
from unlearning.module import UnlearningModule
def die(self, *args):
    if HydraConfig.get().job.num == 1 and self.global_step == 3:
        os._exit(137)
UnlearningModule.on_train_batch_end = die
"""


def unlearn(*args: str, patch: str = "") -> subprocess.CompletedProcess:
    code = f"{patch}\nfrom unlearning.cli import unlearn\nunlearn()"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600)


def finished(result: subprocess.CompletedProcess) -> str:
    """Everything a run that exited 0 printed (Hydra logs INFO records to stdout, Lightning's to stderr)."""
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def killed(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 137, result.stderr[-3000:]


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["models"]


def unlearned_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / UNLEARNED_FOLDER / "model.safetensors")


def assert_same_unlearned_model(run_dir: Path, reference: Path) -> None:
    """The weights and the results of `reference`'s unlearned model (a resumed fit: up to float noise)."""
    expected, got = unlearned_weights(reference), unlearned_weights(run_dir)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=0), name
    assert results(run_dir)["unlearned"] == pytest.approx(results(reference)["unlearned"])


def leftovers(folder: Path) -> list[Path]:
    """Temporary files of the atomic writer and unfinished model folders."""
    return sorted([*folder.rglob("*.tmp"), *folder.rglob("*.partial")])


@pytest.fixture(scope="module")
def uninterrupted(shared_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    finished(unlearn(f"hydra.run.dir={run_dir}", *shared_cache, *FAST))
    return run_dir


@pytest.mark.ci
@pytest.mark.slow
def test_run_killed_while_evaluating_resumes_without_training(uninterrupted, shared_cache, tmp_path):
    """The unlearned model was saved when the evaluation died: `resume=true` evaluates that model (its
    folder is not rebuilt) and writes the results an uninterrupted run writes."""
    run = [f"hydra.run.dir={tmp_path}", *shared_cache, *FAST]
    killed(unlearn(*run, patch=KILL_WHILE_EVALUATING))
    assert not (tmp_path / "results.json").exists() and not (tmp_path / "per_example.json").exists()
    assert leftovers(tmp_path) == []
    saved = (tmp_path / UNLEARNED_FOLDER / "model.safetensors").stat()

    log = finished(unlearn(*run, "resume=true"))
    assert f"stage unlearn: reusing {tmp_path / UNLEARNED_FOLDER}" in log and "Trainer.fit" not in log
    again = (tmp_path / UNLEARNED_FOLDER / "model.safetensors").stat()
    assert (again.st_ino, again.st_mtime_ns) == (saved.st_ino, saved.st_mtime_ns)
    assert results(tmp_path) == results(uninterrupted)


@pytest.mark.slow
def test_run_killed_while_saving_the_unlearned_model_saves_it_again(uninterrupted, shared_cache, tmp_path):
    """The half-written model stays in `unlearned.partial`, never taken for a saved one: `resume=true`
    resumes from the last checkpoint and saves the model an uninterrupted run saves."""
    run = [f"hydra.run.dir={tmp_path}", *shared_cache, *CHECKPOINTED]
    killed(unlearn(*run, patch=KILL_WHILE_SAVING.replace("FOLDER_PREFIX", repr(UNLEARNED_FOLDER))))
    assert not (tmp_path / UNLEARNED_FOLDER).exists() and not (tmp_path / "results.json").exists()
    half = tmp_path / f"{UNLEARNED_FOLDER}.partial"
    assert (half / "model.safetensors").exists() and not (half / "tokenizer.json").exists()

    log = finished(unlearn(*run, "resume=true"))
    assert "stage unlearn: reusing" not in log
    assert f"stage unlearn: resuming from {tmp_path / CHECKPOINT_FOLDER / 'last.ckpt'}" in log
    assert leftovers(tmp_path) == []
    assert_same_unlearned_model(tmp_path, uninterrupted)


@pytest.mark.slow
def test_stage_killed_while_saving_is_built_again(shared_cache, tmp_path):
    """A finetune stage killed in its save leaves a `.partial` folder in the cache, which the next run
    ignores and replaces by a complete stage (a stage cache of its own: the stage must be new)."""
    cache = tmp_path / "cache"
    run = [f"hydra.run.dir={tmp_path / 'run'}", *shared_cache, f"paths.cache_dir={cache}", "finetune.max_steps=2", *FAST]
    killed(unlearn(*run, patch=KILL_WHILE_SAVING.replace("FOLDER_PREFIX", repr("finetune_target-"))))
    [partial] = cache.glob("finetune_target-*.partial")
    stage = partial.with_suffix("")
    assert (partial / "model.safetensors").exists() and not (partial / DONE_MARKER).exists()
    assert sorted(p.name for p in cache.glob("finetune_target-*")) == [f"{stage.name}.lock", partial.name]

    log = finished(unlearn(*run))
    assert f"stage finetune_target: building {stage}" in log
    assert leftovers(cache) == []
    assert (stage / DONE_MARKER).exists() and (stage / "tokenizer.json").exists()


@pytest.mark.slow
def test_full_disk_ends_with_one_line_and_keeps_the_previous_results(shared_cache, tmp_path):
    """The same run again (its saved model reused) on a disk that is full: `error: cannot write <path>:
    No space left on device`, exit status 1, the earlier results untouched, no temporary file left."""
    run = [f"hydra.run.dir={tmp_path}", *shared_cache, *FAST]
    finished(unlearn(*run))
    before = {name: (tmp_path / name).read_bytes() for name in ("results.json", "per_example.json")}

    full = unlearn(*run, "resume=true", patch=FULL_DISK.replace("FULL_FOLDER", repr(os.path.realpath(tmp_path))))
    assert full.returncode == 1, full.stderr[-3000:]
    assert full.stderr.strip().splitlines()[-1] == (
        f"error: cannot write {tmp_path / 'per_example.json'}: No space left on device")
    assert {name: (tmp_path / name).read_bytes() for name in before} == before
    assert leftovers(tmp_path) == []


@pytest.mark.ci
@pytest.mark.slow
def test_interrupted_sweep_launched_again_skips_finished_jobs(uninterrupted, shared_cache, tmp_path):
    """Killed in its second job: the same command again returns the first job's stored objective without
    running it (its results.json untouched) and resumes the second from its checkpoint, to the results of
    an uninterrupted run."""
    sweep = ["--multirun", "method=grad_ascent,npo", f"hydra.sweep.dir={tmp_path}", *shared_cache, *CHECKPOINTED]
    killed(unlearn(*sweep, patch=KILL_SECOND_JOB))
    jobs = {method: folder for folder in tmp_path.iterdir() for method in ("grad_ascent", "npo")
            if f"method={method}," in f"{folder.name},"}
    first, second = jobs["grad_ascent"], jobs["npo"]
    assert not (second / "results.json").exists() and (second / CHECKPOINT_FOLDER / "last.ckpt").exists()
    stored = {name: (first / name).stat().st_mtime_ns for name in ("results.json", FINISHED_FILE)}

    log = finished(unlearn(*sweep))
    assert f"job {first.name} finished in an earlier launch: not run again" in log
    assert {name: (first / name).stat().st_mtime_ns for name in stored} == stored
    objective = json.loads((first / FINISHED_FILE).read_text())["objective"]
    assert objective == results(first)["unlearned"]["forget_quality"]
    assert f"stage unlearn: resuming from {second / CHECKPOINT_FOLDER / 'last.ckpt'}" in log
    assert_same_unlearned_model(second, uninterrupted)
