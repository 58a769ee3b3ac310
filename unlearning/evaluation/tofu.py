"""TOFU metrics (Maini et al. 2024, arXiv 2401.06121), as the paper's reference code computes them.

The pure functions take numpy arrays so they can be checked by hand and reused on saved scores; the
batched model functions produce those arrays with one forward pass per padded batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
from scipy import stats
from tqdm.auto import tqdm

from unlearning.data.collate import PromptTemplate
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.scoring import generate_answers, n_batches, rouge_l_recall, score_answers
from unlearning.sharding import evaluation_ranks

TOFU_SETS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SETS = ("retain", "real_authors", "world_facts")
MULTIPLE_CHOICE_SETS = ("real_authors", "world_facts")
METRICS = ("prob", "rouge", "truth_ratio")


# ---------------------------------------------------------------------------------------------- pure


def normalized_probability(logp_sum, n_tokens) -> np.ndarray:
    """P̄(a|q) = P(a|q)^(1/|a|) = exp(logp_sum / |a|): per-token, so answers of any length compare."""
    return np.exp(np.asarray(logp_sum, dtype=float) / np.asarray(n_tokens, dtype=float))


def multiple_choice_probability(true_norm_prob, perturbed_norm_prob) -> np.ndarray:
    """P̄(a) / (P̄(a) + Σ_k P̄(â_k)) per example: the mass on the true answer among the k+1 options.

    Used on real authors / world facts, where a general model's absolute P̄ says little.
    """
    true = np.asarray(true_norm_prob, dtype=float)
    return true / (true + np.asarray(perturbed_norm_prob, dtype=float).sum(-1))


def truth_ratio(perturbed_norm_logp, reference_norm_logp) -> np.ndarray:
    """R = geomean_k P̄(â_k) / P̄(ã) = exp(mean_k log P̄(â_k) − log P̄(ã)) per example.

    Inputs are length-normalized log-probs ([n, k] and [n]). ã is the paraphrased answer (forget,
    retain) or the original answer (real authors, world facts): R < 1 means the model prefers it.
    """
    perturbed = np.asarray(perturbed_norm_logp, dtype=float)
    return np.exp(perturbed.mean(-1) - np.asarray(reference_norm_logp, dtype=float))


def forget_truth_score(ratios) -> float:
    """mean(min(R, 1/R)): 1 when the model cannot tell true from false, as a model never trained on it."""
    r = np.asarray(ratios, dtype=float)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def utility_truth_score(ratios) -> float:
    """mean(max(0, 1 − R)): how strongly the model prefers the correct answer over perturbed ones."""
    return float(np.mean(np.maximum(0.0, 1.0 - np.asarray(ratios, dtype=float))))


def forget_quality(r_unlearned, r_retain_model) -> float:
    """KS-test p-value of the raw forget-set truth ratios of the unlearned vs the retain model.

    High means indistinguishable from a model that never saw the forget set.
    """
    return float(stats.ks_2samp(np.asarray(r_unlearned), np.asarray(r_retain_model)).pvalue)


def model_utility(values: Mapping[str, float]) -> float:
    """Harmonic mean of {prob, rouge, truth_ratio} × {retain, real_authors, world_facts}.

    `values` holds flat keys like `retain_prob` (extra keys are ignored). A zero anywhere gives 0, the
    limit of the harmonic mean, which scipy would otherwise warn about.
    """
    picked = [float(values[f"{s}_{m}"]) for s in UTILITY_SETS for m in METRICS]
    return 0.0 if min(picked) <= 0.0 else float(stats.hmean(picked))


# --------------------------------------------------------------------------------------------- model


@dataclass
class TofuEvaluation:
    """aggregates: flat `{set}_{metric}` (+ `model_utility`); per_example: per set, per metric lists;
    forget_truth_ratios: raw R on the forget set, kept to compute forget quality against another model."""

    aggregates: dict[str, float]
    per_example: dict[str, dict[str, list]]
    forget_truth_ratios: np.ndarray


def _flatten(records: list[dict]) -> tuple[list[tuple[str, str]], list[tuple[int, int, int]]]:
    """Every answer variant as a (question, answer) pair, and per record (start, reference, end) offsets.

    Layout per record: answer, paraphrased answer when present, perturbed answers; the truth-ratio
    reference is the paraphrase when there is one, else the answer itself.
    """
    pairs, layout = [], []
    for r in records:
        has_para = r.get("paraphrased_answer") is not None
        texts = [r["answer"], *([r["paraphrased_answer"]] if has_para else []), *r["perturbed_answer"]]
        layout.append((len(pairs), len(pairs) + int(has_para), len(pairs) + len(texts)))
        pairs.extend((r["question"], t) for t in texts)
    return pairs, layout


def _prob_and_truth_ratio(name: str, logp: np.ndarray, counts: np.ndarray,
                          layout: list[tuple[int, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Per-record probability (plain on forget/retain, multiple-choice elsewhere) and raw truth ratio."""
    starts, refs, ends = (np.array(column) for column in zip(*layout))
    perturbed = np.array([np.arange(ref + 1, end) for ref, end in zip(refs, ends)])  # [n, k] indices
    prob = normalized_probability(logp[starts], counts[starts])
    if name in MULTIPLE_CHOICE_SETS:
        prob = multiple_choice_probability(prob, normalized_probability(logp[perturbed], counts[perturbed]))
    norm_logp = logp / counts
    return prob, truth_ratio(norm_logp[perturbed], norm_logp[refs])


