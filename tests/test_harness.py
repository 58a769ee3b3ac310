"""HarnessMetrics: lm-evaluation-harness on the local samples (real stories260K), our TOFU-style tasks on
the run's own benchmark (tiny Llama, checked against log-likelihoods computed here), and the harness's
own CLI with the task YAMLs we ship. Everything offline: the hub is never reached."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import assert_declared_names_are_reported, compose_config
from unlearning.data.collate import PromptTemplate
from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.errors import ConfigError
from unlearning.evaluation.harness import TASKS_DIR, HarnessMetrics, write_benchmark_sets
from unlearning.scoring import score_answers
from unlearning.models import load_pretrained

OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}
TEMPLATE = PromptTemplate()
LIMIT = 4


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """The env vars for subprocesses; datasets read them at import, so its flags are patched too."""
    import datasets.config

    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)
        monkeypatch.setattr(datasets.config, key, True)


@pytest.fixture(scope="module")
def stories(data_dir):
    return load_pretrained(data_dir / "models" / "stories260K", torch.float32)


@pytest.fixture(scope="module")
def small_benchmark():
    return make_synthetic_benchmark(n_authors=20, questions_per_author=4, n_world_facts=8, n_real_authors=4,
                                    retain_eval_size=6)


def test_local_samples_give_every_metric_per_task(stories, data_dir, small_benchmark):
    """The six default tasks + WMDP cyber/chem, each read from its local file (the hub copies are larger
    than 500 / 200 rows, so `original` proves which file was read); model mode is restored."""
    model, tokenizer = stories
    overrides = [f"paths.data_dir={data_dir}", f"eval.groups.lm_eval.limit={LIMIT}",
                 "eval.groups.lm_eval.benchmark_tasks=false",
                 "eval.groups.lm_eval.tasks=[winogrande,hellaswag,arc_easy,arc_challenge,boolq,piqa,wmdp_cyber,wmdp_chem]"]
    cfg = compose_config(["lm_eval=local", *overrides])
    group = instantiate(cfg.eval.groups.lm_eval)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, small_benchmark)
    assert model.training
    with_norm = {"hellaswag", "arc_easy", "arc_challenge", "piqa"}
    expected = {f"lm_eval_{task}_{metric}{stderr}" for task in group.tasks for stderr in ("", "_stderr")
                for metric in ("acc", *(["acc_norm"] if task in with_norm else []))}
    assert set(evaluation.aggregates) == expected
    assert_declared_names_are_reported(group.result_names(compared=True), evaluation.aggregates)
    assert all(0.0 <= value <= 1.0 for value in evaluation.aggregates.values())
    counts = evaluation.per_example["n_samples"]
    for task in group.tasks:
        rows = 200 if task.startswith("wmdp") else 500
        assert counts[task] == {"original": rows, "effective": LIMIT}, task
        assert Path(evaluation.per_example["data_source"][task]).parent.parent == data_dir


def test_benchmark_tasks_match_loglikelihoods_computed_here(model, tokenizer, small_benchmark, tmp_path):
    """tofu_forget_mc acc = share of records whose true answer has the highest summed log-likelihood
    among [answer, *perturbed]; tofu_forget_loglik loglikelihood = the mean true-answer log-likelihood.
    Both recomputed with the project's own scorer (BOS + prompt, then " answer", no EOS)."""
    group = HarnessMetrics(tasks=[], benchmark_tasks=True, benchmark_dir=str(tmp_path / "sets"))
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, small_benchmark)
    assert model.training

    forget = small_benchmark.eval_sets()["forget"]
    options = [[r["answer"], *r["perturbed_answer"]] for r in forget]
    pairs = [(r["question"], option) for r, choices in zip(forget, options) for option in choices]
    logp, _ = score_answers(model, tokenizer, PromptTemplate(add_eos=False), pairs)
    logp = logp.reshape(len(forget), -1)
    aggregates = evaluation.aggregates
    assert aggregates["lm_eval_tofu_forget_mc_acc"] == pytest.approx(np.mean(logp.argmax(1) == 0))
    assert aggregates["lm_eval_tofu_forget_loglik_loglikelihood"] == pytest.approx(logp[:, 0].mean(), rel=1e-5)
    assert 0 <= aggregates["lm_eval_tofu_forget_loglik_acc"] <= 1
    for task in ("tofu_retain_mc", "synthetic_world_facts_mc"):
        assert 0 <= aggregates[f"lm_eval_{task}_acc"] <= 1 and 0 <= aggregates[f"lm_eval_{task}_acc_norm"] <= 1
    assert_declared_names_are_reported(group.result_names(compared=True), aggregates)
    counts = evaluation.per_example["n_samples"]
    assert counts["tofu_forget_mc"]["effective"] == len(forget)
    assert counts["synthetic_world_facts_mc"]["effective"] == len(small_benchmark.world_facts)


def test_benchmark_files_are_deterministic(small_benchmark, tmp_path):
    first = write_benchmark_sets(small_benchmark, tmp_path / "a")
    second = write_benchmark_sets(small_benchmark, tmp_path / "b")
    assert {name: path.read_bytes() for name, path in first.items()} == \
           {name: path.read_bytes() for name, path in second.items()}
    assert len(first["forget"].read_text().splitlines()) == len(small_benchmark.forget_perturbed)


def test_missing_local_file_and_empty_task_list_are_config_errors(tmp_path, small_benchmark, model, tokenizer):
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        HarnessMetrics(tasks=[], benchmark_tasks=False)
    group = HarnessMetrics(tasks=["piqa"], local_data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="piqa_validation_500.jsonl"):
        group.evaluate(model, tokenizer, TEMPLATE, small_benchmark)


@pytest.mark.ci
@pytest.mark.slow
def test_harness_cli_runs_our_shipped_task(stories, data_dir, tmp_path):
    """`lm_eval` itself, on a saved stories260K, with tofu_forget_mc from our include path pointed at the
    local TOFU file (a YAML that includes ours and changes only the data source)."""
    model, tokenizer = stories
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    task_file = tmp_path / "tofu_forget_mc_local.yaml"
    task_file.write_text(
        f"include: {TASKS_DIR / 'tofu_forget_mc.yaml'}\ntask: tofu_forget_mc_local\ndataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    train: {data_dir / 'tofu' / 'forget10_perturbed.jsonl'}\n")
    lm_eval = Path(sys.executable).parent / "lm_eval"
    done = subprocess.run(
        [str(lm_eval), "--model", "hf", "--model_args", f"pretrained={tmp_path / 'model'}",
         "--tasks", str(task_file), "--include_path", str(TASKS_DIR), "--limit", "3", "--device", "cpu"],
        capture_output=True, text=True, env={**os.environ, **OFFLINE}, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tofu_forget_mc_local" in done.stdout and "acc" in done.stdout
