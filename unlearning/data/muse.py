"""MUSE's evaluation data (Shi et al. 2024, arXiv 2407.06460): the hub datasets `muse-bench/MUSE-News`
and `muse-bench/MUSE-Books` (config = subset, split as below), or a local folder holding the same as
`<folder>/<subset>/<split>.json` (a JSON list) or `.jsonl` (one object per line):

    verbmem/forget                                          prompt, gt        VerbMem
    knowmem/forget_qa, retain_qa (+ forget_qa_icl, retain_qa_icl)  question, answer  KnowMem, its few shots
    privleak/forget, holdout                                text              PrivLeak

MUSE's data cannot be redistributed; `muse_from_benchmark` derives data of the same shape from a run's
QABenchmark instead.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from unlearning.data.benchmark import DataError, QABenchmark
from unlearning.data.collate import PromptTemplate

# MuseData field -> (hub config / folder, split / file name, required fields)
MUSE_SPLITS = {
    "verbmem": ("verbmem", "forget", ("prompt", "gt")),
    "knowmem_forget": ("knowmem", "forget_qa", ("question", "answer")),
    "knowmem_forget_icl": ("knowmem", "forget_qa_icl", ("question", "answer")),
    "knowmem_retain": ("knowmem", "retain_qa", ("question", "answer")),
    "knowmem_retain_icl": ("knowmem", "retain_qa_icl", ("question", "answer")),
    "privleak_forget": ("privleak", "forget", ("text",)),
    "privleak_holdout": ("privleak", "holdout", ("text",)),
}
DERIVED_SHOTS = 3  # few-shot examples of derived KnowMem prompts


@dataclass
class MuseData:
    """VerbMem prompts; KnowMem questions and few-shot examples on forget and retain knowledge; PrivLeak
    forget and holdout records (`text`, or `question` + `answer` to score the answer given the question)."""

    verbmem: list[dict]
    knowmem_forget: list[dict]
    knowmem_forget_icl: list[dict]
    knowmem_retain: list[dict]
    knowmem_retain_icl: list[dict]
    privleak_forget: list[dict]
    privleak_holdout: list[dict]


def _read_folder(folder: Path, subset: str, split: str) -> tuple[list[dict], str]:
    for suffix in (".json", ".jsonl"):
        path = folder / subset / f"{split}{suffix}"
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            try:
                records = json.loads(text) if suffix == ".json" else [json.loads(line) for line in text.splitlines()
                                                                      if line.strip()]
            except json.JSONDecodeError as error:
                raise DataError(f"MUSE file {path} is not valid JSON: {error}") from None
            if not isinstance(records, list):
                raise DataError(f"MUSE file {path} must hold a list of records")
            return records, str(path)
    raise DataError(f"MUSE file {folder / subset / split}.json (or .jsonl) does not exist")


def _read_hub(dataset_id: str, subset: str, split: str) -> tuple[list[dict], str]:
    from datasets import load_dataset  # heavy import, needed only for the hub

    return load_dataset(dataset_id, subset, split=split).to_list(), f"{dataset_id} {subset}/{split}"


def load_muse(source: str) -> MuseData:
    """Every MUSE split from a local folder (when `source` is one) or the hub dataset id `source`."""
    folder = Path(source).expanduser()
    loaded = {}
    for key, (subset, split, fields) in MUSE_SPLITS.items():
        records, where = _read_folder(folder, subset, split) if folder.is_dir() else _read_hub(source, subset, split)
        if not records:
            raise DataError(f"MUSE {where} is empty")
        for i, record in enumerate(records):
            missing = [f for f in fields if not isinstance(record, dict) or record.get(f) is None]
            if missing:
                raise DataError(f"MUSE {where} record {i} has no field '{missing[0]}'")
        loaded[key] = records
    return MuseData(**loaded)


def muse_from_benchmark(benchmark: QABenchmark, template: PromptTemplate) -> MuseData:
    """MUSE-shaped data from a QA benchmark.

    VerbMem: each forget record's training text split at the answer (prompt = the question in the
    model's template, gt = the answer as the template writes it), so verbatim continuation means
    reproducing the finetuned answer. KnowMem: forget QA, and the TOFU retain evaluation QA, each asked
    after DERIVED_SHOTS retain pairs (kept out of the retain questions; forget pairs never serve as
    shots). PrivLeak: forget vs holdout answers, each scored given its question.
    """
    if not benchmark.holdout:
        raise DataError(f"{benchmark.name}: split 'holdout' is empty; PrivLeak needs it")

    def qa(records: list[dict]) -> list[dict]:
        return [{"question": r["question"], "answer": r["answer"]} for r in records]

    shots = qa(benchmark.retain[:DERIVED_SHOTS])
    shot_questions = {s["question"] for s in shots}
    return MuseData(
        verbmem=[{"prompt": template.prompt.format(question=r["question"]),
                  "gt": template.answer.format(answer=r["answer"])} for r in benchmark.forget],
        knowmem_forget=qa(benchmark.forget),
        knowmem_forget_icl=shots,
        knowmem_retain=[r for r in qa(benchmark.retain_perturbed) if r["question"] not in shot_questions],
        knowmem_retain_icl=shots,
        privleak_forget=qa(benchmark.forget),
        privleak_holdout=qa(benchmark.holdout),
    )
