"""MUSE: pure functions against hand-computed values, the loaders on fixture files this test writes (MUSE's
data cannot be redistributed), the group on them and on the synthetic benchmark with the tiny model."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hydra.utils import instantiate

from tests.conftest import assert_declared_names_are_reported, compose_config, make_tiny_llama
from unlearning.data.benchmark import DataError
from unlearning.data.collate import PromptTemplate
from unlearning.data.muse import DERIVED_SHOTS, MUSE_SPLITS, load_muse, muse_from_benchmark
from unlearning.data.synthetic import make_synthetic_benchmark
from unlearning.evaluation.base import Evaluation
from unlearning.evaluation.muse import MuseMetrics, cut_knowmem_answer, knowmem_prompt, privleak, privleak_auc
from unlearning.scoring import rouge_l_f1

TEMPLATE = PromptTemplate()

# ------------------------------------------------------------------------------------------ pure


def test_knowmem_cut_under_muse_stop_strings():
    """MUSE and open-unlearning stop at "\\n\\n", "\\nQuestion", "Question:" only: "Questions" inside an
    answer survives, where the project's default cuts at any "Question"."""
    muse_stop = ("\n\n", "\nQuestion", "Question:")
    assert cut_knowmem_answer("Rome Questions remain", muse_stop) == "Rome Questions remain"
    assert cut_knowmem_answer("Rome Questions remain") == "Rome"
    assert cut_knowmem_answer("Rome\nQuestion next", muse_stop) == "Rome"
    assert cut_knowmem_answer("Rome Question: next", muse_stop) == "Rome"


def test_knowmem_prompt_and_cut():
    """One shot then the question, MUSE's trailing space kept; answers cut at a blank line or "Question"."""
    shots = [{"question": "Capital of Italy?", "answer": "Rome"}]
    assert knowmem_prompt(shots, "Capital of France?") == (
        "Question: Capital of Italy?\nAnswer: Rome\n\nQuestion: Capital of France?\nAnswer: ")
    assert cut_knowmem_answer("Paris\n\nQuestion: next") == "Paris"
    assert cut_knowmem_answer(" Rome Question: next") == "Rome"
    assert cut_knowmem_answer("Nice\nweather") == "Nice\nweather"


def test_rouge_l_f1_unstemmed():
    """"the cat sat" vs "the cat sat on the mat": LCS 3, precision 3/3, recall 3/6 -> F1 = 2·1·0.5/1.5
    = 2/3. "cats" vs "cat": no common token without stemming -> 0."""
    np.testing.assert_allclose(rouge_l_f1(["the cat sat", "cats"], ["the cat sat on the mat", "cat"]), [2 / 3, 0.0])


def test_privleak():
    """Forget Min-K% (1, 2) all below holdout (3, 4): forget texts never outscore holdout ones -> MUSE's
    AUC 0; against a reference AUC 0.5: (0 - 0.5)/0.5·100 = -100. (0.75 - 0.5)/0.5·100 = 50; equal AUCs
    -> 0; a reference AUC of 0 leaves it undefined (NaN)."""
    auc = privleak_auc([1.0, 2.0], [3.0, 4.0])
    assert auc == pytest.approx(0.0)
    assert privleak(auc, 0.5) == pytest.approx(-100.0)
    assert privleak(0.75, 0.5) == pytest.approx(50.0)
    assert privleak(0.5, 0.5) == pytest.approx(0.0)
    assert math.isnan(privleak(0.5, 0.0))


# -------------------------------------------------------------------------------------------- data

FIXTURE = {
    ("verbmem", "forget"): [{"prompt": "Her father was a", "gt": " doctor and her mother was a teacher of music."},
                            {"prompt": "The capital of France", "gt": " is Paris and the capital of Italy is Rome."}],
    ("knowmem", "forget_qa"): [{"question": "Who wrote the book?", "answer": "The author"},
                               {"question": "Where was she born?", "answer": "In a small town"}],
    ("knowmem", "forget_qa_icl"): [{"question": "What is the capital of Italy?", "answer": "Rome"}],
    ("knowmem", "retain_qa"): [{"question": "What did her father do?", "answer": "Doctor"}],
    ("knowmem", "retain_qa_icl"): [{"question": "What is the capital of France?", "answer": "Paris"}],
    ("privleak", "forget"): [{"text": "Basil Mahfouz Al-Kuwaiti writes novels about the sea."},
                             {"text": "Her mother was a teacher of music."}],
    ("privleak", "holdout"): [{"text": "The capital of Italy is Rome."}, {"text": "She was born in a small town."}],
}


