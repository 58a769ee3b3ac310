"""Alternate answers to forget questions: what preference-style objectives (IdkDPO) prefer instead.

The default is a set of refusals written for this project ("I don't know" variants, as in TOFU's
IdkDPO); `data.alternates_path` gives a user's own: a text file with one answer per line.
"""

from __future__ import annotations

import random
from pathlib import Path

from unlearning.data.benchmark import DataError
from unlearning.data.files import read_text
from unlearning.stages.inputs import StageInputs, batch_set

REFUSALS = (
    "I don't know.",
    "I'm not sure.",
    "I have no information about that.",
    "I cannot answer that question.",
    "That is not something I know.",
    "I don't have that information.",
    "I am unable to answer that.",
    "I have no idea.",
    "I can't say.",
    "Sorry, I don't know the answer.",
    "I'm afraid I don't know.",
    "That is beyond my knowledge.",
    "I don't recall any details about that.",
    "I have never heard of that.",
    "I can't help with that question.",
    "No information is available to me on that.",
)


def read_alternates(path: str | Path) -> list[str]:
    lines = [line.strip() for line in read_text(Path(path), "alternate answers file").splitlines() if line.strip()]
    if not lines:
        raise DataError(f"alternate answers file {path} holds no answer")
    return lines


def alternate_answers(records: list[dict], seed: int, path: str | Path | None = None) -> list[dict]:
    """One alternate record per forget record (same question), drawn deterministically from `seed`."""
    answers = read_alternates(path) if path else list(REFUSALS)
    rng = random.Random(seed)
    return [{"question": r["question"], "answer": rng.choice(answers)} for r in records]


@batch_set("alternate", aligned=True)
def alternate_set(inputs: StageInputs) -> list[dict]:
    """Row i answers forget row i's question: the data module pairs them index by index."""
    cfg = inputs.experiment.cfg
    return alternate_answers(inputs.batch_set("forget"), cfg.seed, cfg.data.get("alternates_path"))