def evaluate_tofu(model, tokenizer, template: PromptTemplate, eval_sets: Mapping[str, list[dict]],
                  batch_size: int = 32, max_length: int = 512, max_new_tokens: int = 200,
                  progress: bool = False, generate: bool = True,
                  budget_counts_prompt: bool = False) -> TofuEvaluation:
    """Probability, ROUGE-L recall and truth ratio on each present TOFU set, and model utility.

    `generate=False` skips generation (no ROUGE, no model utility): forward passes only, the cheap
    subset evaluated during training. `budget_counts_prompt`: see `generate_answers`."""
    unknown = set(eval_sets) - set(TOFU_SETS)
    if unknown:
        raise ValueError(f"unknown TOFU eval sets {sorted(unknown)}; expected a subset of {TOFU_SETS}")
    sets = {name: eval_sets[name] for name in TOFU_SETS if eval_sets.get(name)}
    flat = {name: _flatten(records) for name, records in sets.items()}
    # one bar over every forward and generate call: scoring batches plus generation batches per set
    total = sum(n_batches(len(flat[n][0]), batch_size) + generate * n_batches(len(r), batch_size)
                for n, r in sets.items())
    aggregates, per_example, forget_ratios = {}, {}, np.zeros(0)
    # every set in one call per primitive, each set batched as if alone: under data-parallel evaluation a
    # call ends by waiting for its slowest rank, and one call over all sets' batches keeps the ranks even
    pairs = [pair for name in sets for pair in flat[name][0]]
    sizes = [len(flat[name][0]) for name in sets]
    with tqdm(total=total, disable=not progress or evaluation_ranks()[0] > 0, desc="TOFU eval") as bar:  # one bar
        logp, counts = score_answers(model, tokenizer, template, pairs, batch_size, max_length, bar, segments=sizes)
        if generate:
            questions = [r["question"] for records in sets.values() for r in records]
            generations = generate_answers(model, tokenizer, template, questions, max_new_tokens, batch_size, bar,
                                           budget_counts_prompt, segments=[len(r) for r in sets.values()])
            rouge = rouge_l_recall(generations, [r["answer"] for records in sets.values() for r in records])
    pair_start, record_start = 0, 0
    for name, records in sets.items():
        pair_end, record_end = pair_start + len(flat[name][0]), record_start + len(records)
        prob, ratios = _prob_and_truth_ratio(name, logp[pair_start:pair_end], counts[pair_start:pair_end],
                                             flat[name][1])
        score = forget_truth_score if name == "forget" else utility_truth_score
        aggregates.update({f"{name}_prob": float(prob.mean()), f"{name}_truth_ratio": score(ratios)})
        per_example[name] = {"prob": prob.tolist(), "truth_ratio": ratios.tolist()}
        if generate:
            set_rouge = rouge[record_start:record_end]
            aggregates[f"{name}_rouge"] = float(set_rouge.mean())
            per_example[name].update(rouge=set_rouge.tolist(), generation=generations[record_start:record_end])
        if name == "forget":
            forget_ratios = ratios
        pair_start, record_start = pair_end, record_end
    if generate and all(name in sets for name in UTILITY_SETS):
        aggregates["model_utility"] = model_utility(aggregates)
    return TofuEvaluation(aggregates, per_example, forget_ratios)


class TofuMetrics(MetricGroup):
    """The TOFU metrics as a metric group; forget quality comes from `compare` against the retain model.

    max_examples: evaluate only the first N records of each set; generate=False: forward passes only
    (probability and truth ratio), the cheap subset used during training; budget_counts_prompt:
    `max_new_tokens` bounds prompt + answer (TOFU's own generation) instead of the answer alone.
    """

    name = "tofu"
    # the table's columns, in this order (the other aggregates are in results.json)
    columns = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge",
               "retain_prob", "retain_rouge", "retain_truth_ratio")

    def __init__(self, batch_size: int = 32, max_new_tokens: int = 200, max_length: int = 512,
                 max_examples: int | None = None, generate: bool = True, progress: bool = True,
                 budget_counts_prompt: bool = False) -> None:
        self.batch_size = batch_size
        self.max_new_tokens = max_new_tokens
        self.max_length = max_length
        self.max_examples = max_examples
        self.generate = generate
        self.progress = progress
        self.budget_counts_prompt = budget_counts_prompt

    def eval_sets(self, benchmark) -> dict[str, list[dict]]:
        return {name: records[: self.max_examples] if self.max_examples else records
                for name, records in benchmark.eval_sets().items()}

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        result = evaluate_tofu(model, tokenizer, template, self.eval_sets(benchmark), self.batch_size,
                               self.max_length, self.max_new_tokens, self.progress, self.generate,
                               self.budget_counts_prompt)
        return Evaluation(result.aggregates, result.per_example,
                          {"forget_truth_ratio": result.forget_truth_ratios.tolist()})

    def result_names(self, compared: bool) -> tuple[str, ...]:
        metrics = ("prob", "truth_ratio", *(("rouge",) if self.generate else ()))
        names = [f"{name}_{metric}" for name in TOFU_SETS for metric in metrics]
        return (*names, *(("model_utility",) if self.generate else ()), *(("forget_quality",) if compared else ()))

    def compare(self, evaluations, reference):
        if reference is None:
            return {}
        ratios = evaluations[reference].raw["forget_truth_ratio"]
        return {name: {"forget_quality": forget_quality(e.raw["forget_truth_ratio"], ratios)}
                for name, e in evaluations.items()}
