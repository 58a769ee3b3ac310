"""TOFU (Maini et al. 2024, arXiv 2401.06121): the Hugging Face dataset `locuslab/TOFU`, or a local
folder holding its configs as `<name>.json` / `<name>.jsonl` (one object per line), as exported from it.

`split=forgetXX` selects the matching `retain{100-XX}`, `holdoutXX` and `forgetXX_perturbed` configs.
"""

from __future__ import annotations

from pathlib import Path

from unlearning.data.benchmark import DataError, QABenchmark
from unlearning.data.files import looks_local, read_json_lines

FORGET_SPLITS = ("forget01", "forget05", "forget10")
HUB_ID = "locuslab/TOFU"


def _local_file(folder: Path, name: str) -> Path:
    for suffix in (".jsonl", ".json"):
        candidate = folder / f"{name}{suffix}"
        if candidate.exists():
            return candidate
    raise DataError(f"TOFU file {folder / name}.jsonl (or .json) does not exist")


def load_records(path: str, name: str) -> list[dict]:
    """One TOFU config as a list of records: through `datasets.load_dataset` from the hub, or a local
    folder's file read by `read_json_lines`, so that a broken file fails naming the file and line
    (datasets' arrow errors name neither). An empty split is reported by QABenchmark."""
    from datasets import load_dataset

    folder = Path(path).expanduser()
    if not folder.is_dir():
        if folder.exists() or looks_local(path):
            raise DataError(f"data.path={path} is not a folder; valid: a folder of TOFU files, or {HUB_ID}")
        return load_dataset(path, name, split="train").to_list()
    return read_json_lines(_local_file(folder, name), "TOFU file")


def load_tofu(split: str = "forget10", path: str = HUB_ID) -> QABenchmark:
    if split not in FORGET_SPLITS:
        raise DataError(f"data.split={split!r} is not a TOFU forget split; valid: {', '.join(FORGET_SPLITS)}")
    percent = int(split.removeprefix("forget"))

    def load(name: str) -> list[dict]:
        return load_records(path, name)

    return QABenchmark(
        name=f"tofu-{split}",
        full=load("full"),
        retain=load(f"retain{100 - percent:02d}"),
        forget=load(split),
        holdout=load(f"holdout{percent:02d}"),
        forget_perturbed=load(f"{split}_perturbed"),
        retain_perturbed=load("retain_perturbed"),
        real_authors=load("real_authors_perturbed"),
        world_facts=load("world_facts_perturbed"),
    )
