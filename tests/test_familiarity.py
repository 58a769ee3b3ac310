"""WHP familiarity: the judge and the completion score by hand, the group on a tiny model."""

from __future__ import annotations

import pytest

from unlearning.data.benchmark import QABenchmark
from unlearning.data.collate import PromptTemplate
from unlearning.errors import ConfigError
from unlearning.evaluation.familiarity import Familiarity, KeywordJudge, completion_familiarity


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
    evaluation = Familiarity(str(terms), max_new_tokens=4).evaluate(model, tokenizer, PromptTemplate(), benchmark)
    assert set(evaluation.aggregates) == {"familiarity_term_first_token_prob", "familiarity_term_prob",
                                          "familiarity_completion_familiarity"}
    assert evaluation.per_example["term"] == [" Paris", " Rome"]
    assert all(0.0 <= v <= 1.0 for v in evaluation.aggregates.values())
    assert model.training


def test_dictionary_is_required():
    with pytest.raises(ConfigError, match="familiarity.anchored_terms"):
        Familiarity(None)
