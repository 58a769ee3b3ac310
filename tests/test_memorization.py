"""Memorization metrics: pure functions against hand-computed values, the group on the synthetic benchmark."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import assert_declared_names_are_reported, compose_config
from unlearning.data.collate import PromptTemplate, encode_qa
from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.evaluation.base import Evaluation
from unlearning.evaluation.memorization import (
    Memorization,
    argmax_hits,
    degenerate_fraction,
    exact_memorization,
    extraction_strength,
    is_degenerate,
)
from unlearning.evaluation.mia import labelled_token_values

TEMPLATE = PromptTemplate()

# ------------------------------------------------------------------------------------------ pure


def test_extraction_strength_and_exact_memorization():
    """hits (T, F, T, T): the rest is reproduced from k = 2 on (the last miss is token 1) -> 1 - 2/4 = 0.5;
    exact memorization 3/4. (F, T, T, T): k = 1 -> 0.75. All hits: k = 0 -> 1. (T, T, F): the last token
    missed, k = |y| = 3 -> 0."""
    assert extraction_strength([True, False, True, True]) == pytest.approx(0.5)
    assert exact_memorization([True, False, True, True]) == pytest.approx(0.75)
    assert extraction_strength([False, True, True, True]) == pytest.approx(0.75)
    assert extraction_strength([True, True, True]) == pytest.approx(1.0)
    assert extraction_strength([True, True, False]) == pytest.approx(0.0)


def test_extraction_strength_open_unlearning_convention():
    """open-unlearning's loop stops at k = n - 1: a miss at the last token gives 1/n (1/3, not 0), so does
    an answer missed everywhere; a miss earlier is scored as by the definition."""
    assert extraction_strength([True, True, False], last_miss_scores_one_over_n=True) == pytest.approx(1 / 3)
    assert extraction_strength([False, False, False], last_miss_scores_one_over_n=True) == pytest.approx(1 / 3)
    assert extraction_strength([True, False, True, True], last_miss_scores_one_over_n=True) == pytest.approx(0.5)


def test_degenerate_fraction():
    """"" and "..." have no word -> degenerate. "the the the the": 1 distinct of 4 = 0.25 < 0.4 ->
    degenerate. "A b a B a b": 2 distinct of 6 (case-folded) = 0.33 -> degenerate. "The author was born
    in Paris.": 6 of 6 -> fine. "Paris Paris": 2 words < 4, too short to judge -> fine. 4 of 6 = 2/3."""
    texts = ["", "...", "the the the the", "A b a B a b", "The author was born in Paris.", "Paris Paris"]
    assert [is_degenerate(t) for t in texts] == [True, True, True, True, False, False]
    assert degenerate_fraction(texts) == pytest.approx(2 / 3)
    assert degenerate_fraction([]) == 0.0


def test_argmax_hits_reads_labelled_positions_only():
    """Positions 0 and 1 predict labels[1] = 2 and labels[2] = 0; position 0's argmax is 2 (hit),
    position 1's is 1 (miss). Position 2 predicts nothing (shifted out); label -100 is never gathered."""
    logits = torch.tensor([[[0.0, 0.0, 5.0], [0.0, 5.0, 0.0], [5.0, 0.0, 0.0]]])
    hits, mask = argmax_hits(logits, torch.tensor([[-100, 2, 0]]))
    assert hits.tolist() == [[True, False]] and mask.tolist() == [[True, True]]


# ----------------------------------------------------------------------------------------- model


def test_batched_hits_match_one_forward(model, tokenizer):
    record = {"question": "Who wrote the book?", "answer": "The author was born in Paris."}
    other = {"question": "What is the capital of Italy?", "answer": "Rome"}
    hits = labelled_token_values(model, tokenizer, TEMPLATE, [record, other], argmax_hits, batch_size=2)[0]
    example = encode_qa(tokenizer, TEMPLATE, record["question"], record["answer"], 512)
    model.eval()
    with torch.no_grad():
        argmax = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1].argmax(-1)
    n = len(hits)
    np.testing.assert_array_equal(hits > 0.5, (argmax[-n:] == torch.tensor(example["input_ids"][-n:])).numpy())


def test_group_on_synthetic_benchmark(model, tokenizer):
    group = Memorization(batch_size=8, max_length=128, max_new_tokens=4, max_examples=4)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, make_synthetic_benchmark("forget01"))
    assert model.training
    assert set(evaluation.aggregates) == {f"{s}_{m}" for s in ("forget", "retain")
                                          for m in ("extraction_strength", "exact_memorization", "degenerate_fraction")}
    assert all(0.0 <= v <= 1.0 for v in evaluation.aggregates.values())
    assert len(evaluation.per_example["retain"]["generation"]) == 4
    assert group.compare({"retain": evaluation}, "retain") == {}
    for compared in (False, True):
        assert_declared_names_are_reported(group.result_names(compared), evaluation.aggregates)
    assert Evaluation.from_json(json.loads(json.dumps(evaluation.to_json()))) == evaluation  # cacheable as a file


def test_config_instantiates(tmp_path):
    cfg = compose_config(["memorization=default"], run_dir=tmp_path)
    group = instantiate(cfg.eval.groups.memorization)
    assert isinstance(group, Memorization) and group.max_length == cfg.max_length
