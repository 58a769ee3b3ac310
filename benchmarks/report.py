"""The content of RESULTS.md: the command, the machine, one table per benchmark item.

The machine description says what the ratios were measured on (CPU model, cores, RAM, library
versions) and the load average before and after, which tells a reader whether the machine was idle.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import lightning
import torch
import transformers

from unlearning.report.tables import markdown_table

MISMATCH = "MISMATCH"  # what a table shows where a run and its baseline did not compute the same numbers


def agreement(same: bool, detail: str = "") -> str:
    return ("yes" if same else MISMATCH) + (f" ({detail})" if detail else "")


@dataclass
class Section:
    """One benchmark item: what was measured and how (`summary`), its table, and remarks."""

    title: str
    summary: str
    columns: Sequence[str]
    rows: list[Sequence[str]]
    notes: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        table = markdown_table([list(self.columns), *([str(cell) for cell in row] for row in self.rows)])
        lines = [f"## {self.title}", "", self.summary, "", table, ""] + [f"- {note}" for note in self.notes]
        return "\n".join(lines).rstrip() + "\n"


def _proc_field(path: str, name: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(name):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine_description() -> list[str]:
    memory_kb = _proc_field("/proc/meminfo", "MemTotal").split()[0]
    memory = f"{int(memory_kb) / 2**20:.1f} GiB" if memory_kb.isdigit() else "unknown"
    return [
        f"CPU: {_proc_field('/proc/cpuinfo', 'model name')}, {os.cpu_count()} logical cores, "
        f"torch threads {torch.get_num_threads()}",
        f"RAM: {memory}",
        f"Software: Python {platform.python_version()}, torch {torch.__version__}, lightning {lightning.__version__}, "
        f"transformers {transformers.__version__}, {platform.platform()}",
    ]


def load_average() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def render(command: str, machine: list[str], load_before: str, load_after: str, seconds: float,
           sections: list[Section]) -> str:
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    header = ["# Benchmark results", "",
              "Ratios of this framework against hand-written and peer baselines, measured on one machine "
              "(`benchmarks/`; regenerate with the command below on an idle machine).", "",
              f"- Command: `{command}`", f"- Date: {date}", *[f"- {line}" for line in machine],
              f"- Load average (1/5/15 min) before: {load_before}; after: {load_after}",
              f"- Suite wall time: {seconds / 60:.1f} min", ""]
    return "\n".join(header) + "\n" + "\n".join(section.markdown() for section in sections)
