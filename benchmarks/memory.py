"""Item 4: what a frozen reference model costs in memory: NPO (policy + reference) vs GradAscent (policy).

Peak resident memory is per process, so each measurement is a process of its own
(`python -m benchmarks.memory --method <name> --settings <json>`) training through the framework; the
parent runs them one at a time, interleaving methods. A no-grad reference in the training dtype should
add about its weights: no gradients, no optimizer state, no activations kept for backward.

The processes run with glibc's mmap threshold fixed at 64 KiB, so every tensor buffer is mapped on
allocation and unmapped on free, and peak RSS follows the live tensors. Under glibc's default (a
threshold that grows as buffers are freed, after which freed memory stays in the heap) peak RSS
drifts by tens of MiB between identical runs, more than the reference's weights on the benchmark model.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from benchmarks.report import Section
from benchmarks.runs import MethodRun, quiet
from benchmarks.workload import REPO, Settings, Workload

WITHOUT_REFERENCE, WITH_REFERENCE = "grad_ascent", "npo"
MIB = 2**20
EXACT_ALLOCATOR = {"MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM). Not getrusage's ru_maxrss: Linux carries that across
    exec from the forked copy of the parent, so a child of a big parent would report the parent's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("/proc/self/status has no VmHWM line (peak RSS is read the Linux way)")


def peak_memory_of_training(settings: Settings, method: str) -> dict:
    """Train `memory_steps` framework steps in this process; its peak RSS and the policy's parameter bytes."""
    run = MethodRun.build(Workload(settings), method, retain="nll", steps=settings.memory_steps)
    with tempfile.TemporaryDirectory() as log_dir:
        framework = run.framework(Path(log_dir))
        framework.run(framework.prepare())
    return {"peak_rss_bytes": peak_rss_bytes(),
            "parameter_bytes": sum(p.numel() * p.element_size() for p in run.policy.parameters())}


def child_arguments(settings: Settings, method: str) -> list[str]:
    """The command-line arguments of `python -m benchmarks.memory` measuring `method` under `settings`."""
    return ["--method", method, "--settings", json.dumps({**asdict(settings), "data_dir": str(settings.data_dir)})]


def measure_in_subprocess(settings: Settings, method: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "benchmarks.memory", *child_arguments(settings, method)],
                         cwd=REPO, env={**os.environ, **EXACT_ALLOCATOR}, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"memory measurement of {method} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(workload: Workload, log_dir: Path) -> Section:
    settings = workload.settings
    peaks: dict[str, list[int]] = {WITHOUT_REFERENCE: [], WITH_REFERENCE: []}
    for _ in range(settings.repeats):
        for method in peaks:
            result = measure_in_subprocess(settings, method)
            peaks[method].append(result["peak_rss_bytes"])
    reference_bytes = result["parameter_bytes"]  # the reference is a copy of the policy, in the same dtype
    without, with_reference = (statistics.median(peaks[m]) for m in (WITHOUT_REFERENCE, WITH_REFERENCE))
    added = with_reference - without
    return Section(
        title="4. Peak memory with a frozen reference model (NPO) vs without (GradAscent)",
        summary=(f"Peak RSS of a process training {settings.memory_steps} framework steps "
                 f"(batch {settings.batch_size} forget + {settings.batch_size} retain, `retain=nll`), median of "
                 f"{settings.repeats} processes per method, each with "
                 f"`{' '.join(f'{k}={v}' for k, v in EXACT_ALLOCATOR.items())}` (peak RSS "
                 f"follows live tensors; see benchmarks/memory.py). Model: {workload.training_model_description}. "
                 f"Target: added bytes / reference parameter bytes <= 1."),
        columns=["GradAscent peak RSS MiB", "NPO peak RSS MiB", "added MiB", "reference parameters MiB",
                 "added / reference parameters"],
        rows=[[f"{without / MIB:.1f}", f"{with_reference / MIB:.1f}", f"{added / MIB:.1f}",
               f"{reference_bytes / MIB:.1f}", f"{added / reference_bytes:.2f}"]],
        notes=[f"per-process peaks (MiB): GradAscent {[round(p / MIB, 1) for p in peaks[WITHOUT_REFERENCE]]}, "
               f"NPO {[round(p / MIB, 1) for p in peaks[WITH_REFERENCE]]}"],
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="One memory measurement (run by `python -m benchmarks`).")
    parser.add_argument("--method", required=True)
    parser.add_argument("--settings", required=True, help="the suite's Settings as JSON")
    args = parser.parse_args(argv)
    quiet()
    fields = json.loads(args.settings)
    settings = Settings(**{**fields, "data_dir": Path(fields["data_dir"])})
    print(json.dumps(peak_memory_of_training(settings, args.method)))


if __name__ == "__main__":
    main()
