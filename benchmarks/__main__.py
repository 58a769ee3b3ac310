"""python -m benchmarks: run the benchmark items and write benchmarks/RESULTS.md.

Items run one after another in this process (the memory item starts one measuring process at a
time), so no two heavy processes compete for the CPU. Timings are only meaningful on an otherwise
idle machine; RESULTS.md records the load average before and after.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, Sequence

from benchmarks import eval_ranks, hf_trainer, memory, plan_vs_reality, scaling, throughput, tofu_eval
from benchmarks.report import Section, load_average, machine_description, render
from benchmarks.runs import quiet
from benchmarks.workload import REPO, Settings, Workload
from unlearning.results import write_text_atomic

ITEMS: dict[str, Callable[[Workload, Path], Section]] = {
    "throughput": throughput.measure,
    "hf_trainer": hf_trainer.measure,
    "tofu_eval": tofu_eval.measure,
    "memory": memory.measure,
    "scaling": scaling.measure,
    "plan_vs_reality": plan_vs_reality.measure,
    "eval_ranks": eval_ranks.measure,
}


def parse(argv: Sequence[str]) -> tuple[Settings, list[str], Path]:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    defaults = Settings()
    for field in fields(Settings):
        default = getattr(defaults, field.name)
        parser.add_argument(f"--{field.name.replace('_', '-')}", type=type(default), default=default,
                            help=field.metadata["help"])
    parser.add_argument("--items", nargs="+", choices=list(ITEMS), default=list(ITEMS), help="items to run")
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks" / "RESULTS.md",
                        help="the report to write (atomically; default benchmarks/RESULTS.md)")
    args = vars(parser.parse_args(argv))
    items, output = args.pop("items"), args.pop("output")
    return Settings(**args), items, output


def main(argv: Sequence[str] | None = None) -> Path:
    argv = list(sys.argv[1:] if argv is None else argv)
    settings, items, output = parse(argv)
    quiet()
    start, load_before = time.perf_counter(), load_average()
    workload = Workload(settings)
    sections = []
    with tempfile.TemporaryDirectory() as log_dir:
        for name in items:
            print(f"[benchmarks] {name} ...", file=sys.stderr, flush=True)
            item_start = time.perf_counter()
            sections.append(ITEMS[name](workload, Path(log_dir)))
            print(f"[benchmarks] {name} done in {time.perf_counter() - item_start:.0f} s", file=sys.stderr, flush=True)
    command = shlex.join(["python", "-m", "benchmarks", *argv])
    write_text_atomic(output, render(command, machine_description(), load_before, load_average(),
                                     time.perf_counter() - start, sections))
    print(f"[benchmarks] wrote {output}", file=sys.stderr)
    return output


if __name__ == "__main__":
    main()
