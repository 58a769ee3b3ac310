"""Item 1: step throughput of every trainable method through the framework vs a hand-written loop.

The framework's cost over plain PyTorch is what a user pays for Lightning, Hydra-built objectives and
the module's logging and NaN guard; this item measures it method by method on identical work (see
benchmarks/runs.py), target <= 5%.
"""

from __future__ import annotations

from pathlib import Path

from benchmarks.report import Section
from benchmarks.runs import EXCLUDED_METHODS, MethodRun, same_last_loss, trained_methods
from benchmarks.timing import overhead_percent, time_interleaved
from benchmarks.workload import Workload

TARGET_PERCENT = 5.0


def measure(workload: Workload, log_dir: Path) -> Section:
    settings = workload.settings
    rows, total_hand, total_framework = [], 0.0, 0.0
    for index, method in enumerate(trained_methods()):
        run = MethodRun.build(workload, method, retain="nll", steps=settings.steps)
        # Warm-up pays per-process costs (lazy imports, thread pools, allocator growth): once, before the
        # first method; the later ones run in the warmed-up process.
        timed = time_interleaved({"hand": run.hand_loop(), "framework": run.framework(log_dir)},
                                 settings.repeats, settings.warmup if index == 0 else 0)
        hand, framework = timed["hand"].median, timed["framework"].median
        total_hand, total_framework = total_hand + hand, total_framework + framework
        tokens = run.tokens_per_step() * settings.steps
        rows.append([method, f"{run.tokens_per_step():.0f}", f"{hand:.2f}", f"{framework:.2f}",
                     f"{tokens / hand:.0f}", f"{tokens / framework:.0f}",
                     f"{overhead_percent(framework, hand):+.1f}",
                     same_last_loss(timed["hand"].result, timed["framework"].result)])
    rows.append(["**all methods** (sum)", "", f"{total_hand:.2f}", f"{total_framework:.2f}", "", "",
                 f"{overhead_percent(total_framework, total_hand):+.1f}", ""])
    return Section(
        title="1. Step throughput: framework vs a hand-written PyTorch loop",
        summary=(f"Each method's training step with the NLL retain term (`retain=nll`), {settings.steps} steps of "
                 f"{settings.batch_size} forget + {settings.batch_size} retain TOFU examples (forget10 / retain90), "
                 f"median wall time of {settings.repeats} interleaved repeats ({settings.warmup} warm-up round "
                 f"before the first method). "
                 f"Framework: a `lightning.Trainer` (project trainer config, CSV logger, `max_steps`) fitting "
                 f"`UnlearningModule`; hand loop: DataLoader + the method's pure loss function + AdamW + gradient "
                 f"clipping on the same batches. Tokens: non-padding tokens of every sub-batch of a step. "
                 f"Overhead = t_framework / t_hand - 1 (target <= {TARGET_PERCENT:.0f}%). "
                 f"Model: {workload.training_model_description}."),
        columns=["method", "tokens/step", "hand loop s", "framework s", "hand tokens/s", "framework tokens/s",
                 "overhead %", "same last loss (hand vs framework)"],
        rows=rows,
        notes=[f"not benchmarked: `{name}`: {why}" for name, why in EXCLUDED_METHODS.items()]
        + ["Both loops start from the same weights each repeat and train on the same batches; "
           "\"same last loss\" checks they computed the same thing (relative 1e-3)."],
    )
