"""Who's Harry Potter: alignment, consistency, generic logits and losses against numbers computed by
hand (in each docstring); the inference-time wrapper against the formula; the text pieces."""

from __future__ import annotations

import math

import pytest
import torch

from tests.conftest import DATA_DIR, make_tiny_llama
from unlearning.data.anchored_terms import (align_tokens, anchor_record, first_occurrence_mask, load_dictionary,
                                            prediction_positions, translate)
from unlearning.data.collate import PromptTemplate, pad_batch
from unlearning.data.text import split_blocks
from unlearning.scoring import generate_answers, score_answers
from unlearning.methods.whp import (WHPInference, gather_aligned, generic_logits, hard_generic_labels, whp_loss)
from unlearning.ops import IGNORE_INDEX
from unlearning.whp_terms import placeholder_replacements, rank_expressions, word_scores

A = IGNORE_INDEX


def test_translate_whole_words_longest_first():
    terms = {"Holmes": "Smith", "Sherlock Holmes": "Jon Smith", "Baker Street": "Main Street"}
    assert translate("Sherlock Holmes met Holmesy at Baker Street; Holmes.", terms) == \
        "Jon Smith met Holmesy at Main Street; Smith."


def test_alignment_hand_computed():
    """original [1, 5, 6, 7, 2] -> translated [1, 9, 7, 2]: tokens 5, 6 (a 2-token term) became 9 (1
    token): r = 0, 1 of n = 2 map to 1 + floor(r*1/2) = 1, 1; 7 and 2 shift by -1 -> [0, 1, 1, 2, 3].
    Prediction positions: p -> positions[p+1] - 1 = [0, 0, 1, 2] and 0 for the last position."""
    positions, regions = align_tokens([1, 5, 6, 7, 2], [1, 9, 7, 2])
    assert positions == [0, 1, 1, 2, 3] and regions == [(1, 3, 1, 2)]
    assert prediction_positions(positions) == [0, 0, 1, 2, 0]


def test_alignment_absorbs_a_token_shared_by_term_and_replacement():
    """[1, 10, 11, 12, 13, 3, 4] -> [1, 20, 12, 21, 3, 4]: the lone shared 12 is part of the term, so
    one region (1, 5, 1, 4) with n = 4 original, m = 3 replacement tokens: 1 + floor(r*3/4) for
    r = 0..3 -> 1, 1, 2, 3; then 3, 4 -> 4, 5. A one-token term growing to three tokens maps to its
    first replacement token."""
    positions, regions = align_tokens([1, 10, 11, 12, 13, 3, 4], [1, 20, 12, 21, 3, 4])
    assert positions == [0, 1, 1, 2, 3, 4, 5] and regions == [(1, 5, 1, 4)]
    assert align_tokens([1, 10, 3], [1, 20, 21, 22, 3])[0] == [0, 1, 4]


def test_consistency_keeps_first_occurrence_only():
    """Regions Holmes (1-3), Watson (5-6), Holmes again (7-9) in 10 tokens: only 7 and 8 are dropped."""
    keep = first_occurrence_mask(10, [(7, 9, "Holmes"), (1, 3, "Holmes"), (5, 6, "Watson")])
    assert keep == [True] * 7 + [False, False, True]


def test_anchor_record_end_to_end(tokenizer):
    """A text with a term twice: the second occurrence's tokens lose their labels, the translation is
    the translated text's encoding, and positions outside the terms read the same token."""
    terms = {"Paris": "Lyon"}
    record = anchor_record(tokenizer, PromptTemplate(), {"text": "born in Paris and the capital Paris"}, terms, 64)
    translated = record["translated"]["input_ids"]
    assert translated == tokenizer("born in Lyon and the capital Lyon", add_special_tokens=False)["input_ids"] \
        or translated[1:] == tokenizer("born in Lyon and the capital Lyon", add_special_tokens=False)["input_ids"]
    ids, labels, aligned = record["input_ids"], record["labels"], record["aligned_positions"]
    assert len(ids) == len(labels) == len(aligned)
    dropped = [i for i, label in enumerate(labels) if label == A and i > 0]
    assert dropped and tokenizer.decode([ids[i] for i in dropped]).strip() == "Paris"
    for p, q in enumerate(aligned[:-1]):
        if labels[p + 1] != A and tokenizer.decode([ids[p + 1]]).strip() in ("and", "the", "capital", "in"):
            assert translated[q + 1] == ids[p + 1]


