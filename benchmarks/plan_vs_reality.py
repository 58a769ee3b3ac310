"""Item 6: does `unlearn-plan` predict the memory a run really takes? Predicted vs measured peak per rank.

A randomly initialised Llama (by default 101.7M parameters: hidden 1024, 8 layers, stories260K's
tokenizer) is saved to a folder, as a run would find a model, and each config unlearns it for `STEPS` NPO
steps (+ the NLL retain term, batch 2, max_length 128, real TOFU forget10) on CPU processes (gloo). Each rank is a
process of its own, the unlearning stage exactly as `unlearn` runs it (`unlearning.stages.unlearn`:
loading, the reference copy, the strategy); a callback records the rank's peak RSS (VmHWM) when training
ends. Three steps: DDP rebuilds its gradient buckets at the second step, and holds them at the third.

The prediction is `predicted_peak_bytes(cfg, device="cpu", baseline_bytes=...)`: the plan's terms plus
the resident memory of a process that has imported what a rank imports (python, torch, transformers,
lightning, this package, and DeepSpeed for the DeepSpeed configs), measured here in a process of its own.
Every process runs with `MALLOC_MMAP_THRESHOLD_=65536`, so that RSS follows live tensors (memory.py).

    python -m benchmarks --items plan_vs_reality             # the default configs, into RESULTS.md
    python -m benchmarks.plan_vs_reality zero3 zero3_checkpointing     # any configs, printed
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import lightning as L

from benchmarks.memory import EXACT_ALLOCATOR, MIB, peak_rss_bytes
from benchmarks.report import Section, load_average
from benchmarks.workload import REPO, Settings, Workload, random_llama

STEPS, BATCH, MAX_LENGTH = 3, 2, 128
CPU_RANKS = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true"]
CHECKPOINTING = ["model.gradient_checkpointing=true"]
CONFIGS = {
    "single": [],
    "single_checkpointing": CHECKPOINTING,
    "ddp": ["hardware=ddp", *CPU_RANKS],
    "ddp_checkpointing": ["hardware=ddp", *CPU_RANKS, *CHECKPOINTING],
    "zero2": ["hardware=deepspeed_zero2", *CPU_RANKS],
    "zero2_checkpointing": ["hardware=deepspeed_zero2", *CPU_RANKS, *CHECKPOINTING],
    "zero3": ["hardware=deepspeed_zero3", *CPU_RANKS],
    "zero3_checkpointing": ["hardware=deepspeed_zero3", *CPU_RANKS, *CHECKPOINTING],
}
TOLERANCE = 0.2  # the target: predicted within +-20% of measured


def run_overrides(model: Path, data_dir: Path, work: Path, config: str) -> list[str]:
    """The `unlearn` overrides of `config` on the saved model: target and retain model given (no
    finetuning), no logger, no checkpoints."""
    return ["model=local", f"model.name_or_path={model}", f"finetune.target_path={model}",
            f"finetune.retain_path={model}", "data=tofu", f"data.path={data_dir / 'tofu'}", "data.split=forget10",
            "method=npo", "retain=nll", f"data.batch_size={BATCH}", f"max_length={MAX_LENGTH}",
            f"trainer.max_steps={STEPS}", "logger=none", "checkpoint_every_n_steps=null",
            f"paths.cache_dir={work / 'cache'}", f"paths.run_dir={work / config}", *CONFIGS[config]]


class PeakAtTrainEnd(L.Callback):
    """Writes this rank's peak RSS so far to `<folder>/rank<r>.json` when a fit ends."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps({"peak_rss_bytes": peak_rss_bytes()}))


def run_rank(overrides: list[str], callback: L.Callback) -> None:
    """One rank of the unlearning stage of `overrides` (rank 0 starts the others: Lightning re-runs this
    command line), measured by `callback`, which every stage fit is handed."""
    from unlearning.experiment import Experiment
    from unlearning.planning.cli import compose_run
    from unlearning.stages.training import StageTrainer
    from unlearning.stages.unlearn import unlearn
    from unlearning.strategies import start_processes

    cfg = compose_run(overrides)
    start_processes(cfg.trainer)
    fit = StageTrainer.fit

    def measured_fit(self, *args, callbacks=(), **kwargs):
        return fit(self, *args, callbacks=[*callbacks, callback], **kwargs)

    StageTrainer.fit = measured_fit
    try:
        unlearn(Experiment.from_config(cfg), Path(cfg.finetune.target_path))
    finally:
        StageTrainer.fit = fit


