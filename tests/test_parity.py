"""The paper-scale parity tables in experiments/*/README.md against the configs they describe.

Each table follows a marker `<!-- parity: <overrides>[; <overrides> ...] -->` and has the columns
Setting | Config key | Ours | Reference | Source | Why we differ. For every row with a config key, the
experiment composed with each override list must hold the "Ours" value there, so that the table and the
config cannot drift apart; a row that does not differ ("—") shows the same value in both columns. A key `a × b` is the product of the two values (effective batch sizes)."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from tests.conftest import compose_config

REPO = Path(__file__).resolve().parent.parent
PAPER_EXPERIMENTS = sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*paper*.yaml"))
MARKER = re.compile(r"<!-- parity: (.+?) -->")
COLUMNS = ["Setting", "Config key", "Ours", "Reference", "Source", "Why we differ"]


def cells(line: str) -> list[str]:
    """A markdown table row's cells; `\\|` is a literal bar inside a cell."""
    parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [part.strip().replace("\\|", "|") for part in parts]


def parity_tables(readme: Path) -> list[tuple[list[list[str]], list[dict[str, str]]]]:
    """(override lists, rows) of each parity table of a README."""
    lines = readme.read_text().splitlines()
    tables = []
    for i, line in enumerate(lines):
        marker = MARKER.search(line)
        if not marker:
            continue
        runs = [entry.split() for entry in marker.group(1).split(";")]
        header = cells(lines[i + 1])
        assert header == COLUMNS, f"{readme}:{i + 2}: parity table columns must be {COLUMNS}"
        rows = []
        for row in lines[i + 3:]:
            if not row.startswith("|"):
                break
            rows.append(dict(zip(COLUMNS, cells(row))))
        tables.append((runs, rows))
    return tables


def every_table():
    for readme in sorted((REPO / "experiments").glob("*/README.md")):
        for number, (runs, rows) in enumerate(parity_tables(readme)):
            for overrides in runs:
                yield pytest.param(overrides, rows, id=f"{readme.parent.name}-{number}-{' '.join(overrides)}")


def unquote(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == text[-1] == "`" else text


def config_value(cfg, key: str, resolve: bool = True):
    """The value at `key`; unresolved (`${paths.data_dir}/...`) when the table shows an interpolation, so that
    the table does not depend on where this machine keeps its data."""
    if not resolve:
        node = cfg
        for part in key.split("."):
            node = node._get_node(part)
        return node._value()
    factors = [OmegaConf.select(cfg, part.strip(), throw_on_missing=True) for part in key.split("×")]
    return math.prod(factors) if len(factors) > 1 else factors[0]


def same(ours: str, value) -> bool:
    if isinstance(value, (list, tuple)) or OmegaConf.is_list(value):
        return ours == ", ".join(str(item) for item in value)
    if isinstance(value, bool) or value is None:
        return ours == str(value).lower() if value is not None else ours == "null"
    try:
        return math.isclose(float(ours), float(value), rel_tol=1e-9)
    except (TypeError, ValueError):
        return ours == str(value)


@pytest.mark.parametrize(("overrides", "rows"), list(every_table()))
def test_parity_table_matches_the_composed_config(overrides, rows, tmp_path):
    cfg = compose_config(overrides, run_dir=tmp_path)
    checked = [row for row in rows if row["Config key"] not in ("", "—")]
    assert checked, f"parity table for {overrides} pins no config value"
    for row in checked:
        key, ours = unquote(row["Config key"]), unquote(row["Ours"])
        value = config_value(cfg, key, resolve="${" not in ours)
        assert same(ours, value), f"{row['Setting']}: table says {key}={ours}, {overrides} composes {value!r}"


def test_every_paper_experiment_has_a_parity_table():
    tabled = {override.split("=", 1)[1] for _, (runs, _rows) in
              ((readme, table) for readme in (REPO / "experiments").glob("*/README.md")
               for table in parity_tables(readme))
              for overrides in runs for override in overrides if override.startswith("experiment=")}
    assert set(PAPER_EXPERIMENTS) <= tabled, f"no parity table for {sorted(set(PAPER_EXPERIMENTS) - tabled)}"


def test_parity_rows_name_a_source_and_equal_values_are_equal():
    """A row with no reason to differ ("—") must show the reference's own value; every row names a source."""
    for readme in sorted((REPO / "experiments").glob("*/README.md")):
        for _, rows in parity_tables(readme):
            for row in rows:
                assert row["Source"] and row["Why we differ"], f"{readme}: '{row['Setting']}' lacks a source or reason"
                if row["Why we differ"] == "—" and not row["Reference"].startswith("not found"):
                    assert unquote(row["Ours"]) == unquote(row["Reference"]), f"{readme}: '{row['Setting']}' differs"
