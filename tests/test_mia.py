"""Membership inference: pure scores against hand-computed numbers, the batched scores against an
unbatched loop, the group on the synthetic benchmark with the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import assert_declared_names_are_reported, compose_config, make_tiny_llama
from unlearning.data.benchmark import DataError
from unlearning.data.collate import PromptTemplate, encode_qa
from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation
from unlearning.evaluation.mia import (
    ATTACKS,
    MembershipInference,
    attack_auc,
    example_gradient_norms,
    gradient_norm,
    labelled_token_values,
    logprob_and_normalized,
    mean_nll,
    membership_auc,
    min_k_percent,
    min_k_plus_plus,
    normalized_token_logprobs,
    zlib_ratio,
)
from unlearning.ops import mean_token_nll

TEMPLATE = PromptTemplate()

# ------------------------------------------------------------------------------------------ pure


def test_min_k_percent():
    """log-probs -1..-5, k = 0.4: the lowest ⌊0.4·5⌋ = 2 are -5, -4 -> -mean = 4.5.
    k = 0.1: ⌊0.5⌋ = 0, at least one token -> the lowest, -5 -> 5.0."""
    logprobs = [-1.0, -2.0, -3.0, -4.0, -5.0]
    assert min_k_percent(logprobs, 0.4) == pytest.approx(4.5)
    assert min_k_percent(logprobs, 0.1) == pytest.approx(5.0)


def test_normalized_token_logprobs_and_min_k_plus_plus():
    """p = (0.5, 0.25, 0.25): log p = (-ln2, -2ln2, -2ln2); μ = 0.5(-ln2) + 0.5(-2ln2) = -1.5 ln2;
    E[(log p)²] = 0.5 ln²2 + 0.5 · 4 ln²2 = 2.5 ln²2; σ² = 2.5 ln²2 - 2.25 ln²2 = 0.25 ln²2, σ = 0.5 ln2.
    Target 0: (-ln2 + 1.5 ln2) / (0.5 ln2) = 1;  target 1: (-2ln2 + 1.5 ln2) / (0.5 ln2) = -1.
    p = (0.5, 0.5): σ = 0 and log p = μ -> 0 (guarded, not 0/0).
    Min-K%++ of z = (1, -1, 0.5, 2) at k = 0.5: lowest 2 are -1, 0.5 -> mean -0.25."""
    log_p = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.5, 1e-30]]))
    z = normalized_token_logprobs(log_p, torch.tensor([0, 1, 0]))
    torch.testing.assert_close(z, torch.tensor([1.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    assert min_k_plus_plus([1.0, -1.0, 0.5, 2.0], 0.5) == pytest.approx(-0.25)


def test_loss_zlib_and_gradient_norm():
    """mean NLL of log-probs (-1, -3) = 2.
    zlib of "a": 2-byte header + 3 bytes of deflate (3-bit block header, 8-bit literal, 7-bit end) +
    4-byte Adler-32 = 9 bytes -> 1.8 / 9 = 0.2; of "": 2 + 2 (3 + 7 bits) + 4 = 8 bytes -> 2 / 8 = 0.25.
    Gradient norm of (3) and ((4)) = sqrt(9 + 16) = 5; of (1, 2) and (2) = sqrt(1 + 4 + 4) = 3."""
    assert mean_nll([-1.0, -3.0]) == pytest.approx(2.0)
    assert zlib_ratio(1.8, "a") == pytest.approx(0.2)
    assert zlib_ratio(2.0, "") == pytest.approx(0.25)
    assert gradient_norm([torch.tensor([3.0]), torch.tensor([[4.0]])]) == pytest.approx(5.0)
    assert gradient_norm([torch.tensor([1.0, 2.0]), torch.tensor([2.0])]) == pytest.approx(3.0)


def test_membership_auc_and_orientation():
    """Members (0.9, 0.8, 0.3) vs non-members (0.5, 0.1): of the 6 pairs only 0.3 < 0.5 is misordered
    -> 5/6. Equal scores -> 0.5. Loss-like scores: forget losses (1, 2) below holdout (3, 4) -> every
    member ranks first -> 1.0; Min-K%++ (higher = member) on the same numbers -> 0.0."""
    assert membership_auc([0.9, 0.8, 0.3], [0.5, 0.1]) == pytest.approx(5 / 6)
    assert membership_auc([1.0], [1.0]) == pytest.approx(0.5)
    assert attack_auc("loss", [1.0, 2.0], [3.0, 4.0]) == pytest.approx(1.0)
    assert attack_auc("min_k_plus_plus", [1.0, 2.0], [3.0, 4.0]) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------- model

RECORDS = [
    {"question": "Who wrote the book?", "answer": "The author was born in Paris."},
    {"question": "Where was she born?", "answer": "In a small town."},
    {"question": "What is the capital of Italy?", "answer": "Rome"},
]


def test_batched_token_values_match_one_by_one(model, tokenizer):
    """Column 0 is log p(x_t) and column 1 the z-score, each answer scored alone as the reference."""
    batched = labelled_token_values(model, tokenizer, TEMPLATE, RECORDS, logprob_and_normalized, batch_size=2)
    assert model.training
    model.eval()
    for record, values in zip(RECORDS, batched):
        example = encode_qa(tokenizer, TEMPLATE, record["question"], record["answer"], 512)
        n_answer = sum(label != -100 for label in example["labels"])
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([example["input_ids"]])).logits[0, :-1].float()
        log_p = torch.log_softmax(logits, -1)[-n_answer:]
        targets = torch.tensor(example["input_ids"][-n_answer:])
        expected = torch.stack([log_p.gather(-1, targets[:, None])[:, 0],
                                normalized_token_logprobs(log_p, targets)], -1)
        np.testing.assert_allclose(values, expected.numpy(), atol=1e-4)


def test_gradient_norms_match_backward_and_leave_no_trace(model, tokenizer):
    """The norm equals that of `.grad` after a plain backward; flags, `.grad` and the mode are restored."""
    frozen = next(model.parameters())
    frozen.requires_grad_(False)
    norms = example_gradient_norms(model, tokenizer, TEMPLATE, RECORDS[:2])
    assert not frozen.requires_grad and model.training
    assert all(p.grad is None for p in model.parameters())

    reference = make_tiny_llama(tokenizer).eval()
    example = encode_qa(tokenizer, TEMPLATE, RECORDS[0]["question"], RECORDS[0]["answer"], 512)
    ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
    mean_token_nll(reference(input_ids=ids).logits, labels).backward()
    expected = math.sqrt(sum(float(p.grad.double().square().sum()) for p in reference.parameters()))
    assert norms[0] == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def benchmark():
    return make_synthetic_benchmark("forget01")


def test_group_on_synthetic_benchmark(model, tokenizer, benchmark):
    """Every attack's AUC is in [0, 1]; against itself the reference attack is at chance (all diffs 0)."""
    group = MembershipInference(batch_size=8, max_length=128, max_examples=4)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, benchmark)
    assert set(evaluation.aggregates) == {f"mia_{a}_auc" for a in ATTACKS}
    assert all(0.0 <= v <= 1.0 for v in evaluation.aggregates.values())
    assert len(evaluation.per_example["forget"]["min_k"]) == 4 and len(evaluation.raw["holdout_loss"]) == 4
    assert Evaluation.from_json(json.loads(json.dumps(evaluation.to_json()))) == evaluation  # cacheable as a file
    loss_only = MembershipInference(attacks=["loss"], batch_size=8, max_length=128, max_examples=4)
    other = loss_only.evaluate(make_tiny_llama(tokenizer, seed=1), tokenizer, TEMPLATE, benchmark)
    compared = group.compare({"retain": evaluation, "unlearned": other}, "retain")
    assert compared["retain"]["mia_reference_auc"] == pytest.approx(0.5)
    assert 0.0 <= compared["unlearned"]["mia_reference_auc"] <= 1.0
    assert group.compare({"retain": evaluation}, None) == {}
    assert_declared_names_are_reported(group.result_names(compared=False), evaluation.aggregates)
    assert_declared_names_are_reported(group.result_names(compared=True), {**evaluation.aggregates, **compared["retain"]})
    assert_declared_names_are_reported(loss_only.result_names(compared=False), other.aggregates)


def test_bad_settings_and_missing_holdout(model, tokenizer, benchmark):
    with pytest.raises(ConfigError, match="mia.attacks"):
        MembershipInference(attacks=["loss", "nope"])
    with pytest.raises(ConfigError, match="mia.k"):
        MembershipInference(k=0.0)
    benchmark_without_holdout = make_synthetic_benchmark("forget01")
    benchmark_without_holdout.holdout = []
    with pytest.raises(DataError, match="holdout"):
        MembershipInference(attacks=["loss"]).evaluate(model, tokenizer, TEMPLATE, benchmark_without_holdout)


def test_config_instantiates(tmp_path):
    group = instantiate(compose_config(["mia=default"], run_dir=tmp_path).eval.groups.mia)
    assert isinstance(group, MembershipInference) and group.attacks == ATTACKS and group.k == 0.4
