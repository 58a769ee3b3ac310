"""The protocols behind experiments/ (sequential requests, relearning) and one experiment end to end:
its README's command, then `unlearn-report` on the sweep folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config
from unlearning.config import build
from unlearning.errors import ConfigError
from unlearning.experiment import Experiment
from unlearning.pipeline import run
from unlearning.protocols.relearning import split_forget
from unlearning.report.collect import unlearning_curves
from unlearning.protocols.sequential import request_slices

REPO = Path(__file__).resolve().parent.parent
QUICK = ["trainer.max_steps=2", "eval.groups.tofu.max_examples=4", "~lm_eval"]


def test_requests_cut_the_forget_set_into_contiguous_nearly_equal_parts():
    assert request_slices(10, 4) == [slice(0, 3), slice(3, 6), slice(6, 8), slice(8, 10)]
    assert request_slices(5, 1) == [slice(0, 5)]
    with pytest.raises(ConfigError, match=r"protocol.requests=6 must be between 1 and the forget set's size \(5\)"):
        request_slices(5, 6)


def test_relearning_trains_on_the_first_authors_and_scores_the_others(tmp_path):
    benchmark = Experiment.from_config(compose_config(["data.split=forget10"], run_dir=tmp_path)).benchmark
    forget = benchmark.forget
    relearn, held_out = split_forget(benchmark, 0.25)
    assert relearn == forget[:50] and held_out.forget == forget[50:]
    assert held_out.forget_perturbed == benchmark.forget_perturbed[50:]
    assert benchmark.forget == forget  # the run's own benchmark is untouched
    with pytest.raises(ConfigError, match=r"protocol.fraction=1.0 must be in \(0, 1\)"):
        split_forget(benchmark, 1.0)


def test_protocols_that_train_after_evaluating_refuse_several_processes(tmp_path):
    cfg = compose_config(["protocol=tofu_relearn", "hardware=ddp", "trainer.devices=2"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"protocol=tofu_relearn runs in one process: set trainer.devices=1 \(got 2\)"):
        build(cfg.protocol)(cfg)  # the protocol itself, as each started process would call it


def test_sequential_requests_refuse_one_checkpoint_file_for_all(tmp_path):
    cfg = compose_config(["protocol=tofu_sequential", "resume=old/last.ckpt"], run_dir=tmp_path)
    with pytest.raises(ConfigError, match=r"^resume=old/last\.ckpt: protocol=tofu_sequential resumes its run "
                                          r"folder \(resume=true\), not one checkpoint file"):
        build(cfg.protocol)(cfg)


@pytest.mark.slow
def test_sequential_requests_each_start_from_the_last_model(shared_cache, tmp_path):
    run(compose_config([*shared_cache, *QUICK, "protocol=tofu_sequential", "protocol.requests=2", "logger=csv",
                        "trainer.log_every_n_steps=1"],
                       run_dir=tmp_path))
    results = json.loads((tmp_path / "results.json").read_text())
    # each request logs on its own (steps from 0), and the report lays them end to end
    assert all((tmp_path / "logs" / f"request{i}" / "unlearn" / "version_0" / "metrics.csv").is_file() for i in (1, 2))
    assert [step for step, _ in unlearning_curves(tmp_path)[1]["forget_loss"]] == [0, 1, 2, 3]
    assert list(results["models"]) == ["target", "retain", "after_request1", "after_request2"]
    assert results["paths"]["after_request2"] == str(tmp_path / "request2" / "unlearned")
    first, second = (results["models"][f"after_request{i}"]["forget_prob"] for i in (1, 2))
    assert second < first < results["models"]["target"]["forget_prob"]  # each request unlearns a little more


@pytest.mark.slow
def test_relearning_recovers_forget_probability(shared_cache, tmp_path):
    run(compose_config([*shared_cache, *QUICK, "protocol=tofu_relearn", "protocol.epochs=2"], run_dir=tmp_path))
    models = json.loads((tmp_path / "results.json").read_text())["models"]
    assert list(models) == ["target", "retain", "unlearned", "relearned"]
    assert models["relearned"]["forget_prob"] > models["unlearned"]["forget_prob"]
    assert (tmp_path / "relearned" / "model.safetensors").exists()


@pytest.mark.ci
@pytest.mark.slow
def test_smallest_experiment_runs_from_its_readme_command_and_reports(tmp_path):
    """experiments/undial/README.md's strength sweep, cut short, then its collector."""
    sweep = tmp_path / "sweep"
    readme = (REPO / "experiments" / "undial" / "README.md").read_text()
    assert "unlearn -m experiment=undial_strength" in readme and "unlearn-report multirun/undial_strength" in readme
    env = {**os.environ, "UNLEARNING_CACHE_DIR": str(tmp_path / "cache")}
    subprocess.run(
        [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "-m", "experiment=undial_strength",
         f"hydra.sweep.dir={sweep}", "finetune.epochs=2", "logger=none", "eval.groups.tofu.max_new_tokens=8", *QUICK],
        check=True, capture_output=True, text=True, timeout=900, env=env)
    jobs = sorted(p.name for p in sweep.iterdir() if (p / "results.json").exists())
    assert len(jobs) == 3 and all("method.strength=" in job for job in jobs)
    subprocess.run([sys.executable, "-m", "unlearning.report", str(sweep)], check=True, capture_output=True,
                   text=True, timeout=300)
    table = (sweep / "report.md").read_text()
    assert all(f"method.strength={gamma}" in table for gamma in (3, 10, 30))
