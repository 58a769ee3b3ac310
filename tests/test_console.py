"""What a run prints: quiet by default (issue 16), everything with hydra.verbose=true, tables that fit."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from unlearning.results import TABLE_WIDTH, format_table

# A default run with shorter stages: every stage and metric group of `unlearn`, so every library's noise.
SHORT_DEFAULT = ["finetune.epochs=2", "trainer.max_epochs=1", "eval.groups.tofu.max_new_tokens=8"]


def printed_lines(output: str) -> list[str]:
    """The lines a reader sees, as /work/shared/bin/check-default counts them: progress bars (NN%|) and
    blank lines left out, Hydra's log prefix stripped."""
    lines = [line for line in output.replace("\r", "\n").splitlines()
             if line.strip() and not re.search(r"[0-9]+%\|", line)]
    return [re.sub(r"^\[[^]]*\]\[[^]]*\]\[[A-Z]+\] - |^[A-Z]+: ", "", line) for line in lines]


def test_a_wide_table_turns_so_metrics_are_rows():
    models = {name: {f"lm_eval_task_number_{i}_acc_norm": i / 10 for i in range(8)} for name in ("target", "retain")}
    lines = format_table(models, list(models["target"]), prefix="lm_eval_").splitlines()
    assert lines[0].split() == ["metric", "target", "retain"]
    assert lines[2].split() == ["task_number_0_acc_norm", "0", "0"]
    assert max(map(len, lines)) <= TABLE_WIDTH


def test_a_narrow_table_keeps_one_row_per_model():
    lines = format_table({"target": {"forget_quality": 0.5}}, ["forget_quality"]).splitlines()
    assert lines[0].split() == ["model", "forget_quality"] and lines[2].split() == ["target", "0.5"]


def unlearn(tmp_path, *overrides: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "unlearning.cli", f"hydra.run.dir={tmp_path / 'run'}",
         f"paths.cache_dir={tmp_path / 'cache'}", *SHORT_DEFAULT, *overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    return done.stdout


@pytest.mark.slow
def test_a_default_run_prints_a_page_and_verbose_brings_back_the_rest(tmp_path):
    lines = printed_lines(unlearn(tmp_path))
    assert len(lines) <= 40, "\n".join(lines)
    repeated = {line for line in lines if lines.count(line) > 1 and not re.fullmatch(r"[-= ]+", line)}
    assert not repeated
    assert max(len(line) for line in lines if not line.startswith(("stage ", "results:"))) <= TABLE_WIDTH  # paths vary
    assert sum(line.startswith("stage finetune_") for line in lines) == 2
    assert lines[-1] == f"results: {tmp_path / 'run' / 'results.json'}"
    table = lines.index(next(line for line in lines if line.startswith("metric") or line.startswith("model ")))
    assert "forget_quality" in "\n".join(lines[table:])
    for noise in ("pretrained", "LeafSpec", "litlogger", "Using default tokenizer", "GPU available", "eval mode"):
        assert not any(noise in line for line in lines), noise

    verbose = printed_lines(unlearn(tmp_path, "hydra.verbose=true"))
    fits = sum("`Trainer.fit` stopped" in line for line in verbose)  # Lightning's INFO is back...
    assert fits >= 1 and sum("GPU available" in line for line in verbose) == fits  # ...once: its handler is gone


def test_a_multirun_ends_with_each_jobs_headline_metrics(tmp_path, capsys):
    from omegaconf import OmegaConf

    from tests.test_report import FAILURE, fake_job, model_metrics
    from unlearning.sweep_summary import SweepSummary

    fake_job(tmp_path / "method=npo", 0, {"unlearned": model_metrics(0.25, 0.5)})
    fake_job(tmp_path / "method=simnpo", 0, failure=FAILURE)
    SweepSummary().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == f"sweep: 2 jobs in {tmp_path}, 1 failed"
    assert lines[1].split() == ["job", "forget_quality", "model_utility", "status"]
    assert lines[3].split() == ["method=npo", "0.25", "0.5", "ok"]
    assert lines[4].split() == ["method=simnpo", "-", "-", "failed"]
    assert lines[-1] == f"report: unlearn-report {tmp_path}"
