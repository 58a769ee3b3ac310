"""TOFU metrics: pure functions against hand-computed numbers, model functions against unbatched loops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.conftest import assert_declared_names_are_reported
from unlearning.data.collate import PromptTemplate, encode_prompt, encode_qa
from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.evaluation.tofu import (
    TofuMetrics,
    evaluate_tofu,
    forget_quality,
    forget_truth_score,
    model_utility,
    multiple_choice_probability,
    normalized_probability,
    truth_ratio,
    utility_truth_score,
)
from unlearning.scoring import generate_answers, length_batches, padded_sizes, rouge_l_recall, score_answers

# ------------------------------------------------------------------------------------------ pure


def test_normalized_probability():
    """logp_sum -2 over 2 tokens -> exp(-1); -6 over 3 tokens -> exp(-2)."""
    np.testing.assert_allclose(normalized_probability([-2.0, -6.0], [2, 3]), [math.exp(-1), math.exp(-2)])


def test_multiple_choice_probability():
    """0.5 / (0.5 + 0.25 + 0.25) = 0.5;  0.2 / (0.2 + 0.3 + 0.5) = 0.2."""
    p = multiple_choice_probability([0.5, 0.2], [[0.25, 0.25], [0.3, 0.5]])
    np.testing.assert_allclose(p, [0.5, 0.2])


def test_truth_ratio_and_scores():
    """Example 1: perturbed P̄ 0.2, 0.8 -> geomean sqrt(0.16) = 0.4; reference 0.5 -> R = 0.8.
    Example 2: perturbed P̄ 0.9, 0.4 -> geomean sqrt(0.36) = 0.6; reference 0.3 -> R = 2.0.
    forget: mean(min(0.8, 1.25), min(2, 0.5)) = (0.8 + 0.5) / 2 = 0.65.
    utility: mean(max(0, 1 - 0.8), max(0, 1 - 2)) = (0.2 + 0) / 2 = 0.1.
    """
    r = truth_ratio(np.log([[0.2, 0.8], [0.9, 0.4]]), np.log([0.5, 0.3]))
    np.testing.assert_allclose(r, [0.8, 2.0])
    assert forget_truth_score(r) == pytest.approx(0.65)
    assert utility_truth_score(r) == pytest.approx(0.1)


def test_forget_quality():
    """Identical samples: KS statistic 0 -> p = 1. Disjoint 20 vs 20: exact p = 2 / C(40, 20) ≈ 1.45e-11."""
    same = np.linspace(0.1, 2.0, 20)
    assert forget_quality(same, same.copy()) == pytest.approx(1.0)
    p = forget_quality(np.arange(20.0), np.arange(100.0, 120.0))
    assert p < 0.01
    assert p == pytest.approx(2 / math.comb(40, 20), rel=1e-6)


def _utility_values(retain: float, real: float, world: float) -> dict[str, float]:
    values = {f"{s}_{m}": v for s, v in (("retain", retain), ("real_authors", real), ("world_facts", world))
              for m in ("prob", "rouge", "truth_ratio")}
    values["forget_prob"] = 0.0  # not a utility value: must be ignored
    return values


def test_model_utility():
    """Three each of 0.5, 1.0, 0.25: hmean = 9 / (3·2 + 3·1 + 3·4) = 9/21 = 3/7. Any zero -> 0."""
    assert model_utility(_utility_values(0.5, 1.0, 0.25)) == pytest.approx(3 / 7)
    zero = _utility_values(0.5, 1.0, 0.25) | {"world_facts_rouge": 0.0}
    assert model_utility(zero) == 0.0
    with pytest.raises(KeyError):
        model_utility({"retain_prob": 1.0})


def test_rouge_l_recall():
    """'the cat is on the mat' vs reference 'the cat sat on the mat': LCS 'the cat on the mat' = 5 of 6.
    'cats' vs 'cat sat': stemming maps cats -> cat, LCS 1 of 2 reference tokens = 0.5. Identical: 1."""
    r = rouge_l_recall(["the cat is on the mat", "cats", "same words"],
                       ["the cat sat on the mat", "cat sat", "same words"])
    np.testing.assert_allclose(r, [5 / 6, 0.5, 1.0])


# ----------------------------------------------------------------------------------------- model

TEMPLATE = PromptTemplate()


PAIRS = [
    ("Who wrote the book?", "The author was born in Paris."),
    ("Where was she born?", "In a small town."),
    ("What did her father do?", "Her father was a doctor and her mother was a teacher of music."),
    ("Capital?", "Rome"),
    ("What does he write?", "Novels about the sea."),
]


def _unbatched_scores(model, tokenizer, pairs):
    """Reference: one unpadded forward per pair, sum of log p(label_t+1 | ≤ t) over labelled tokens."""
    model.eval()
    sums, counts = [], []
    with torch.no_grad():
        for q, a in pairs:
            e = encode_qa(tokenizer, TEMPLATE, q, a, max_length=512)
            logp = torch.log_softmax(model(torch.tensor([e["input_ids"]])).logits[0, :-1].float(), -1)
            targets = torch.tensor(e["labels"][1:])
            keep = targets != -100
            sums.append(logp[keep].gather(-1, targets[keep, None]).sum().item())
            counts.append(int(keep.sum()))
    model.train()
    return np.array(sums), np.array(counts)


@pytest.mark.parametrize("batch_size", [1, 3])
def test_score_answers_matches_unbatched(model, tokenizer, batch_size):
    expected_sums, expected_counts = _unbatched_scores(model, tokenizer, PAIRS)
    sums, counts = score_answers(model, tokenizer, TEMPLATE, PAIRS, batch_size=batch_size)
    np.testing.assert_allclose(sums, expected_sums, atol=1e-4)
    np.testing.assert_array_equal(counts, expected_counts)
    assert model.training
    rev_sums, rev_counts = score_answers(model, tokenizer, TEMPLATE, PAIRS[::-1], batch_size=batch_size)
    np.testing.assert_allclose(rev_sums, expected_sums[::-1], atol=1e-4)
    np.testing.assert_array_equal(rev_counts, expected_counts[::-1])


def test_score_answers_rejects_fully_truncated_answer(model, tokenizer):
    with pytest.raises(ValueError, match="max_length"):
        score_answers(model, tokenizer, TEMPLATE, [("A long question about the book?", "yes")], max_length=4)


def test_generate_answers_batched_equals_one_at_a_time(model, tokenizer):
    questions = [q for q, _ in PAIRS]
    assert len({len(encode_prompt(tokenizer, TEMPLATE, q)) for q in questions}) > 1  # padding is exercised
    batched = generate_answers(model, tokenizer, TEMPLATE, questions, max_new_tokens=8, batch_size=3)
    single = [generate_answers(model, tokenizer, TEMPLATE, [q], max_new_tokens=8, batch_size=1)[0]
              for q in questions]
    assert batched == single
    assert all(isinstance(text, str) for text in batched) and any(batched)
    assert model.training


def test_generation_budget_counting_the_prompt_leaves_the_rest_to_the_answer(model, tokenizer):
    """TOFU's own generate(max_length=N) counts the prompt: a prompt of P tokens leaves N - P new tokens
    (the same answer as max_new_tokens = N - P), and none when N <= P."""
    question = PAIRS[0][0]
    prompt_length = len(encode_prompt(tokenizer, TEMPLATE, question))
    three_new = generate_answers(model, tokenizer, TEMPLATE, [question], max_new_tokens=3)
    assert generate_answers(model, tokenizer, TEMPLATE, [question], max_new_tokens=prompt_length + 3,
                            budget_counts_prompt=True) == three_new
    assert generate_answers(model, tokenizer, TEMPLATE, [question], max_new_tokens=prompt_length + 3) != three_new
    assert generate_answers(model, tokenizer, TEMPLATE, [question], max_new_tokens=prompt_length,
                            budget_counts_prompt=True) == [""]


def test_length_batches_keep_segments_apart():
    # two sets of 3 and 2 records: each batched as if alone (longest first), indices into the whole list
    batches = length_batches([1, 5, 3, 9, 2], batch_size=2, segments=[3, 2])
    assert [list(b) for b in batches] == [[1, 2], [0], [3, 4]]
    assert [list(b) for b in length_batches([1, 5, 3], batch_size=2)] == [[1, 2], [0]]
    assert padded_sizes(batches, [1, 5, 3, 9, 2], extra=4) == [2 * 9, 1 * 5, 2 * 13]


def test_sets_scored_in_one_call_equal_each_set_alone(model, tokenizer):
    """evaluate_tofu scores every set in one call per primitive (segments): bit for bit what each set
    scored alone gives, probabilities and generations alike."""
    first, second = PAIRS[:3], PAIRS[3:]
    together = score_answers(model, tokenizer, TEMPLATE, first + second, batch_size=2, segments=[3, 2])
    alone = [score_answers(model, tokenizer, TEMPLATE, part, batch_size=2) for part in (first, second)]
    np.testing.assert_array_equal(together[0], np.concatenate([alone[0][0], alone[1][0]]))
    np.testing.assert_array_equal(together[1], np.concatenate([alone[0][1], alone[1][1]]))
    questions = [q for q, _ in PAIRS]
    generated = generate_answers(model, tokenizer, TEMPLATE, questions, max_new_tokens=6, batch_size=2,
                                 segments=[3, 2])
    assert generated == [*generate_answers(model, tokenizer, TEMPLATE, questions[:3], max_new_tokens=6, batch_size=2),
                         *generate_answers(model, tokenizer, TEMPLATE, questions[3:], max_new_tokens=6, batch_size=2)]


def _records(with_paraphrase: bool) -> list[dict]:
    records = []
    for i, (q, a) in enumerate(PAIRS[:3]):
        r = {"question": q, "answer": a, "perturbed_answer": [PAIRS[(i + j) % 5][1] for j in (1, 2, 3)]}
        if with_paraphrase:
            r["paraphrased_answer"] = a.lower()
        records.append(r)
    return records


def test_evaluate_tofu_keys_and_ranges(model, tokenizer):
    sets = {"forget": _records(True), "retain": _records(True),
            "real_authors": _records(False), "world_facts": _records(False)}
    result = evaluate_tofu(model, tokenizer, TEMPLATE, sets, batch_size=4, max_new_tokens=6)
    expected = {f"{s}_{m}" for s in sets for m in ("prob", "rouge", "truth_ratio")} | {"model_utility"}
    assert set(result.aggregates) == expected
    assert all(0.0 <= v <= 1.0 for v in result.aggregates.values()), result.aggregates
    assert len(result.forget_truth_ratios) == 3
    np.testing.assert_allclose(result.forget_truth_ratios, result.per_example["forget"]["truth_ratio"])
    for name in sets:
        assert set(result.per_example[name]) == {"prob", "rouge", "truth_ratio", "generation"}
        assert all(len(v) == 3 for v in result.per_example[name].values())
    assert model.training


def test_evaluate_tofu_subset_without_utility(model, tokenizer):
    """Only the forget set: its three aggregates, no model utility (its inputs are missing)."""
    result = evaluate_tofu(model, tokenizer, TEMPLATE, {"forget": _records(True), "world_facts": []},
                           max_new_tokens=4)
    assert set(result.aggregates) == {"forget_prob", "forget_rouge", "forget_truth_ratio"}


@pytest.mark.parametrize("generate", [True, False])
def test_group_reports_what_it_declares(model, tokenizer, generate):
    """The names the start-up check of objective_metric reads are those the group reports, with and
    without generation, compared with a reference model or not."""
    group = TofuMetrics(batch_size=8, max_new_tokens=4, max_length=64, max_examples=3, generate=generate,
                        progress=False)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, make_synthetic_benchmark("forget01"))
    assert_declared_names_are_reported(group.result_names(compared=False), evaluation.aggregates)
    compared = group.compare({"retain": evaluation, "unlearned": evaluation}, "retain")["unlearned"]
    assert_declared_names_are_reported(group.result_names(compared=True), {**evaluation.aggregates, **compared})
