"""Reading the data files a user points a run at, so that a broken file fails with one line naming the
file and the byte or line at fault, not a decoder traceback (or, through `datasets`, an arrow error
that names neither)."""

from __future__ import annotations

import json
from pathlib import Path

from unlearning.data.benchmark import DataError


def read_text(path: Path, label: str) -> str:
    """The file's text; `label` says what the file is for ("TOFU file", "text corpus") in the error."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{label} {path} is not valid UTF-8 (byte {error.start})") from None


def read_json_lines(path: Path, label: str) -> list[dict]:
    """One JSON object per line; blank lines are skipped, and line numbers count from 1 as editors do."""
    records = []
    for number, line in enumerate(read_text(path, label).splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{label} {path} line {number} is not valid JSON") from None
        if not isinstance(record, dict):
            raise DataError(f"{label} {path} line {number} is not a JSON object")
        records.append(record)
    return records
