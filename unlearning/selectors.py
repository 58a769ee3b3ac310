"""Evaluative models that pick the dialogues needing unlearning (Chen et al. 2024, arXiv 2404.16841).

A selector scores every candidate question/answer pair and flags those that need unlearning; the
flagged pairs become the forget set (`selector=<name>`, see `Protocol.forget_records`). Every decision
(candidate, score, flag) is saved in the run folder, so a run shows what it chose to forget and why.

- `ClassifierSelector`: a Hugging Face sequence classifier (harmful / private content, ...) flags a
  pair when the probability of the configured label reaches a threshold.
- `KeywordSelector`: case-insensitive regexes (names of people to forget, banned topics).
- `ReferenceRougeSelector`: hallucinations of the model being unlearned: its greedy answer recalls
  too little (ROUGE-L recall below a threshold) of the reference answer.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from unlearning.data.collate import PromptTemplate
from unlearning.errors import ConfigError
from unlearning.scoring import generate_answers, rouge_l_recall
from unlearning.results import write_text_atomic

DECISIONS_FILE = "selector_decisions.jsonl"


@dataclass
class SelectionContext:
    """What a selector may judge with: the model being unlearned (before unlearning), its tokenizer
    and prompt template. Selectors that judge the text alone ignore it."""

    model: Any = None
    tokenizer: Any = None
    template: PromptTemplate = PromptTemplate()


def write_decisions(path: Path, decisions: Sequence[dict]) -> None:
    """One JSON object per line, written atomically: never half a file."""
    write_text_atomic(path, "".join(json.dumps(decision) + "\n" for decision in decisions))


class Selector:
    """Base: `judge` gives each candidate a `score` (and optional details), `flagged` decides."""

    threshold: float

    def judge(self, records: Sequence[dict], context: SelectionContext) -> list[dict]:
        raise NotImplementedError

    def flagged(self, score: float) -> bool:
        return score >= self.threshold

    def select(self, records: Sequence[dict], context: SelectionContext, decisions_path: Path) -> list[dict]:
        """The flagged records, in candidate order; all decisions are written to `decisions_path`."""
        judgements = self.judge(records, context)
        decisions = [{"index": i, "question": r["question"], "answer": r["answer"], **judgement,
                      "flagged": self.flagged(judgement["score"])}
                     for i, (r, judgement) in enumerate(zip(records, judgements, strict=True))]
        write_decisions(decisions_path, decisions)
        chosen = [r for r, decision in zip(records, decisions) if decision["flagged"]]
        if not chosen:
            raise ConfigError(f"selector {type(self).__name__} flagged none of the {len(records)} candidate pairs "
                              f"(decisions: {decisions_path}): nothing to unlearn")
        return chosen


class KeywordSelector(Selector):
    """Flags a pair whose question or answer matches at least `threshold` of the case-insensitive
    `patterns` (Python regexes); the score is the number of patterns that match."""

    def __init__(self, patterns: Sequence[str], threshold: int = 1) -> None:
        if not patterns:
            raise ConfigError("selector.patterns is empty: give at least one regex")
        self.threshold = threshold
        self.patterns = []
        for pattern in patterns:
            try:
                self.patterns.append(re.compile(pattern, re.IGNORECASE))
            except re.error as error:
                raise ConfigError(f"selector.patterns: {pattern!r} is not a valid regex ({error})") from None

    def judge(self, records, context):
        texts = [f"{r['question']}\n{r['answer']}" for r in records]
        return [{"score": float(sum(bool(p.search(text)) for p in self.patterns))} for text in texts]


class ReferenceRougeSelector(Selector):
    """Flags hallucinations: the model's greedy answer has ROUGE-L recall below `threshold` against the
    record's `reference_field`. Score = that recall (lower = more hallucinated)."""

    def __init__(self, threshold: float = 0.5, reference_field: str = "answer", max_new_tokens: int = 64,
                 batch_size: int = 32) -> None:
        self.threshold = threshold
        self.reference_field = reference_field
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size

    def flagged(self, score: float) -> bool:
        return score < self.threshold

    def judge(self, records, context):
        if context.model is None:
            raise ConfigError("selector ReferenceRougeSelector needs the model being unlearned; none was given")
        missing = [i for i, r in enumerate(records) if self.reference_field not in r]
        if missing:
            raise ConfigError(f"selector.reference_field={self.reference_field!r} is missing from "
                              f"candidate {missing[0]}")
        generated = generate_answers(context.model, context.tokenizer, context.template,
                                     [r["question"] for r in records], self.max_new_tokens, self.batch_size)
        recall = rouge_l_recall(generated, [r[self.reference_field] for r in records])
        return [{"score": float(score), "generated": text} for score, text in zip(recall, generated)]


class ClassifierSelector(Selector):
    """A Hugging Face sequence classifier (id or folder) reads each (question, answer) as a text pair;
    a pair is flagged when P(`label`) >= `threshold`. `label` is a class index or a name of the
    model's `id2label`. Remote code runs only with `trust_remote_code: true`."""

    def __init__(self, model: str, label: int | str = 1, threshold: float = 0.5, batch_size: int = 32,
                 max_length: int = 512, trust_remote_code: bool = False) -> None:
        self.model = model
        self.label = label
        self.threshold = threshold
        self.batch_size = batch_size
        self.max_length = max_length
        self.trust_remote_code = trust_remote_code

    def label_index(self, config) -> int:
        if isinstance(self.label, int):
            if not 0 <= self.label < config.num_labels:
                raise ConfigError(f"selector.label={self.label} is not a class of {self.model} "
                                  f"({config.num_labels} labels)")
            return self.label
        if self.label not in config.label2id:
            raise ConfigError(f"selector.label={self.label!r} is not a label of {self.model}; "
                              f"valid: {', '.join(map(str, config.label2id))}")
        return int(config.label2id[self.label])

    @torch.no_grad()
    def judge(self, records, context):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(self.model, trust_remote_code=self.trust_remote_code)
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        classifier = AutoModelForSequenceClassification.from_pretrained(
            self.model, trust_remote_code=self.trust_remote_code).eval()
        classifier.config.pad_token_id = tokenizer.pad_token_id
        index = self.label_index(classifier.config)
        scores = []
        for start in range(0, len(records), self.batch_size):
            chunk = records[start:start + self.batch_size]
            inputs = tokenizer([r["question"] for r in chunk], [r["answer"] for r in chunk], padding=True,
                               truncation=True, max_length=self.max_length, return_tensors="pt")
            probs = torch.softmax(classifier(**inputs).logits.float(), dim=-1)[:, index]
            scores.extend(probs.tolist())
        return [{"score": score} for score in scores]
