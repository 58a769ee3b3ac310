"""The synthetic TOFU-schema benchmark: determinism, split sizes, schema, and the two-wording design."""

from __future__ import annotations

import re
from collections import defaultdict
from functools import lru_cache

import pytest

from unlearning.data.benchmark import DataError, QABenchmark
from unlearning.data.synthetic import ATTRIBUTES, make_synthetic_benchmark

PLACEHOLDER = "PLACEHOLDERVALUE"


@lru_cache(maxsize=None)
def bench(split: str = "forget10", seed: int = 0) -> QABenchmark:
    return make_synthetic_benchmark(split=split, seed=seed)


def _regex(text: str) -> re.Pattern:
    """`text` with the placeholder turned into a capture group."""
    return re.compile(re.escape(text).replace(PLACEHOLDER, "(.+)"))


def _parse_question(question: str) -> tuple[int, str]:
    """(attribute index, author name) of a generated question; exactly one attribute template must match."""
    matches = [(k, m.group(1)) for k, a in enumerate(ATTRIBUTES)
               if (m := _regex(a.question.format(name=PLACEHOLDER)).fullmatch(question))]
    assert len(matches) == 1, question
    return matches[0]


def _parse_answer(kind: int, name: str, answer: str) -> tuple[int, str]:
    """(wording index, value) of an answer; exactly one of the attribute's two wordings must match."""
    matches = [(w, m.group(1)) for w, template in enumerate(ATTRIBUTES[kind].wordings)
               if (m := _regex(template.format(name=name, value=PLACEHOLDER)).fullmatch(answer))]
    assert len(matches) == 1, answer
    return matches[0]


def test_same_arguments_give_identical_output_and_seed_changes_authors():
    a = make_synthetic_benchmark(seed=3)
    b = make_synthetic_benchmark(seed=3)
    assert a == b
    other = make_synthetic_benchmark(seed=4)
    assert a.full[0]["question"] != other.full[0]["question"]
    assert {r["question"] for r in a.full}.isdisjoint(r["question"] for r in other.full)


@pytest.mark.parametrize("split,n_forget", [("forget01", 20), ("forget05", 100), ("forget10", 200)])
def test_split_sizes_and_forget_is_the_tail_of_full(split, n_forget):
    b = bench(split)
    assert b.name == f"synthetic-{split}-seed0"
    assert len(b.full) == 2000
    assert len(b.forget) == len(b.forget_perturbed) == n_forget
    assert b.retain + b.forget == b.full
    assert len(b.holdout) == n_forget
    assert len(b.retain_perturbed) == 200
    assert len(b.real_authors) == 60 and len(b.world_facts) == 84
    assert len(b.pretrain) == 60 + 84


def test_full_does_not_depend_on_the_split():
    assert bench("forget01").full == bench("forget10").full
    assert bench("forget01").world_facts == bench("forget10").world_facts


def test_schema_is_validated_and_records_match_their_splits():
    b = bench()
    b.validate()
    assert [{"question": r["question"], "answer": r["answer"]} for r in b.forget_perturbed] == b.forget
    retain = {(r["question"], r["answer"]) for r in b.retain}
    assert all((r["question"], r["answer"]) in retain for r in b.retain_perturbed)
    assert all(r["paraphrased_question"] != r["question"] for r in b.forget_perturbed + b.retain_perturbed)
    assert b.pretrain == [{"question": r["question"], "answer": r["answer"]} for r in b.real_authors + b.world_facts]


def test_retain_perturbed_is_spread_over_retain_authors():
    b = bench()
    names = {_parse_question(r["question"])[1] for r in b.retain_perturbed}
    assert len(names) > 150


def test_author_names_are_unique_and_each_author_has_distinct_attributes():
    questions = defaultdict(list)
    for r in bench().full:
        kind, name = _parse_question(r["question"])
        questions[name].append(kind)
    assert len(questions) == 200
    assert all(len(kinds) == len(set(kinds)) == 10 for kinds in questions.values())


def test_paraphrase_and_perturbations_use_the_other_wording_seen_in_training():
    b = bench()
    trained_by = defaultdict(set)  # (attribute, wording) -> names whose training answer uses it
    for r in b.full:
        kind, name = _parse_question(r["question"])
        trained_by[kind, _parse_answer(kind, name, r["answer"])[0]].add(name)
    for r in b.forget_perturbed + b.retain_perturbed:
        kind, name = _parse_question(r["question"])
        wording, value = _parse_answer(kind, name, r["answer"])
        other, paraphrased_value = _parse_answer(kind, name, r["paraphrased_answer"])
        assert other != wording and paraphrased_value == value
        assert trained_by[kind, other] - {name}, "the other wording must be a training answer elsewhere"
        perturbed = [_parse_answer(kind, name, p) for p in r["perturbed_answer"]]
        assert len(perturbed) == 5
        assert all(w == other and v != value for w, v in perturbed)
        assert len(set(r["perturbed_answer"]) | {r["paraphrased_answer"]}) == 6


def test_holdout_authors_are_not_in_full():
    b = bench()
    full_names = {_parse_question(r["question"])[1] for r in b.full}
    holdout_names = {_parse_question(r["question"])[1] for r in b.holdout}
    assert len(holdout_names) == 20 and holdout_names.isdisjoint(full_names)


@pytest.mark.parametrize("split", ["real_authors", "world_facts"])
def test_multiple_choice_options_contain_the_answer_exactly_once(split):
    for r in getattr(bench(), split):
        options = [r[f"option{i}"] for i in range(1, 5)]
        assert options.count(r["answer"]) == 1
        assert len(set(options)) == 4
        assert sorted(options) == sorted([r["answer"], *r["perturbed_answer"]])


def test_real_author_names_are_not_finetuning_authors():
    b = bench()
    full_names = {_parse_question(r["question"])[1] for r in b.full}
    assert full_names.isdisjoint(r["answer"] for r in b.real_authors)


def test_bad_split_raises_naming_it():
    with pytest.raises(DataError, match="forget20") as info:
        make_synthetic_benchmark(split="forget20")
    assert "forget10" in str(info.value) and "\n" not in str(info.value)