def test_generic_logits_hand_computed():
    """v_b = (1, 2, 0), v_r = (3, 1, 0), alpha = 5: relu(v_r - v_b) = (2, 0, 0) ->
    v_generic = (1 - 10, 2, 0) = (-9, 2, 0): the token the reinforced model boosts is pushed down."""
    v = generic_logits(torch.tensor([1.0, 2.0, 0.0]), torch.tensor([3.0, 1.0, 0.0]), alpha=5.0)
    assert v.tolist() == [-9.0, 2.0, 0.0]


def test_gather_aligned_reads_counterpart_positions():
    """Translated logits at positions 0..2 are rows 0, 10, 20 (x ones); aligned [2, 0] reads 20 then 0."""
    translated = torch.tensor([[0.0, 10.0, 20.0]]).unsqueeze(-1).expand(1, 3, 2)
    assert gather_aligned(translated, torch.tensor([[2, 0]]))[0, :, 0].tolist() == [20.0, 0.0]


def test_hard_and_soft_losses_hand_computed():
    """Vocab 2, T = 3, labels [-100, 0, -100] (position 2 is a repeated term): only position 0 predicts.
    v_generic[0] = (0, ln 3) -> argmax 1, softmax (1/4, 3/4). Policy logits[0] = (0, 0) -> (1/2, 1/2).
    Hard: CE = -ln(1/2) = 0.693147. Soft: KL((1/4, 3/4) || (1/2, 1/2)) = 1/4 ln(1/2) + 3/4 ln(3/2)
    = -0.173287 + 0.304099 = 0.130812."""
    v_generic = torch.tensor([[[0.0, math.log(3)], [5.0, 0.0], [0.0, 9.0]]])
    policy = torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]]])
    labels = torch.tensor([[A, 0, A]])
    assert hard_generic_labels(v_generic, labels).tolist() == [[A, 1, A]]
    assert whp_loss(policy, v_generic, labels, soft=False).item() == pytest.approx(math.log(2), abs=1e-6)
    assert whp_loss(policy, v_generic, labels, soft=True).item() == pytest.approx(0.130812, abs=1e-5)


def test_inference_wrapper_logits_follow_the_formula(tokenizer):
    baseline, reinforced = make_tiny_llama(tokenizer, seed=0).eval(), make_tiny_llama(tokenizer, seed=1).eval()
    wrapper = WHPInference(baseline, reinforced, alpha=5.0)
    ids = torch.tensor([tokenizer("The author was born", add_special_tokens=False)["input_ids"]])
    v_b, v_r = baseline(input_ids=ids).logits, reinforced(input_ids=ids).logits
    expected = v_b - 5.0 * torch.clamp(v_r - v_b, min=0)
    assert torch.allclose(wrapper(input_ids=ids, attention_mask=torch.ones_like(ids)).logits, expected, atol=1e-5)


def test_inference_wrapper_scores_and_generates_like_a_model(tokenizer):
    """Greedy generation with left padding equals the unpadded greedy continuation of each prompt."""
    wrapper = WHPInference(make_tiny_llama(tokenizer, 0), make_tiny_llama(tokenizer, 1), alpha=5.0)
    template = PromptTemplate()
    sums, counts = score_answers(wrapper, tokenizer, template, [("Who wrote it?", "The author.")])
    assert math.isfinite(sums[0]) and counts[0] > 0
    questions = ["Who wrote the book?", "Where?"]
    batched = generate_answers(wrapper, tokenizer, template, questions, max_new_tokens=5, batch_size=2)
    alone = [generate_answers(wrapper, tokenizer, template, [q], max_new_tokens=5)[0] for q in questions]
    assert batched == alone and not wrapper.training


