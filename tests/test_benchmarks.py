"""The benchmark suite (benchmarks/, `python -m benchmarks`) runs end to end at its tiniest size, so it
cannot rot between the occasions someone times it on an idle machine; the numbers here mean nothing."""

from __future__ import annotations

import json
import logging
import warnings

import pytest
import torch
import transformers

from benchmarks import memory, plan_vs_reality
from benchmarks.__main__ import ITEMS, main
from benchmarks.report import MISMATCH
from benchmarks.runs import EXCLUDED_METHODS, trained_methods

SECTIONS = ("## 1. Step throughput", "## 2. Our training step vs a Hugging Face", "## 3. TOFU evaluation",
            "## 4. Peak memory", "## 5. Cost growth", "## 6. Memory plan vs reality")


@pytest.fixture
def one_thread():
    """One intra-op thread: on a busy 2-core machine two threads wait on each other at every tiny op,
    which turns seconds into minutes (timings are not what this test checks)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def logging_restored():
    """The suite quiets Lightning's and transformers' per-fit messages for its whole process; the tests
    after this one get them back."""
    levels = {name: logging.getLogger(name).level for name in ("lightning.pytorch", "lightning.fabric")}
    verbosity = transformers.logging.get_verbosity()
    with warnings.catch_warnings():
        yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    transformers.logging.set_verbosity(verbosity)


@pytest.fixture
def memory_in_process(monkeypatch, capsys):
    """The memory items' measuring processes, run in this process (their command line included): starting
    Python processes that import Lightning would take most of this test's time budget."""
    def measure(settings, method):
        capsys.readouterr()
        memory.main(memory.child_arguments(settings, method))
        return json.loads(capsys.readouterr().out.strip().splitlines()[-1])

    monkeypatch.setattr(memory, "measure_in_subprocess", measure)

    def child(*arguments):  # item 6's measuring processes: its baseline and the ranks of one config
        capsys.readouterr()
        plan_vs_reality.main(list(arguments))
        return capsys.readouterr().out

    monkeypatch.setattr(plan_vs_reality, "child", child)


def test_suite_writes_every_section(data_dir, tmp_path, one_thread, logging_restored, memory_in_process):
    output = tmp_path / "RESULTS.md"
    items = [item for item in ITEMS if item != "eval_ranks"]  # processes and models of its own: the test below
    main(["--data-dir", str(data_dir), "--repeats", "1", "--warmup", "0", "--steps", "2", "--batch-size", "2",
          "--hidden-size", "16", "--num-layers", "2", "--eval-records", "2", "--scaling-base", "2",
          "--memory-steps", "1", "--plan-hidden-size", "16", "--plan-num-layers", "2", "--plan-configs", "single",
          "--items", *items, "--output", str(output)])
    text = output.read_text()
    assert text.startswith("# Benchmark results") and "- Command: `python -m benchmarks --data-dir" in text
    for section in SECTIONS:
        assert section in text, f"missing section {section!r}"
    for method in trained_methods():
        assert f"| {method} |" in text
    for method in EXCLUDED_METHODS:
        assert f"not benchmarked: `{method}`" in text
    assert MISMATCH not in text, "a run and its baseline computed different numbers"


@pytest.mark.slow
def test_evaluation_on_ranks_item(data_dir, tmp_path, logging_restored):
    """Item 8 at its tiniest: the default experiment with 1 finetuning epoch and 2 unlearning steps,
    TOFU on 4 records per set and lm-eval on 4 documents per task, evaluated in 1 and 2 processes."""
    output = tmp_path / "RESULTS.md"
    overrides = (f"paths.cache_dir={tmp_path / 'cache'} finetune.epochs=1 trainer.max_steps=2 "
                 "eval.groups.tofu.max_examples=4 eval.groups.tofu.max_new_tokens=4 eval.groups.lm_eval.limit=4")
    main(["--data-dir", str(data_dir), "--repeats", "1", "--warmup", "0", "--items", "eval_ranks",
          "--eval-overrides", overrides, "--output", str(output)])
    text = output.read_text()
    assert "## 8. Evaluation on 2 ranks vs 1" in text
    assert text.count("| yes (") == 3 and MISMATCH not in text