def child(*arguments: str) -> str:
    done = subprocess.run([sys.executable, "-m", "benchmarks.plan_vs_reality", *arguments], cwd=REPO,
                          env={**os.environ, **EXACT_ALLOCATOR}, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"plan_vs_reality {' '.join(arguments[:2])} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def baseline_bytes(deepspeed: bool) -> int:
    """Peak RSS of a process that imported what a rank imports before it loads a model."""
    return int(child("--baseline", *(["--deepspeed"] if deepspeed else [])).strip().splitlines()[-1])


def save_model(workload: Workload, folder: Path) -> int:
    settings = workload.settings
    model = random_llama(workload.tokenizer, settings.plan_hidden_size, settings.plan_num_layers, 2 * MAX_LENGTH,
                         workload.config.seed)
    model.save_pretrained(folder)
    workload.tokenizer.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def measure_configs(workload: Workload, configs: list[str]) -> Section:
    from unlearning.planning.cli import compose_run
    from unlearning.planning.stages import plan_run, predicted_peak_bytes

    data_dir, load_before, rows, notes, baselines = workload.settings.data_dir, load_average(), [], [], {}
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        parameters = save_model(workload, work / "model")
        for config in configs:
            overrides = run_overrides(work / "model", data_dir, work, config)
            cfg = compose_run(overrides)
            plan = plan_run(cfg, "cpu")
            deepspeed = plan.hardware.zero_stage is not None
            if deepspeed not in baselines:
                baselines[deepspeed] = baseline_bytes(deepspeed)
            predicted = predicted_peak_bytes(cfg, "cpu", baselines[deepspeed])
            (work / f"{config}_peaks").mkdir()
            child("--rank-run", str(work / f"{config}_peaks"), *overrides)
            peaks = [json.loads(path.read_text())["peak_rss_bytes"]
                     for path in sorted((work / f"{config}_peaks").glob("rank*.json"))]
            ratio = max(peaks) / predicted
            rows.append([config, len(peaks), f"{predicted / MIB:.0f}", " / ".join(f"{p / MIB:.0f}" for p in peaks),
                         f"{ratio:.3f}", "yes" if abs(ratio - 1) <= TOLERANCE else "no"])
            notes.append(f"`{config}` (`{' '.join(CONFIGS[config]) or 'hardware=cpu'}`), plan in MiB: "
                         + ", ".join(f"{term.name} {term.bytes / MIB:.0f}" for term in plan.stages[-1].terms))
    baseline_text = ", ".join(f"{'with' if deepspeed else 'without'} DeepSpeed {size / MIB:.0f} MiB"
                              for deepspeed, size in baselines.items())
    return Section(
        title="6. Memory plan vs reality: predicted and measured peak RSS per rank",
        summary=(f"`unlearn-plan`'s prediction for CPU processes (`predicted_peak_bytes(cfg, device=\"cpu\", "
                 f"baseline_bytes)`) against the peak RSS each rank measured at the end of training: the unlearning "
                 f"stage as `unlearn` runs it, {STEPS} NPO steps + `retain=nll`, batch {BATCH} per rank, max_length "
                 f"{MAX_LENGTH}, real TOFU forget10, on a randomly initialised Llama of {parameters / 1e6:.1f}M "
                 f"parameters (hidden {workload.settings.plan_hidden_size}, {workload.settings.plan_num_layers} "
                 f"layers, float32, stories260K's tokenizer) saved to a folder. "
                 f"Multi-rank configs: 2 CPU processes (gloo), `trainer.precision=32-true`. Baseline (a process "
                 f"that imported what a rank imports): {baseline_text}. Every process with "
                 f"`{' '.join(f'{k}={v}' for k, v in EXACT_ALLOCATOR.items())}`. Target: measured / predicted "
                 f"within 1 +- {TOLERANCE}. Load average before: {load_before}; after: {load_average()}."),
        columns=["config", "ranks", "predicted MiB per rank", "measured peak MiB per rank", "measured / predicted",
                 f"within +-{TOLERANCE:.0%}"],
        rows=rows,
        notes=notes + [f"not measured here: {', '.join(sorted(set(CONFIGS) - set(configs)))} "
                       f"(`python -m benchmarks.plan_vs_reality <config>...` measures any of them)"],
    )


def measure(workload: Workload, log_dir: Path) -> Section:
    return measure_configs(workload, workload.settings.plan_configs.split(","))


def main(argv: list[str] | None = None) -> None:
    """`<config>...`: measure and print; `--rank-run <folder> <overrides>` and `--baseline [--deepspeed]`: the
    measuring processes this module starts (a rank's command line is re-run by Lightning for the others)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--rank-run"]:
        run_rank(argv[2:], PeakAtTrainEnd(Path(argv[1])))
    elif argv[:1] == ["--baseline"]:
        import unlearning.stages.unlearn  # noqa: F401  (what a rank imports before it loads a model)

        if "--deepspeed" in argv:
            import deepspeed  # noqa: F401
        print(peak_rss_bytes())
    else:
        parser = argparse.ArgumentParser(prog="python -m benchmarks.plan_vs_reality", description=__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        parser.add_argument("configs", nargs="*", help=f"configs to measure (default: all): {', '.join(CONFIGS)}")
        configs = parser.parse_args(argv).configs or list(CONFIGS)
        unknown = sorted(set(configs) - set(CONFIGS))
        if unknown:
            parser.error(f"unknown config {unknown[0]}; valid: {', '.join(CONFIGS)}")
        print(measure_configs(Workload(Settings()), configs).markdown())


if __name__ == "__main__":
    main()
