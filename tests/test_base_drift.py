"""Drift from the base model on text neither unlearning term trains on (unlearning/evaluation/base_drift.py)."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from tests.conftest import assert_declared_names_are_reported, SENTENCES, make_tiny_llama
from unlearning.data.collate import PromptTemplate
from unlearning.errors import ConfigError
from unlearning.evaluation.base_drift import BaseDrift, general_texts
from unlearning.ops import masked_mean, position_kl

TEXTS = SENTENCES[1:]


def test_position_kl_averaged_over_labelled_positions():
    # p_base = (1/4, 3/4), p = (1/2, 1/2): KL = 1/4 ln(1/2) + 3/4 ln(3/2) = 0.130812...
    base = torch.tensor([[[0.0, math.log(3)], [0.0, 0.0], [5.0, -5.0]]])
    model = torch.tensor([[[0.0, 0.0], [0.0, 0.0], [-5.0, 5.0]]])
    kl = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert masked_mean(position_kl(base, model), torch.tensor([[True, True, False]])).item() == pytest.approx(kl / 2)  # 2nd: KL 0
    assert position_kl(base, base).abs().max().item() == pytest.approx(0.0, abs=1e-7)


def bound(model, tokenizer) -> BaseDrift:
    drift = BaseDrift(TEXTS, n_samples=3, prompt_words=3, max_new_tokens=6, seed=1, batch_size=2)
    drift.bind_base(model, tokenizer, PromptTemplate())
    return drift


def test_the_base_model_has_no_drift_and_samples_repeat_with_the_seed(model, tokenizer):
    drift = bound(model, tokenizer)
    assert drift.evaluate(model, tokenizer, PromptTemplate(), None).aggregates["base_kl"] == pytest.approx(0.0, abs=1e-6)
    assert drift.samples == bound(model, tokenizer).samples
    assert all(sum(label != -100 for label in s["labels"]) >= 1 for s in drift.samples)


def test_a_uniform_model_has_perplexity_vocab_size_and_kl_log_vocab_minus_base_entropy(model, tokenizer):
    drift = bound(model, tokenizer)
    uniform = copy.deepcopy(model)
    torch.nn.init.zeros_(uniform.lm_head.weight)  # every next token equally likely
    vocab = uniform.config.vocab_size
    # by hand: KL(p || uniform) = ln V - H(p), per sampled token, each sample scored on its own (no padding)
    expected = []
    with torch.no_grad():
        for sample in drift.samples:
            logits = model.eval()(torch.tensor([sample["input_ids"]])).logits[0, :-1]
            logp = torch.log_softmax(logits, -1)
            entropy = -(logp.exp() * logp).sum(-1)
            labelled = torch.tensor(sample["labels"][1:]) != -100
            expected += (math.log(vocab) - entropy[labelled]).tolist()
    scores = drift.evaluate(uniform, tokenizer, PromptTemplate(), None).aggregates
    assert scores["base_kl"] == pytest.approx(sum(expected) / len(expected), rel=1e-4)
    assert scores["general_ppl"] == pytest.approx(vocab, rel=1e-4)
    assert_declared_names_are_reported(drift.result_names(compared=False), scores)


def test_general_text_that_a_term_trains_on_is_refused(tmp_path):
    drift = BaseDrift(TEXTS)
    drift.check_disjoint(["another text"], ["and another"])
    with pytest.raises(ConfigError, match="protocol.general_path shares 1 texts with the forget/retain corpora"):
        drift.check_disjoint(["another text"], [TEXTS[0]])
    path = tmp_path / "general.jsonl"
    path.write_text('{"answer": "one"}\n{"answer": " "}\n{"answer": "two"}\n{"answer": "three"}\n')
    assert general_texts(path, "answer", 2) == ["one", "two"]
    with pytest.raises(ConfigError, match=r"general.jsonl record 1: no string field 'text' \(protocol.general_field\)"):
        general_texts(path, "text", 2)