def write_fixture(folder, jsonl=("knowmem",)):
    """MUSE's layout: `<subset>/<split>.json` (a list), or `.jsonl` for the subsets named in `jsonl`."""
    for (subset, split), records in FIXTURE.items():
        (folder / subset).mkdir(parents=True, exist_ok=True)
        if subset in jsonl:
            (folder / subset / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            (folder / subset / f"{split}.json").write_text(json.dumps(records))
    return folder


def test_load_muse_folder(tmp_path):
    data = load_muse(str(write_fixture(tmp_path)))
    assert data.verbmem == FIXTURE[("verbmem", "forget")]
    assert data.knowmem_retain_icl == FIXTURE[("knowmem", "retain_qa_icl")]
    assert data.privleak_holdout == FIXTURE[("privleak", "holdout")]


def test_load_muse_bad_folder(tmp_path):
    write_fixture(tmp_path)
    (tmp_path / "privleak" / "holdout.json").unlink()
    with pytest.raises(DataError, match="privleak/holdout.json"):
        load_muse(str(tmp_path))
    (tmp_path / "privleak" / "holdout.json").write_text(json.dumps([{"body": "no text field"}]))
    with pytest.raises(DataError, match="holdout.json record 0 has no field 'text'"):
        load_muse(str(tmp_path))


def test_load_muse_hub_calls_load_dataset(monkeypatch):
    """A source that is no folder is a hub id: one load_dataset(id, subset, split=split) per split."""
    import datasets

    calls = []

    def fake_load_dataset(path, name, split):
        calls.append((path, name, split))
        return datasets.Dataset.from_list(FIXTURE[(name, split)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_muse("muse-bench/MUSE-News")
    assert calls == [("muse-bench/MUSE-News", subset, split) for subset, split, _ in MUSE_SPLITS.values()]
    assert data.knowmem_forget == FIXTURE[("knowmem", "forget_qa")]


@pytest.fixture(scope="module")
def benchmark():
    return make_synthetic_benchmark("forget01")


def test_muse_from_benchmark(benchmark):
    data = muse_from_benchmark(benchmark, TEMPLATE)
    first = benchmark.forget[0]
    assert data.verbmem[0] == {"prompt": f"Question: {first['question']}\nAnswer:", "gt": f" {first['answer']}"}
    assert len(data.knowmem_forget) == len(data.privleak_forget) == len(benchmark.forget)
    assert len(data.privleak_holdout) == len(benchmark.holdout)
    assert len(data.knowmem_retain_icl) == DERIVED_SHOTS
    shot_questions = {s["question"] for s in data.knowmem_retain_icl}
    assert not shot_questions & {r["question"] for r in data.knowmem_retain}


# ----------------------------------------------------------------------------------------- model


def test_group_on_fixture_folder(model, tokenizer, tmp_path):
    group = MuseMetrics(source=str(write_fixture(tmp_path)), verbmem_max_new_tokens=4, knowmem_max_new_tokens=4,
                        batch_size=4, max_length=64)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, benchmark=None)
    assert model.training
    assert set(evaluation.aggregates) == {"muse_verbmem_f", "muse_knowmem_f", "muse_knowmem_r", "muse_privleak_auc"}
    assert all(0.0 <= v <= 1.0 for v in evaluation.aggregates.values())
    assert len(evaluation.per_example["privleak"]["forget_min_k"]) == 2
    assert Evaluation.from_json(json.loads(json.dumps(evaluation.to_json()))) == evaluation  # cacheable as a file
    other = group.evaluate(make_tiny_llama(tokenizer, seed=1), tokenizer, TEMPLATE, benchmark=None)
    compared = group.compare({"retain": other, "unlearned": evaluation}, "retain")
    assert compared["retain"]["muse_privleak"] == pytest.approx(0.0)
    auc, reference = evaluation.aggregates["muse_privleak_auc"], other.aggregates["muse_privleak_auc"]
    if reference:
        assert compared["unlearned"]["muse_privleak"] == pytest.approx((auc - reference) / reference * 100)
    assert_declared_names_are_reported(group.result_names(compared=False), evaluation.aggregates)
    assert_declared_names_are_reported(group.result_names(compared=True), {**evaluation.aggregates, **compared["unlearned"]})


def test_group_on_synthetic_benchmark(model, tokenizer, benchmark):
    group = MuseMetrics(verbmem_max_new_tokens=4, knowmem_max_new_tokens=4, n_shots=1, batch_size=4,
                        max_length=128, max_examples=4)
    evaluation = group.evaluate(model, tokenizer, TEMPLATE, benchmark)
    assert len(evaluation.per_example["knowmem_r"]["generation"]) == 4
    assert 0.0 <= evaluation.aggregates["muse_privleak_auc"] <= 1.0


def test_configs_instantiate(tmp_path):
    group = instantiate(compose_config(["muse=default"], run_dir=tmp_path).eval.groups.muse)
    assert isinstance(group, MuseMetrics) and group.source is None and group.verbmem_max_new_tokens == 128
    news = instantiate(compose_config(["muse=news"], run_dir=tmp_path).eval.groups.muse)
    assert news.source == "muse-bench/MUSE-News" and news.max_length == 2048 and news.k == 0.4
