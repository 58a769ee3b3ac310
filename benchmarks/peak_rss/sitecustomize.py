"""Imported by every Python process started with this folder on PYTHONPATH (the benchmark's `unlearn`
runs and the ranks Lightning starts): at exit, the process's peak resident set (VmHWM) is written to
$PEAK_RSS_DIR/<pid>.json with its rank, so a multi-process run reports one peak per rank."""

import atexit
import json
import os
from pathlib import Path


def _write_peak() -> None:
    folder = os.environ.get("PEAK_RSS_DIR")
    if not folder:
        return
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1]) * 1024
            rank = int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", 0)))
            Path(folder, f"{os.getpid()}.json").write_text(json.dumps({"rank": rank, "peak_rss_bytes": peak}))


atexit.register(_write_peak)
