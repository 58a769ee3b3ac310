"""Bad input fails before training with one line naming the file, field or key, and a non-zero exit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import compose_config
from unlearning.errors import UnlearningError
from unlearning.pipeline import run


@pytest.fixture
def tofu_copy(data_dir, tmp_path) -> Path:
    """The first 20 records of every real TOFU file, in a folder the test may break."""
    folder = tmp_path / "tofu"
    folder.mkdir()
    for file in (data_dir / "tofu").glob("*.jsonl"):
        lines = file.read_text().splitlines()[:20]
        (folder / file.name).write_text("\n".join(lines) + "\n")
    return folder


def run_tofu(folder: Path, tmp_path: Path, *overrides: str) -> None:
    cfg = compose_config(["data=tofu", f"data.path={folder}", "data.split=forget01",
                          f"paths.cache_dir={tmp_path / 'cache'}", *overrides], run_dir=tmp_path / "run")
    run(cfg)


def test_missing_data_file(tofu_copy, tmp_path):
    (tofu_copy / "full.jsonl").unlink()
    with pytest.raises(UnlearningError, match=r"TOFU file .*full\.jsonl \(or \.json\) does not exist"):
        run_tofu(tofu_copy, tmp_path)


def test_record_without_required_field(tofu_copy, tmp_path):
    records = [json.loads(line) for line in (tofu_copy / "forget01.jsonl").read_text().splitlines()]
    del records[3]["answer"]
    (tofu_copy / "forget01.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    with pytest.raises(UnlearningError, match=r"split 'forget' record 3 has no field 'answer'"):
        run_tofu(tofu_copy, tmp_path)


def test_empty_forget_split(tofu_copy, tmp_path):
    (tofu_copy / "forget01.jsonl").write_text("")
    with pytest.raises(UnlearningError, match=r"split 'forget' is empty"):
        run_tofu(tofu_copy, tmp_path)


def test_split_that_does_not_exist(tofu_copy, tmp_path):
    with pytest.raises(UnlearningError, match=r"data.split='forget07' is not a TOFU forget split"):
        run_tofu(tofu_copy, tmp_path, "data.split=forget07")


def test_model_folder_without_tokenizer(data_dir, tofu_copy, tmp_path):
    weights_only = tmp_path / "no_tokenizer"
    weights_only.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(data_dir / "models" / "stories260K" / name, weights_only / name)
    with pytest.raises(UnlearningError, match=r"model folder .*no_tokenizer has no tokenizer"):
        run_tofu(tofu_copy, tmp_path, "model=local", f"model.name_or_path={weights_only}")


def test_cli_prints_one_line_and_exits_non_zero(tmp_path):
    """Through the real entry point: exit status 1 and the message as the last line, no traceback."""
    result = subprocess.run(
        [sys.executable, "-c", "from unlearning.cli import unlearn; unlearn()", "data.split=forget07",
         f"hydra.run.dir={tmp_path / 'run'}", f"paths.cache_dir={tmp_path / 'cache'}"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "forget07" in last, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
