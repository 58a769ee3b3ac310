"""Writing results so that no run loses finished work, and printing them as a table."""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

from unlearning.errors import OutputError

# A sweep job's folder records how its last launch ended: the report reads them, a relaunch skips finished jobs.
FAILED_FILE = "FAILED.json"
FINISHED_FILE = "FINISHED.json"

CURRENT_UMASK = os.umask(0o022)  # reading the umask means setting it: put it straight back
os.umask(CURRENT_UMASK)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync it, then rename over `path`: a reader (or a
    crash) sees the old file or the new one, never half of one. A write that fails (full disk, unwritable
    folder) removes its temporary file and raises an OutputError naming `path`."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:  # owns fd from here: closed whatever fails below
            with contextlib.suppress(OSError):  # a filesystem without modes (vfat, some network mounts)
                os.fchmod(handle.fileno(), 0o666 & ~CURRENT_UMASK)  # mkstemp's 0600 would hide results from a shared group
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as error:
        raise OutputError(f"cannot write {path}: {error.strerror or error}") from error
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Standard JSON: a non-finite number is written as null (Python's bare NaN/Infinity tokens are not
    JSON, and other readers refuse them); `non_finite_entries` finds them first to report them."""
    write_text_atomic(path, json.dumps(finite_or_null(payload), indent=2, allow_nan=False))


def read_json_or_none(path: Path) -> Any:
    """The JSON in `path`, or None when it cannot be read or parsed (a corrupt cache entry)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def finite_or_null(node: Any) -> Any:
    """`node` with every non-finite float replaced by None (numpy and torch scalars taken as floats)."""
    if isinstance(node, Mapping):
        return {str(key): finite_or_null(value) for key, value in node.items()}
    if isinstance(node, (list, tuple)):
        return [finite_or_null(value) for value in node]
    if node is None or isinstance(node, (str, bool, int)):
        return node
    number = float(node)
    return number if math.isfinite(number) else None


def non_finite_entries(models: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """`model.metric` of every metric that is NaN or infinite (written as null in results.json); a
    standard error is left out: of a single example it is undefined, not a failure."""
    return [f"{model}.{name}" for model, metrics in models.items() for name, value in metrics.items()
            if isinstance(value, float) and not math.isfinite(value) and not name.endswith("_stderr")]


TABLE_WIDTH = 100  # columns of a terminal the printed tables fit


def format_table(rows: Mapping[str, Mapping[str, float]], columns: Sequence[str], prefix: str = "") -> str:
    """A plain-text table of metrics (3 significant digits), one row per model; turned so that the
    metrics are the rows when that is wider than TABLE_WIDTH. `prefix` is left off the metric names."""

    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        return f"{value:.3g}" if isinstance(value, float) else str(value)

    names = [c[len(prefix):] if prefix and c.startswith(prefix) else c for c in columns]
    lines = _aligned([["model", *names], *([name, *(cell(m.get(c)) for c in columns)] for name, m in rows.items())])
    if max(len(line) for line in lines) > TABLE_WIDTH:
        lines = _aligned([["metric", *rows], *([name, *(cell(m.get(c)) for m in rows.values())]
                                               for name, c in zip(names, columns))])
    return "\n".join(lines)


def _aligned(table: list[list[str]]) -> list[str]:
    """Left-aligned columns two spaces apart, the header underlined."""
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    lines = ["  ".join(text.ljust(w) for text, w in zip(line, widths)).rstrip() for line in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines
