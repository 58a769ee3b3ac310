"""`unlearn-report <run or sweep folder>`: collect every results.json below a folder into one table.

Each job contributes one row per model it evaluated (target, retain, unlearned), labelled by the job's
overrides (its folder name in a sweep); jobs that failed (FAILED.json, or no results) are listed as
failed, not dropped. Writes report.md and report.csv beside the runs and prints the Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from unlearning.results import write_json_atomic, write_text_atomic

DEFAULT_COLUMNS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "retain_prob")


def collect(root: Path) -> tuple[list[dict], list[str]]:
    """Rows (job, model, metrics...) from every results.json under `root`, and the failed jobs."""
    rows, failed = [], []
    for config in sorted(root.rglob(".hydra/config.yaml")):
        job = config.parent.parent
        label = str(job.relative_to(root)) if job != root else job.name
        results = job / "results.json"
        if not results.exists():
            failed.append(label)
            continue
        for model, metrics in json.loads(results.read_text())["models"].items():
            rows.append({"job": label, "model": model, **metrics})
    return rows, failed


def markdown(rows: list[dict], columns: tuple[str, ...]) -> str:
    header = ["job", "model", *columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row["job"], row["model"]] + [
            f"{row[c]:.3g}" if isinstance(row.get(c), (int, float)) else "-" for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a run folder or a multirun sweep folder")
    parser.add_argument("--columns", nargs="+", default=list(DEFAULT_COLUMNS))
    parser.add_argument("--models", nargs="+", default=None, help="only these models (e.g. unlearned)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        sys.exit(f"error: {args.folder} is not a folder")
    rows, failed = collect(args.folder)
    if args.models:
        rows = [r for r in rows if r["model"] in args.models]
    table = markdown(rows, tuple(args.columns))
    if failed:
        table += "\n\nfailed jobs: " + ", ".join(failed)
    write_text_atomic(args.folder / "report.md", table + "\n")
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["job", "model", *args.columns], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(args.folder / "report.csv", buffer.getvalue())
    write_json_atomic(args.folder / "report.json", {"rows": rows, "failed": failed})
    print(table)


if __name__ == "__main__":
    main()