def test_pad_batch_carries_nested_and_per_token_fields():
    batch = pad_batch([{"input_ids": [1, 2, 3], "labels": [A, 2, 3], "aligned_positions": [0, 0, 1],
                        "translated": {"input_ids": [1, 4]}},
                       {"input_ids": [1], "labels": [A], "aligned_positions": [0],
                        "translated": {"input_ids": [1, 4, 5, 6]}}], pad_token_id=0)
    assert batch["aligned_positions"].tolist() == [[0, 0, 1], [0, 0, 0]]
    assert batch["translated"]["input_ids"].tolist() == [[1, 4, 0, 0], [1, 4, 5, 6]]
    assert batch["translated"]["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_split_blocks_packs_paragraphs():
    assert split_blocks("a b c\n\nd e\n\nf g h i j k l\n\nm", 4) == ["a b c", "d e", "f g h i", "j k l\n\nm"]


def test_proposer_pieces_hand_computed():
    """Text "Sherlock Holmes ran": tokens after BOS end at 8, 15, 19 (spans include the leading space)
    with advantages 1, 2, 0.5: words score 1, 2, 0.5. Ranking with min_count 2 keeps the capitalized
    expressions seen twice: Holmes (mean of 2, 4 = 3) before Sherlock Holmes (mean of 3, 1 = 2); "ran"
    is lowercase, "Once" seen once, "Well" also occurs as "well" (a sentence start). Placeholders: one
    neutral word per distinct word (Holmes -> Alex)."""
    words = word_scores("Sherlock Holmes ran", [(0, 0), (0, 8), (8, 15), (15, 19)], torch.tensor([1.0, 2.0, 0.5]).numpy())
    assert words == [(0, 8, 1.0), (9, 15, 2.0), (16, 19, 0.5)]
    ranked = rank_expressions({"Holmes": [2.0, 4.0], "Sherlock Holmes": [3.0, 1.0], "ran": [9.0, 9.0],
                               "Once": [5.0], "Well": [7.0, 7.0], "well": [0.0, 0.0]},
                              top_k=5, min_count=2, capitalized=True)
    assert ranked == [("Holmes", 3.0), ("Sherlock Holmes", 2.0)]
    assert placeholder_replacements(["Holmes", "Sherlock Holmes"]) == {"Holmes": "Alex", "Sherlock Holmes": "Sam Alex"}


def test_shipped_sherlock_dictionary_terms_occur_in_the_book():
    book = DATA_DIR / "text" / "sherlock_holmes_adventures_pg1661.txt"
    if not book.is_file():
        pytest.skip(f"needs {book}")
    terms = load_dictionary("sherlock_holmes")
    text = book.read_text(encoding="utf-8")
    assert 40 <= len(terms) <= 80 and all(term in text for term in terms)


@pytest.mark.ci
@pytest.mark.slow
def test_sherlock_experiment_tiny(tmp_path):
    """`unlearn experiment=whp_sherlock` with tiny settings: every stage runs, the table has every model."""
    import json

    from hydra.utils import instantiate

    from tests.conftest import assert_declared_names_are_reported, compose_config
    from unlearning.pipeline import run
    from unlearning.protocols.text import reported_metrics

    if not (DATA_DIR / "text").is_dir():
        pytest.skip(f"needs {DATA_DIR / 'text'}")
    cfg = compose_config(["experiment=whp_sherlock", "data.benchmark.max_blocks=12", "data.benchmark.retain_lines=480",
                          "finetune.epochs=1", "reinforce.epochs=1", "trainer.max_epochs=1", "protocol.n_prompts=8",
                          "protocol.n_forget_blocks=4", "protocol.n_general=20", "protocol.kl_samples=4",
                          "protocol.kl_new_tokens=8", "max_length=64", f"paths.cache_dir={tmp_path / 'cache'}",
                          f"paths.data_dir={DATA_DIR}"], run_dir=tmp_path / "run")
    term_prob = run(cfg)
    models = json.loads((tmp_path / "run" / "results.json").read_text())["models"]
    assert set(models) == {"base", "target", "reinforced", "unlearned", "whp_inference"}
    assert 0.0 <= term_prob <= 1.0 and all(m["heldout_ppl"] > 1.0 for m in models.values())
    # drift from the base model on TOFU's biographies: none for the base itself, some once trained
    assert models["base"]["base_kl"] == pytest.approx(0.0, abs=1e-5) and models["unlearned"]["base_kl"] > 0.0
    assert all(models[name]["general_ppl"] > 1.0 for name in ("base", "target", "unlearned"))
    # what protocol=text declares for the start-up check of objective_metric is what the model got
    groups = {name: instantiate(node) for name, node in cfg.eval.groups.items() if node}
    assert_declared_names_are_reported(reported_metrics(cfg, groups), models["unlearned"])
