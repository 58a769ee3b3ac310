"""Memorization of the answers under teacher forcing, and a guard against degenerate generations.

- Extraction strength (Wang et al. 2024, arXiv 2406.09179, after Carlini et al. 2021): `1 − k/|y|`,
  k the shortest prefix of the answer y after which the teacher-forced argmax reproduces the rest of y.
  k = |y| (the rest is empty) when even the last token is missed, so ES = 0; open-unlearning's loop
  stops at k = |y| − 1 and reports 1/|y| there instead (`last_miss_scores_one_over_n`).
- Exact memorization (Tirumala et al. 2022, arXiv 2205.10770): the fraction of answer tokens whose
  teacher-forced argmax equals the target.
- Degenerate fraction: the share of generations that are empty or repetitive (`is_degenerate`), so a
  low ROUGE from gibberish is told apart from a low ROUGE from a fluent other answer.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch

from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.mia import labelled_token_values
from unlearning.scoring import generate_answers
from unlearning.ops import next_token_targets

# ---------------------------------------------------------------------------------------------- pure


def extraction_strength(correct, last_miss_scores_one_over_n: bool = False) -> float:
    """1 − k/n for the n per-token hits `correct` (argmax == target), k = 1 + the last miss (0 if none);
    `last_miss_scores_one_over_n` caps k at n − 1 as open-unlearning's loop does."""
    hits = np.asarray(correct, dtype=bool)
    misses = np.flatnonzero(~hits)
    k = int(misses[-1]) + 1 if misses.size else 0
    if last_miss_scores_one_over_n:
        k = min(k, len(hits) - 1)
    return 1.0 - k / len(hits)


def exact_memorization(correct) -> float:
    """Fraction of answer tokens whose argmax is the target."""
    return float(np.mean(np.asarray(correct, dtype=bool)))


def is_degenerate(text: str, min_words: int = 4, min_distinct_ratio: float = 0.4) -> bool:
    """Degenerate = no word at all, or at least `min_words` words of which fewer than
    `min_distinct_ratio` are distinct (a loop such as "the the the the" or "I am. I am. I am.").

    Words are the lower-cased runs of letters/digits (`\\w+`), so punctuation alone counts as empty.
    """
    words = re.findall(r"\w+", text.lower())
    if not words:
        return True
    return len(words) >= min_words and len(set(words)) / len(words) < min_distinct_ratio


def degenerate_fraction(generations: Sequence[str], min_words: int = 4, min_distinct_ratio: float = 0.4) -> float:
    """Share of `generations` that `is_degenerate` (0 for no generation)."""
    flags = [is_degenerate(g, min_words, min_distinct_ratio) for g in generations]
    return float(np.mean(flags)) if flags else 0.0


# --------------------------------------------------------------------------------------------- model


def argmax_hits(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Whether the teacher-forced argmax equals each labelled next token, and the mask."""
    logits, targets, mask = next_token_targets(logits, labels)
    return logits.argmax(-1) == targets, mask


class Memorization(MetricGroup):
    """Extraction strength, exact memorization (one teacher-forced forward per batch) and the degenerate
    fraction of greedy answers on the forget set (benchmark.forget) and the retain set TOFU evaluates
    (benchmark.retain_perturbed): aggregates `<set>_extraction_strength`, `<set>_exact_memorization`,
    `<set>_degenerate_fraction`.
    """

    name = "memorization"

    def __init__(self, batch_size: int = 32, max_length: int = 512, max_new_tokens: int = 32,
                 max_examples: int | None = None, last_miss_scores_one_over_n: bool = False) -> None:
        self.batch_size, self.max_length = batch_size, max_length
        self.last_miss_scores_one_over_n = last_miss_scores_one_over_n
        self.max_new_tokens, self.max_examples = max_new_tokens, max_examples

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return tuple(f"{name}_{measure}" for name in ("forget", "retain")
                     for measure in ("extraction_strength", "exact_memorization", "degenerate_fraction"))

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        limit = self.max_examples or None
        sets = {"forget": benchmark.forget[:limit], "retain": benchmark.retain_perturbed[:limit]}
        aggregates, per_example = {}, {}
        for name, records in sets.items():
            hits = labelled_token_values(model, tokenizer, template, records, argmax_hits,
                                         self.batch_size, self.max_length)
            strength = [extraction_strength(h > 0.5, self.last_miss_scores_one_over_n) for h in hits]
            exact = [exact_memorization(h > 0.5) for h in hits]
            generations = generate_answers(model, tokenizer, template, [r["question"] for r in records],
                                           self.max_new_tokens, self.batch_size)
            aggregates.update({f"{name}_extraction_strength": float(np.mean(strength)),
                               f"{name}_exact_memorization": float(np.mean(exact)),
                               f"{name}_degenerate_fraction": degenerate_fraction(generations)})
            per_example[name] = {"extraction_strength": strength, "exact_memorization": exact,
                                 "degenerate": [is_degenerate(g) for g in generations], "generation": generations}
        return Evaluation(aggregates, per_example)
