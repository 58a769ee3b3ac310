"""WHP familiarity: the judge and the completion score by hand, the group on a tiny model."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from tests.conftest import assert_declared_names_are_reported
from unlearning.data.benchmark import QABenchmark
from unlearning.data.collate import PromptTemplate
from unlearning.errors import ConfigError
from unlearning.evaluation.familiarity import Familiarity, KeywordJudge, completion_familiarity
from unlearning.evaluation.text import TextMetrics


def test_keyword_judge_labels():
    judge = KeywordJudge({"Holmes": "Smith", "Baker Street": "Main Street"}, theme_words=["detective"])
    assert judge("ctx", "and then Holmes said", " Holmes") == "explicit"
    assert judge("ctx", "he walked down Baker Street", " Watson") == "explicit"  # any anchored term counts
    assert judge("ctx", "the Detective smiled", " Holmes") == "thematic"
    assert judge("ctx", "the cat sat", " Holmes") == "none"


def test_completion_familiarity_hand_computed():
    """explicit 1 + thematic 0.5 + none 0 + none 0 over 4 = 0.375; no completion -> 0."""
    assert completion_familiarity(["explicit", "thematic", "none", "none"]) == pytest.approx(0.375)
    assert completion_familiarity([]) == 0.0


def test_group_on_a_tiny_model(model, tokenizer, tmp_path):
    terms = tmp_path / "terms.yaml"
    terms.write_text("Paris: Lyon\nRome: Turin\n")
    qa = [{"question": "Where was she born?", "answer": "She was born in Paris near Rome."}]
    mc = [{"question": "q", "answer": "a", "perturbed_answer": ["b"]}]
    perturbed = [{**qa[0], "paraphrased_answer": "a", "perturbed_answer": ["b"]}]  # a perturbed split matches its split
    benchmark = QABenchmark("tiny", full=qa, retain=qa, forget=qa, forget_perturbed=perturbed,
                            retain_perturbed=perturbed, real_authors=mc, world_facts=mc)
    group = Familiarity(str(terms), max_new_tokens=4)
    evaluation = group.evaluate(model, tokenizer, PromptTemplate(), benchmark)
    assert_declared_names_are_reported(group.result_names(compared=True), evaluation.aggregates)
    assert set(evaluation.aggregates) == {"familiarity_term_first_token_prob", "familiarity_term_prob",
                                          "familiarity_completion_familiarity"}
    assert evaluation.per_example["term"] == [" Paris", " Rome"]
    assert all(0.0 <= v <= 1.0 for v in evaluation.aggregates.values())
    assert model.training


def test_dictionary_is_required():
    with pytest.raises(ConfigError, match="familiarity.anchored_terms"):
        Familiarity(None)


def test_text_table_reports_what_it_declares(model, tokenizer):
    """protocol=text's own group (term probabilities and perplexities): its names are its columns."""
    text = "She was born in Paris near Rome. Her father lived in Rome and her mother in Paris."
    corpus = SimpleNamespace(forget=[{"text": text}], heldout=[{"text": "The capital of Italy is Rome."}])
    group = TextMetrics({"Paris": "Lyon", "Rome": "Turin"}, context_words=5, batch_size=2, max_length=64)
    evaluation = group.evaluate(model, tokenizer, PromptTemplate(), corpus)
    assert all(value > 0 for value in evaluation.aggregates.values())
    assert_declared_names_are_reported(group.result_names(compared=False), evaluation.aggregates)
