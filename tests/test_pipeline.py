"""The protocol end to end: the default experiment (cold then warm), real TOFU with stories260K, unlearn-eval."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config
from unlearning.pipeline import run, run_evaluation

MODELS = ("target", "retain", "unlearned")


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["models"]


@pytest.mark.ci
@pytest.mark.slow
def test_default_experiment_cold_then_warm(tmp_path):
    """`unlearn` with no arguments: the target memorised the forget set (forget quality far below the
    retain model's), unlearning moved it toward the retain model at little utility cost, and a second run
    reuses the stages."""
    def unlearn(name: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()",
             f"hydra.run.dir={tmp_path / name}", f"paths.cache_dir={tmp_path / 'cache'}"],
            capture_output=True, text=True, timeout=900,
        )

    cold = unlearn("cold")
    assert cold.returncode == 0, cold.stderr[-3000:]
    models = read_results(tmp_path / "cold")
    assert set(models) == set(MODELS)
    assert models["target"]["forget_quality"] < 0.01
    assert models["retain"]["forget_quality"] == pytest.approx(1.0)
    # The default's ordering claims (README "The default experiment"): unlearning lifts forget quality by
    # at least 3 orders of magnitude and keeps at least 0.8 of the retain model's utility.
    assert models["unlearned"]["forget_quality"] >= 1000 * models["target"]["forget_quality"]
    assert models["unlearned"]["model_utility"] >= 0.8 * models["retain"]["model_utility"]
    assert models["unlearned"]["forget_prob"] < models["target"]["forget_prob"]
    assert "forget_quality" in cold.stdout and "results:" in cold.stdout
    assert "stage finetune_target: building" in cold.stdout
    assert (tmp_path / "cold" / "unlearned" / "model.safetensors").exists()

    warm = unlearn("warm")
    assert warm.returncode == 0, warm.stderr[-3000:]
    # Hydra's job logging prints INFO records to stdout (and the run's cli.log).
    assert "stage finetune_target: reusing" in warm.stdout and "building" not in warm.stdout
    assert read_results(tmp_path / "warm") == models  # same seed, same config, same numbers


@pytest.mark.ci
@pytest.mark.slow
def test_real_tofu_and_stories260k_then_unlearn_eval(data_dir, tmp_path):
    """A few steps of the protocol on the real TOFU forget01 files and the real stories260K model;
    then `unlearn-eval` scores the saved unlearned model against the retain model."""
    common = ["experiment=tofu_stories260K", f"paths.cache_dir={tmp_path / 'cache'}", "eval.groups.tofu.max_examples=6"]
    cfg = compose_config([*common, "eval.groups.lm_eval.limit=3", "finetune.max_steps=2", "trainer.max_steps=2"],
                         run_dir=tmp_path / "run")
    assert cfg.data.split == "forget01" and Path(cfg.data.path).is_dir()
    value = run(cfg)
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(results["models"]) == set(MODELS)
    assert value == results["models"]["unlearned"]["forget_quality"]
    per_example = json.loads((tmp_path / "run" / "per_example.json").read_text())
    assert len(per_example["unlearned"]["tofu"]["forget"]["truth_ratio"]) == 6

    eval_cfg = compose_config(
        [*common, f"checkpoint={tmp_path / 'run' / 'unlearned'}", f"retain_checkpoint={results['paths']['retain']}"],
        config_name="evaluate", run_dir=tmp_path / "eval")
    models = run_evaluation(eval_cfg)
    assert models["checkpoint"]["forget_quality"] == pytest.approx(results["models"]["unlearned"]["forget_quality"])
    assert (tmp_path / "eval" / "results.json").exists()
