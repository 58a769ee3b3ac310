"""Chen et al. 2024 (this project's reading): loss math against numbers computed by hand, and the
selectors that pick the forget set."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlamaConfig, LlamaForSequenceClassification

from tests.conftest import PAIRS_FOR_STEP, compose_config
from tests.test_methods import qa_batch
from unlearning.errors import ConfigError
from unlearning.methods.chen2024 import (
    Chen2024,
    answer_after_prompts,
    answer_representation,
    cosine_pull_loss,
    hinged_distance_loss,
    js_divergence,
    nearest_to_center,
    total_variation,
)
from unlearning.models import frozen_copy
from unlearning.ops import IGNORE_INDEX
from unlearning import selectors
from unlearning.selectors import (
    DECISIONS_FILE,
    ClassifierSelector,
    KeywordSelector,
    ReferenceRougeSelector,
    SelectionContext,
)

X = IGNORE_INDEX


def test_js_and_tv_hand_computed():
    """p = softmax(ln 3, 0) = (3/4, 1/4), q = (1/2, 1/2), m = (5/8, 3/8).
    KL(p||m) = 3/4 ln(6/5) + 1/4 ln(2/3) = 0.0353749; KL(q||m) = 1/2 ln(4/5) + 1/2 ln(4/3) = 0.0322693;
    JS = (0.0353749 + 0.0322693) / 2 = 0.0338221. TV = (|3/4 - 1/2| + |1/4 - 1/2|) / 2 = 0.25."""
    p, q = torch.tensor([math.log(3), 0.0]), torch.tensor([0.0, 0.0])
    assert js_divergence(p, q).item() == pytest.approx(0.0338221, abs=1e-6)
    assert js_divergence(q, p).item() == pytest.approx(0.0338221, abs=1e-6)
    assert total_variation(p, q).item() == pytest.approx(0.25, abs=1e-6)


def test_distances_are_bounded():
    """Disjoint distributions (1, 0) vs (0, 1): JS reaches ln 2 = 0.693147, TV reaches 1; identical ones give 0."""
    p, q = torch.tensor([60.0, -60.0]), torch.tensor([-60.0, 60.0])
    assert js_divergence(p, q).item() == pytest.approx(math.log(2), abs=1e-6)
    assert total_variation(p, q).item() == pytest.approx(1.0, abs=1e-6)
    assert js_divergence(p, p).item() == pytest.approx(0.0, abs=1e-7)


def test_hinged_distance_loss():
    """distances (0.1, 0.6, 0.3), the third masked out, margin 0.5: relu(0.4), relu(-0.1) = 0 -> mean 0.2."""
    loss = hinged_distance_loss(torch.tensor([[0.1, 0.6, 0.3]]), torch.tensor([[True, True, False]]), 0.5)
    assert loss.item() == pytest.approx(0.2, abs=1e-6)


def test_answer_representation_cosine_pull_and_nearest():
    """States (1,2), (3,4), (5,6) with labels (-100, 7, 8): mean of the answer states = (4, 5).
    Representations (1,0), (0,1), center = their mean (1/2, 1/2): cos = 1/sqrt 2 each -> 1 - 0.707107 = 0.292893.
    Nearest of (1,0), (1,1), (0,2) to (1,1): (1,1), cosine 1."""
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])
    assert answer_representation(hidden, torch.tensor([[X, 7, 8]])).tolist() == [[4.0, 5.0]]
    reps = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cosine_pull_loss(reps, reps.mean(0)).item() == pytest.approx(1 - 1 / math.sqrt(2), abs=1e-6)
    assert nearest_to_center(torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]]), torch.tensor([1.0, 1.0])) == 1


def test_answer_after_prompts_splices_one_answer_after_every_prompt():
    """Prompts (1,5) and (1,7,8); answer of row 1 of `answers` = (3, 2): rows (1,5,3,2,pad), (1,7,8,3,2)."""
    prompts = {"input_ids": torch.tensor([[1, 5, 6, 9, 0], [1, 7, 8, 9, 2]]),
               "labels": torch.tensor([[X, X, 6, 9, X], [X, X, X, 9, 2]]),
               "attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])}
    answers = {"input_ids": torch.tensor([[1, 5, 4, 0, 0], [1, 7, 8, 3, 2]]),
               "labels": torch.tensor([[X, X, 4, X, X], [X, X, X, 3, 2]]),
               "attention_mask": torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])}
    batch = answer_after_prompts(prompts, answers, row=1)
    assert batch["input_ids"].tolist() == [[1, 5, 3, 2, 0], [1, 7, 8, 3, 2]]
    assert batch["labels"].tolist() == [[X, X, 3, 2, X], [X, X, X, 3, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]


def test_negative_term_starts_at_the_margin(model, tokenizer):
    """Policy = reference: D = 0 on every answer token, so L_neg = margin (0.3) and with w_pos = 0 the loss is 0.3."""
    batch = {"forget": qa_batch(tokenizer, PAIRS_FOR_STEP[:2]), "alternate": qa_batch(tokenizer, PAIRS_FOR_STEP[2:])}
    loss = Chen2024(margin=0.3, w_pos=0.0)(model, batch, ref=frozen_copy(model))
    assert loss.item() == pytest.approx(0.3, abs=1e-5)


@pytest.mark.parametrize(("kwargs", "key"), [({"distance": "kl"}, "method.distance"),
                                             ({"distance": "js", "margin": 0.9}, "method.margin")])
def test_bad_hyperparameters_name_the_key(kwargs, key):
    with pytest.raises(ConfigError, match=key):
        Chen2024(**kwargs)


RECORDS = [
    {"question": "Who is Kalo?", "answer": "A writer."},
    {"question": "Where?", "answer": "In PARIS, said Kalo."},
    {"question": "Kalorama?", "answer": "No."},
]


def read_decisions(folder):
    return [json.loads(line) for line in (folder / DECISIONS_FILE).read_text().splitlines()]


def test_keyword_selector_flags_matches_and_saves_decisions(tmp_path):
    """Patterns \\bkalo\\b and paris, case-insensitive: scores 1, 2, 0 ('Kalorama' is no word match)."""
    chosen = KeywordSelector([r"\bkalo\b", "paris"]).select(RECORDS, SelectionContext(), tmp_path / DECISIONS_FILE)
    assert chosen == RECORDS[:2]
    decisions = read_decisions(tmp_path)
    assert [(d["index"], d["score"], d["flagged"]) for d in decisions] == [(0, 1.0, True), (1, 2.0, True),
                                                                           (2, 0.0, False)]
    assert decisions[1]["question"] == "Where?"


def test_empty_selection_and_bad_patterns_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="KeywordSelector flagged none"):
        KeywordSelector(["zebra"]).select(RECORDS, SelectionContext(), tmp_path / DECISIONS_FILE)
    with pytest.raises(ConfigError, match="selector.patterns"):
        KeywordSelector(["(unclosed"])


def test_reference_rouge_selector_flags_low_recall(monkeypatch, tmp_path):
    """Generated 'the author was born in paris' vs reference 'the author was born in rome': LCS 5 of 6
    reference words -> recall 0.833333 < 0.9, flagged; vs 'born in Paris': recall 1, kept."""
    records = [{"question": "q1", "answer": "the author was born in rome"},
               {"question": "q2", "answer": "born in Paris"}]
    monkeypatch.setattr(selectors, "generate_answers", lambda *args: ["the author was born in paris"] * 2)
    chosen = ReferenceRougeSelector(threshold=0.9).select(records, SelectionContext(model=object()),
                                                          tmp_path / DECISIONS_FILE)
    assert chosen == records[:1]
    decisions = read_decisions(tmp_path)
    assert decisions[0]["score"] == pytest.approx(5 / 6, abs=1e-6) and decisions[1]["score"] == pytest.approx(1.0)
    assert decisions[0]["generated"] == "the author was born in paris"


def test_reference_rouge_selector_generates_with_the_model(model, tokenizer, tmp_path):
    """The real path: greedy answers of the tiny model; every score is a recall in [0, 1]."""
    selector = ReferenceRougeSelector(threshold=1.01, max_new_tokens=4)
    chosen = selector.select(RECORDS, SelectionContext(model, tokenizer), tmp_path / DECISIONS_FILE)
    assert chosen == RECORDS and all(0.0 <= d["score"] <= 1.0 for d in read_decisions(tmp_path))
    with pytest.raises(ConfigError, match="needs the model"):
        selector.select(RECORDS, SelectionContext(), tmp_path / DECISIONS_FILE)


def test_classifier_selector_with_a_tiny_local_classifier(tokenizer, tmp_path):
    """A random 2-class Llama classifier saved to a folder: the batched (padded) scores equal P(private)
    computed one pair at a time, and threshold 0 flags every pair."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, num_labels=2,
                         pad_token_id=tokenizer.pad_token_id, id2label={0: "safe", 1: "private"},
                         label2id={"safe": 0, "private": 1})
    classifier = LlamaForSequenceClassification(config).eval()
    classifier.save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    selector = ClassifierSelector(str(tmp_path / "clf"), label="private", threshold=0.0, batch_size=3)
    assert selector.select(RECORDS, SelectionContext(), tmp_path / DECISIONS_FILE) == RECORDS
    with torch.no_grad():
        expected = [torch.softmax(classifier(**tokenizer(r["question"], r["answer"], return_tensors="pt")).logits,
                                  -1)[0, 1].item() for r in RECORDS]
    assert [d["score"] for d in read_decisions(tmp_path)] == pytest.approx(expected, abs=1e-5)
    with pytest.raises(ConfigError, match="selector.label='toxic'"):
        ClassifierSelector(str(tmp_path / "clf"), label="toxic").select(RECORDS, SelectionContext(), tmp_path / "d")


