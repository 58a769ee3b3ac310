"""Item 3: what batching buys the TOFU evaluation, and that it changes no number.

(a) The full evaluation of the forget set (every answer variant scored + greedy generation for ROUGE)
with the evaluation config's batch size vs batch size 1; both must give the same aggregates.
(b) Scoring alone (probability and truth ratio) by `evaluate_tofu` vs the straightforward
implementation written here, as one would write it from the paper: each answer variant (original,
paraphrased, each perturbed) in its own unpadded forward pass, log-probs summed by hand. Both must give
the same truth ratios within 1e-4 (relative), which checks that padding and batching leave them alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from benchmarks.report import Section, agreement
from benchmarks.timing import Variant, time_interleaved
from benchmarks.workload import Workload
from unlearning.data.collate import PromptTemplate, encode_qa

TOLERANCE = 1e-4


@torch.no_grad()
def one_forward_per_answer(model, tokenizer, template: PromptTemplate, records: list[dict],
                           max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Per record: P(a|q)^(1/|a|) of the original answer and the truth ratio
    R = exp(mean_k mean log p(perturbed_k) - mean log p(paraphrased)), each answer in its own forward pass."""

    def mean_answer_logprob(question: str, answer: str) -> float:
        encoded = encode_qa(tokenizer, template, question, answer, max_length)
        logits = model(input_ids=torch.tensor([encoded["input_ids"]])).logits[0, :-1]
        targets = torch.tensor(encoded["labels"][1:])
        answer_positions = targets != -100
        logp = torch.log_softmax(logits[answer_positions].double(), dim=-1)
        return float(logp.gather(-1, targets[answer_positions, None]).mean())

    probs, ratios = [], []
    for record in records:
        question = record["question"]
        probs.append(np.exp(mean_answer_logprob(question, record["answer"])))
        perturbed = [mean_answer_logprob(question, answer) for answer in record["perturbed_answer"]]
        ratios.append(np.exp(np.mean(perturbed) - mean_answer_logprob(question, record["paraphrased_answer"])))
    return np.array(probs), np.array(ratios)


def max_relative_difference(a, b) -> float:
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1e-12)))


def measure(workload: Workload, log_dir: Path) -> Section:
    settings, config = workload.settings, workload.config
    tofu = config.eval.groups.tofu
    records = workload.forget_perturbed[:settings.eval_records]
    model, tokenizer, template = workload.eval_model, workload.tokenizer, workload.template

    def ours(batch_size: int, generate: bool) -> Variant:
        return Variant(lambda _: workload.evaluate_forget(records, batch_size, generate))

    full = time_interleaved({"batched": ours(tofu.batch_size, True), "single": ours(1, True)},
                            settings.repeats, settings.warmup)
    scoring = time_interleaved(
        {"ours": ours(tofu.batch_size, False),
         "straightforward": Variant(lambda _: one_forward_per_answer(model, tokenizer, template, records,
                                                                     config.max_length))},
        settings.repeats, settings.warmup)

    batched, single = full["batched"].result.aggregates, full["single"].result.aggregates
    same_aggregates = {k: round(v, 4) for k, v in batched.items()} == {k: round(v, 4) for k, v in single.items()}
    ours_forget = scoring["ours"].result.per_example["forget"]
    straight_prob, straight_ratio = scoring["straightforward"].result
    ratio_difference = max_relative_difference(ours_forget["truth_ratio"], straight_ratio)
    prob_difference = max_relative_difference(ours_forget["prob"], straight_prob)
    agree = ratio_difference <= TOLERANCE and prob_difference <= TOLERANCE
    return Section(
        title="3. TOFU evaluation: batched vs one example at a time, ours vs one forward per answer",
        summary=(f"The first {len(records)} TOFU forget10 records (7 answer variants each), the real stories260K, "
                 f"evaluation config: batch size {tofu.batch_size}, {tofu.max_new_tokens} generated tokens, "
                 f"max_length {config.max_length}; median of {settings.repeats} interleaved repeats after "
                 f"{settings.warmup} warm-up."),
        columns=["comparison", "ours s", "baseline s", "baseline / ours", "same numbers"],
        rows=[
            [f"full evaluation (scores + generation): batch {tofu.batch_size} vs batch 1",
             f"{full['batched'].median:.2f}", f"{full['single'].median:.2f}",
             f"{full['single'].median / full['batched'].median:.1f}x",
             agreement(same_aggregates, "aggregates to 4 decimals")],
            ["scoring (prob, truth ratio): `evaluate_tofu` vs one forward pass per answer variant",
             f"{scoring['ours'].median:.2f}", f"{scoring['straightforward'].median:.2f}",
             f"{scoring['straightforward'].median / scoring['ours'].median:.1f}x",
             agreement(agree, f"max relative difference: truth ratio {ratio_difference:.1e}, "
                              f"prob {prob_difference:.1e}; tolerance {TOLERANCE:.0e}")],
        ],
    )
