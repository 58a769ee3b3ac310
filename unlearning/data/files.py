"""Reading the data files a user points a run at, so that a broken file fails with one line naming the
file and the byte or line at fault, not a decoder traceback (or, through `datasets`, an arrow error
that names neither)."""

from __future__ import annotations

import json
from pathlib import Path

from unlearning.data.benchmark import DataError


def looks_local(path: str) -> bool:
    """A path, not a hub id (`org/name`): absolute, relative with `.`/`~`, or with more than one `/`.
    A local path that does not exist is refused, never looked up on the hub under that name."""
    return path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1


def read_text(path: Path, label: str) -> str:
    """The file's text; `label` says what the file is for ("TOFU file", "text corpus") in the error."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as error:
        raise DataError(f"{label} {path} is not valid UTF-8 (byte {error.start})") from None


def read_json_lines(path: Path, label: str) -> list[dict]:
    """One JSON object per line (blank lines skipped, line numbers from 1 as editors count), or one JSON
    array of objects (a `.json` export). A folder, a repeated key in an object and an invalid Unicode
    escape (a lone surrogate, which no tokenizer can encode) are refused, naming the file and line."""
    if path.is_dir():
        raise DataError(f"{label} {path} is a folder; valid: a JSON lines file")
    text = read_text(path, label)
    if text.lstrip().startswith("["):
        return read_json_array(path, label, text)
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        record = parse_json(line, f"{label} {path} line {number}")
        if not isinstance(record, dict):
            raise DataError(f"{label} {path} line {number} is not a JSON object")
        records.append(record)
    return records


def read_json_array(path: Path, label: str, text: str) -> list[dict]:
    records = parse_json(text, f"{label} {path}")
    if not isinstance(records, list) or not all(isinstance(record, dict) for record in records):
        raise DataError(f"{label} {path} is a JSON array of something other than objects; valid: JSON lines "
                        "(one object per line) or an array of objects")
    return records


def parse_json(text: str, where: str):
    """`json.loads`, refusing what it would accept silently: a repeated key (the last would win) and a
    lone surrogate escape such as \\ud800."""
    try:
        value = json.loads(text, object_pairs_hook=lambda pairs: unique_keys(pairs, where))
    except json.JSONDecodeError as error:
        at = f" (line {error.lineno})" if "line" not in where else ""
        raise DataError(f"{where} is not valid JSON{at}") from None
    if any(is_surrogate_text(item) for item in walk(value)):
        raise DataError(f"{where} holds an invalid Unicode escape (a lone surrogate); valid: UTF-8 text")
    return value


def unique_keys(pairs: list[tuple[str, object]], where: str) -> dict:
    seen = set()
    for key, _ in pairs:
        if key in seen:
            raise DataError(f"{where} repeats the key {key!r} in one object")
        seen.add(key)
    return dict(pairs)


def walk(value):
    """Every string inside a parsed JSON value (keys and values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from walk(item)
    elif isinstance(value, list):
        for item in value:
            yield from walk(item)


def is_surrogate_text(text: str) -> bool:
    return any("\ud800" <= character <= "\udfff" for character in text)