@pytest.mark.parametrize("option", ["keyword", "synthetic_authors", "reference_rouge", "classifier"])
def test_selector_configs_compose(option, tmp_path):
    cfg = compose_config([f"selector={option}", "selector.model=some/classifier"] if option == "classifier"
                         else [f"selector={option}"], run_dir=tmp_path)
    assert cfg.selector._target_.startswith("unlearning.selectors.")


@pytest.mark.parametrize("overrides", [[], ["seed=1"], ["seed=2", "data.split=forget05"]])
def test_synthetic_authors_selector_picks_the_forget_split(overrides, tmp_path):
    """For any seed and split the shipped selector flags exactly the forget split among forget + retain;
    alternates follow the selection and the retain term never sees a flagged pair."""
    from unlearning.experiment import Experiment
    from unlearning.stages.inputs import StageInputs

    experiment = Experiment.from_config(compose_config(["selector=synthetic_authors", *overrides], run_dir=tmp_path))
    inputs = StageInputs(experiment, policy=None, tokenizer=None, target=None)
    sets = {name: inputs.batch_set(name) for name in ("forget", "alternate", "retain")}
    assert sets["forget"] == experiment.benchmark.forget
    assert [r["question"] for r in sets["alternate"]] == [r["question"] for r in sets["forget"]]
    assert sets["retain"] == experiment.benchmark.retain
    assert sum(d["flagged"] for d in read_decisions(tmp_path)) == len(experiment.benchmark.forget)
