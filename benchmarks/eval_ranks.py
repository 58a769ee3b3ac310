"""Item 8: evaluation on 2 ranks vs 1, for the default experiment's three models: equal numbers, and the speedup.

The models are the default experiment's (`unlearn` with no arguments): its target and retain model from
the stage cache `unlearn` uses (`paths.cache_dir`; trained by the first run, ~3 min on 2 cores), and its
unlearned model, trained here into a temporary run folder. Each is scored by every metric group of the
default experiment (TOFU and lm-eval's tasks on the benchmark) through the Evaluator, as
`Experiment.evaluate` scores them after training: in 1 process, and in 2 gloo processes that each score
their share (unlearning/sharding.py; lm-eval through its own data parallelism).

Every round starts fresh processes (torch.multiprocessing, spawn), as a run reaches its evaluation with
nothing of it imported or built; the time is rank 0's from a barrier before the first model load to every
rank holding every result. The processes' start-up (Python, torch, lm-eval imports) is not in it: after
training the processes exist already. The parent's wall time per round, start-up included, is shown too.
"""

from __future__ import annotations

import os
import pickle
import shlex
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from benchmarks.report import Section, agreement
from benchmarks.runs import quiet
from benchmarks.workload import Workload
from unlearning.cli import CONFIG_DIR
from unlearning.config import build
from unlearning.evaluation.evaluator import Evaluator, ModelSource
from unlearning.experiment import Experiment
from unlearning.stages.finetune import target_and_retain
from unlearning.stages.unlearn import UNLEARNED_FOLDER, unlearn
from unlearning.strategies import barrier

TOLERANCE = 1e-6  # probabilities, truth ratios and every aggregate; generations and forget quality exactly
# (processes, torch threads per process): the single-process baselines at 1 thread and at this machine's default 2
VARIANTS = {"1 process, 1 thread": (1, 1), "1 process, 2 threads": (1, 2), "2 processes, 1 thread each": (2, 1)}
RANKS = "2 processes, 1 thread each"


@dataclass
class Outcome:
    seconds: float  # rank 0's evaluation time
    wall: float  # the parent's, from starting the processes to their exit
    models: dict[str, dict[str, float]]
    per_example: dict[str, Any]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _evaluate_rank(rank: int, world: int, threads: int, port: int, cfg: DictConfig, folders: Mapping[str, str],
                   out: Path, log: Path) -> None:
    """One rank: score the models as `Experiment.evaluate` does; rank 0 pickles its time and results to `out`."""
    with open(log.with_suffix(f".rank{rank}.log"), "a") as sink:  # the harness logs a lot; the suite prints tables
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
    quiet()
    torch.set_num_threads(threads)
    if world > 1:
        torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                             world_size=world)
    evaluator = Evaluator.from_config(cfg, build(cfg.data.benchmark), build(cfg.model))
    sources = [ModelSource(name, folder) for name, folder in folders.items()]
    barrier()
    start = time.perf_counter()
    results = evaluator.evaluate(sources, "retain")
    seconds = time.perf_counter() - start
    if rank == 0:
        out.write_bytes(pickle.dumps((seconds, results.models, results.per_example)))
    if world > 1:
        torch.distributed.destroy_process_group()


def evaluate_on_ranks(cfg: DictConfig, folders: Mapping[str, str], world: int, threads: int, log: Path) -> Outcome:
    """Score `folders` (name -> model folder; `retain` is the reference) with `cfg`'s metric groups in
    `world` fresh processes of `threads` torch threads each; their output goes to `log`.rank<r>.log."""
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "results.pickle"
        start = time.perf_counter()
        torch.multiprocessing.start_processes(_evaluate_rank, (world, threads, free_port(), cfg, dict(folders), out, log),
                                              nprocs=world, start_method="spawn")
        wall = time.perf_counter() - start
        seconds, models, per_example = pickle.loads(out.read_bytes())
    return Outcome(seconds, wall, models, per_example)


def _matmul_loop(rank: int, out: Path) -> None:
    torch.set_num_threads(1)
    a = torch.randn(256, 256)
    start = time.perf_counter()
    for _ in range(2000):
        a @ a
    Path(f"{out}.{rank}").write_text(str(time.perf_counter() - start))


def parallel_capacity() -> float:
    """How many times one process's throughput 2 single-thread processes get running a fixed matmul loop
    at once: 2.0 on two free cores, less when something else holds a core. The most 2 ranks can gain."""
    seconds = {}
    with tempfile.TemporaryDirectory() as scratch:
        for world in (1, 2):
            out = Path(scratch) / f"loop{world}"
            torch.multiprocessing.start_processes(_matmul_loop, (out,), nprocs=world, start_method="spawn")
            seconds[world] = max(float(Path(f"{out}.{rank}").read_text()) for rank in range(world))
    return 2 * seconds[1] / seconds[2]


