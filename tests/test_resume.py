"""Runs that lose nothing: a killed unlearning run resumes to the weights of an uninterrupted one, the same
seed gives the same results, and a loss that turns NaN stops the run with one line, keeping the checkpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import compose_config
import unlearning.stages.cache
from unlearning.errors import ConfigError, NonFiniteLoss
from unlearning.pipeline import run
from unlearning.stages.cache import CHECKPOINT_FOLDER, ResumePolicy

# The unlearning stage (not a finetune stage, which has no checkpoints) dies like `kill -9` (no cleanup,
# no final save) right after step KILL_STEP. 200 forget examples in batches of 32 make 7 steps per epoch.
KILLED = """
import os
from unlearning.module import UnlearningModule
def die(self, *args):
    if self.global_step == KILL_STEP and self.trainer.checkpoint_callback is not None:
        os._exit(137)
UnlearningModule.on_train_batch_end = die
from unlearning.cli import unlearn
unlearn()
"""
UNLEARN = "from unlearning.cli import unlearn; unlearn()"
STEPS = ["trainer.max_steps=12", "eval.groups.tofu.max_examples=8"]


def unlearn(code: str, run_dir: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, f"hydra.run.dir={run_dir}", *overrides],
                          capture_output=True, text=True, timeout=600)


def unlearned_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "unlearned" / "model.safetensors")


def results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["models"]


@pytest.fixture(scope="module")
def uninterrupted(shared_cache, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("uninterrupted")
    whole = unlearn(UNLEARN, run_dir, [*shared_cache, *STEPS])
    assert whole.returncode == 0, whole.stderr[-3000:]
    return run_dir


@pytest.mark.slow
@pytest.mark.parametrize(("every", "kill_step"), [pytest.param(3, 7, marks=pytest.mark.ci), (7, 8)],
                         ids=["mid_epoch", "epoch_end"])
def test_killed_run_resumes_to_the_weights_of_an_uninterrupted_run(every, kill_step, uninterrupted, shared_cache,
                                                                   tmp_path):
    """Killed after step 7 with checkpoints every 3 steps: resumed from step 6, mid-epoch; killed after
    step 8 with checkpoints every 7: resumed from the end of the first epoch."""
    overrides = [*shared_cache, *STEPS, f"checkpoint_every_n_steps={every}"]
    killed = unlearn(KILLED.replace("KILL_STEP", str(kill_step)), tmp_path, overrides)
    assert killed.returncode == 137, killed.stderr[-3000:]
    assert not (tmp_path / "unlearned").exists()
    checkpoint = torch.load(tmp_path / CHECKPOINT_FOLDER / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == kill_step // every * every
    assert not any(key.startswith("frozen.") for key in checkpoint["state_dict"])  # the reference is rebuilt

    resumed = unlearn(UNLEARN, tmp_path, [*overrides, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    expected, got = unlearned_weights(uninterrupted), unlearned_weights(tmp_path)
    assert expected.keys() == got.keys()
    for name in expected:
        assert torch.allclose(got[name], expected[name], atol=1e-6, rtol=0), name
    assert results(tmp_path)["unlearned"] == pytest.approx(results(uninterrupted)["unlearned"])


@pytest.mark.slow
def test_same_seed_and_config_give_the_same_results(shared_cache, tmp_path):
    overrides = [*shared_cache, "trainer.max_steps=2", "eval.groups.tofu.max_examples=4"]
    for name in ("first", "second"):
        run(compose_config(overrides, run_dir=tmp_path / name))
    assert results(tmp_path / "first") == results(tmp_path / "second")


@pytest.mark.ci
@pytest.mark.slow
def test_a_checkpoint_of_another_config_is_never_resumed(shared_cache, tmp_path, monkeypatch):
    """A finished run's last.ckpt holds its last step: taken by a run whose config changed since, it would
    train nothing. `resume=true` refuses it; a relaunched sweep job starts afresh and drops it."""
    first = [*shared_cache, "checkpoint_every_n_steps=1", "trainer.max_steps=2", "eval.groups.tofu.max_examples=4"]
    run(compose_config(first, run_dir=tmp_path))
    checkpoint = tmp_path / CHECKPOINT_FOLDER / "last.ckpt"
    changed = [*first, "optimizer.lr=2e-3"]
    with pytest.raises(ConfigError, match=r"^resume=true: .*last\.ckpt was written under another config"):
        run(compose_config([*changed, "resume=true"], run_dir=tmp_path))

    monkeypatch.setattr(unlearning.stages.cache, "in_multirun", lambda: True)  # a sweep job: `resume` unset
    assert ResumePolicy.from_config(compose_config(first, run_dir=tmp_path)).checkpoint(tmp_path) == str(checkpoint)
    assert ResumePolicy.from_config(compose_config(changed, run_dir=tmp_path)).checkpoint(tmp_path) is None
    assert not checkpoint.exists()


@pytest.mark.slow
def test_nan_loss_stops_with_one_line_and_keeps_the_last_checkpoint(shared_cache, tmp_path):
    """lr = 1e30: Adam moves every weight by ~1e30 a step, so a forward pass soon overflows (step 3)."""
    cfg = compose_config([*shared_cache, "method=grad_ascent", "retain=none", "optimizer.lr=1e30",
                          "checkpoint_every_n_steps=1", "trainer.max_steps=5"], run_dir=tmp_path / "run")
    with pytest.raises(NonFiniteLoss, match=r"^step 3: the forget loss is (nan|-?inf);") as error:
        run(cfg)
    assert "\n" not in str(error.value)  # an UnlearningError: the CLI prints this one line and exits 1
    checkpoint = torch.load(tmp_path / "run" / CHECKPOINT_FOLDER / "last.ckpt", weights_only=True)
    assert checkpoint["global_step"] == 2  # the last step whose loss was finite
    assert not (tmp_path / "run" / "unlearned").exists()


def test_resume_without_a_checkpoint_names_the_file(tmp_path):
    from unlearning.errors import ConfigError

    resume = ResumePolicy.from_config(compose_config(["resume=true"], run_dir=tmp_path))
    with pytest.raises(ConfigError, match=f"resume=True: no checkpoint {tmp_path / CHECKPOINT_FOLDER / 'last.ckpt'}"):
        resume.checkpoint(tmp_path)