def differences(ours: Any, reference: Any, where: str = "") -> list[str]:
    """Where two evaluations (JSON-like: dicts, lists, numbers, strings) differ: a number by more than
    TOLERANCE (relative above 1), anything else (a generation, a count, a key) at all."""
    if isinstance(reference, dict) and isinstance(ours, dict):
        if ours.keys() != reference.keys():
            return [f"{where}: keys"]
        return [found for key in reference for found in differences(ours[key], reference[key], f"{where}/{key}")]
    if isinstance(reference, list) and isinstance(ours, list):
        if len(ours) != len(reference):
            return [f"{where}: length"]
        return [found for a, b in zip(ours, reference) for found in differences(a, b, where)][:1]
    if isinstance(reference, float) and isinstance(ours, (int, float)):
        close = (np.isnan(ours) and np.isnan(reference)) or abs(ours - reference) <= TOLERANCE * max(1.0, abs(reference))
        return [] if close else [where]
    return [] if ours == reference else [where]


def mismatches(outcome: Outcome, baseline: Outcome) -> list[str]:
    """`differences` of the metrics and per-example values, and forget quality if not identical."""
    found = differences({"models": outcome.models, "per_example": outcome.per_example},
                        {"models": baseline.models, "per_example": baseline.per_example})
    found += [f"/models/{model}/forget_quality: not identical" for model, metrics in baseline.models.items()
              if outcome.models[model].get("forget_quality") != metrics.get("forget_quality")]
    return found


def default_experiment(*overrides: str) -> DictConfig:
    """The composed config of `unlearn <overrides>` (the default experiment when there are none)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides])


def default_models(cfg: DictConfig) -> dict[str, str]:
    """The default experiment's target and retain model (from the stage cache) and its unlearned model
    (trained into cfg.paths.run_dir), as `unlearn` makes them."""
    experiment = Experiment.from_config(cfg)
    target, retain = target_and_retain(experiment)
    unlearn(experiment, target, reference_model=retain)
    return {"target": str(target), "retain": str(retain), "unlearned": str(experiment.run_dir / UNLEARNED_FOLDER)}


def measure(workload: Workload, log_dir: Path) -> Section:
    settings = workload.settings
    overrides = shlex.split(settings.eval_overrides)
    with tempfile.TemporaryDirectory() as run_dir:
        cfg = default_experiment(*overrides, f"paths.run_dir={run_dir}", "logger=none")
        folders = default_models(cfg)
        samples: dict[str, list[Outcome]] = {name: [] for name in VARIANTS}
        capacity = [parallel_capacity()]
        for round_index in range(settings.warmup + settings.repeats):
            for name, (world, threads) in VARIANTS.items():  # interleaved: load drifting touches all alike
                outcome = evaluate_on_ranks(cfg, folders, world, threads, log_dir / f"eval_ranks_{world}x{threads}")
                if round_index >= settings.warmup:
                    samples[name].append(outcome)
        capacity.append(parallel_capacity())

    def median(name: str, field: str) -> float:
        return statistics.median(getattr(outcome, field) for outcome in samples[name])

    ranks = median(RANKS, "seconds")
    rows = []
    for name in VARIANTS:
        found = sorted({where for ours in samples[RANKS] for base in samples[name] for where in mismatches(ours, base)})
        rows.append([name, f"{median(name, 'seconds'):.2f}", f"{median(name, 'wall'):.1f}",
                     f"{median(name, 'seconds') / ranks:.2f}x",
                     agreement(not found, "; ".join(found) or f"vs 2 processes: {TOLERANCE:.0e}, generations "
                                                              "and forget quality identical")])
    groups = ", ".join(node._target_.rsplit(".", 1)[1] for node in cfg.eval.groups.values() if node)
    summary = (f"`{shlex.join(['unlearn', *overrides])}`'s target, retain and unlearned models scored by its metric groups "
               f"({groups}) through the Evaluator, in fresh processes each round; evaluation s: rank 0's time from "
               f"the first model load to every rank holding every result (median of {settings.repeats} interleaved "
               f"rounds after {settings.warmup} warm-up); wall s: the parent's, process start-up included.")
    notes = ["2 processes: each scores a share of the batches one process makes, balanced by padded size (TOFU's "
             "four sets in one call per primitive, each set batched as if alone), tokenizes and scores ROUGE for "
             "every other record, and scores every other lm-eval document; every result is gathered on every rank.",
             "This machine has 2 cores: 1 process uses both through torch's intra-op threads, 2 processes one each.",
             f"The most 2 processes could gain while measured: 2 single-thread processes running a fixed matmul loop "
             f"at once got {capacity[0]:.2f}x one process's throughput before the rounds, {capacity[1]:.2f}x after "
             "(2.00 on two free cores)."]
    columns = ["evaluation", "evaluation s", "wall s", "time / 2 processes' time", "same numbers as 2 processes"]
    return Section("8. Evaluation on 2 ranks vs 1: the default experiment's three models", summary, columns, rows, notes)
