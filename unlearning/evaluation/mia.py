"""Membership inference against the forget set: can an attacker tell forget answers (members, label 1)
from holdout answers (never trained on, label 0)? A model that never saw the forget set scores an
ROC-AUC near 0.5; the finetuned target scores near 1.

Every attack reads the answer tokens given the question (answer-only labels). Scores are kept as
their papers define them; the AUC (sklearn.metrics.roc_auc_score) orients each so higher = member:
- loss: mean answer NLL (Yeom et al. 2018, arXiv 1709.01604); lower = member.
- zlib: loss / zlib-compressed byte length of the answer text (Carlini et al. 2021, arXiv 2012.07805);
  lower = member.
- min_k: Min-K% Prob, −mean of the lowest k% token log-probs (Shi et al. 2024, arXiv 2310.16789);
  lower = member.
- min_k_plus_plus: Min-K%++ (Zhang et al. 2024, arXiv 2404.02936): per token
  z_t = (log p(x_t) − μ_t) / σ_t with μ_t = Σ_v p_v log p_v and σ_t² = Σ_v p_v (log p_v)² − μ_t²,
  then the mean of the lowest k% of z; higher = member.
- gradient_norm: ‖∇_θ loss‖₂ of the example alone (members sit near a minimum); lower = member.
- reference (in `compare`): loss minus the reference model's loss on the same example (Carlini et al.
  2021's reference-model comparison); lower = member.
"""

from __future__ import annotations

import zlib
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from unlearning.data.benchmark import DataError
from unlearning.data.collate import PromptTemplate, encode_qa, encode_record
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.scoring import eval_mode, score_tokens
from unlearning.sharding import map_sharded
from unlearning.ops import mean_token_nll, next_token_targets

ATTACKS = ("loss", "zlib", "min_k", "min_k_plus_plus", "gradient_norm")
# +1: a higher score means "member"; -1: a lower one does (the loss-like scores).
MEMBER_SIGN = {"loss": -1, "zlib": -1, "min_k": -1, "min_k_plus_plus": 1, "gradient_norm": -1, "reference": -1}


# ---------------------------------------------------------------------------------------------- pure


def lowest_fraction_mean(values, k: float) -> float:
    """Mean of the lowest ⌊k·n⌋ of n values, at least one (the reference code's int(n·k) would average
    nothing, i.e. NaN, for answers shorter than 1/k tokens)."""
    ordered = np.sort(np.asarray(values, dtype=float))
    return float(ordered[:max(1, int(len(ordered) * k))].mean())


def min_k_percent(token_logprobs, k: float = 0.4) -> float:
    """Min-K% Prob: −mean of the lowest k% token log-probs."""
    return -lowest_fraction_mean(token_logprobs, k)


def min_k_plus_plus(normalized_logprobs, k: float = 0.4) -> float:
    """Min-K%++: mean of the lowest k% of the per-token z-scores of `normalized_token_logprobs`."""
    return lowest_fraction_mean(normalized_logprobs, k)


def normalized_token_logprobs(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """(log p(x_t) − μ_t) / σ_t per position from the next-token log-distribution [..., V] and the
    target ids [...]: how far above its expectation under the model the target's log-prob is."""
    probs = log_probs.exp()
    mu = (probs * log_probs).sum(-1)
    variance = (probs * log_probs.square()).sum(-1) - mu.square()
    target = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    # A one-hot distribution has σ = 0 and its target at μ: 0 rather than 0/0.
    return (target - mu) / variance.clamp_min(1e-12).sqrt()


def mean_nll(token_logprobs) -> float:
    """The loss attack: −mean log-prob of the answer tokens."""
    return -float(np.mean(token_logprobs))


def zlib_ratio(loss: float, text: str) -> float:
    """loss / zlib-compressed length of the UTF-8 text in bytes: loss relative to the text's entropy."""
    return loss / len(zlib.compress(text.encode("utf-8")))


def gradient_norm(grads: Sequence[torch.Tensor]) -> float:
    """L2 norm of all gradients taken as one vector."""
    return float(torch.sqrt(sum(g.double().square().sum() for g in grads)))


def membership_auc(member_scores, nonmember_scores) -> float:
    """ROC-AUC of telling members (label 1) from non-members (label 0) by a score, higher = member."""
    member, nonmember = np.asarray(member_scores, dtype=float), np.asarray(nonmember_scores, dtype=float)
    labels = np.concatenate([np.ones(len(member)), np.zeros(len(nonmember))])
    return float(roc_auc_score(labels, np.concatenate([member, nonmember])))


def attack_auc(attack: str, forget_scores, holdout_scores) -> float:
    """`membership_auc` of forget vs holdout with the attack's score oriented so higher = member."""
    sign = MEMBER_SIGN[attack]
    return membership_auc(sign * np.asarray(forget_scores), sign * np.asarray(holdout_scores))


# --------------------------------------------------------------------------------------------- model


def logprob_and_normalized(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per labelled next token, [log p(x_t), Min-K%++ z-score] stacked on the last dimension, and the mask."""
    logits, targets, mask = next_token_targets(logits, labels)
    log_probs = torch.log_softmax(logits, dim=-1)
    target = log_probs.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return torch.stack([target, normalized_token_logprobs(log_probs, targets)], dim=-1), mask


def labelled_token_values(model, tokenizer, template: PromptTemplate, records: Sequence[dict],
                          token_values: Callable, batch_size: int = 32, max_length: int = 512) -> list[np.ndarray]:
    """`token_values` at the labelled tokens of each record: the answer of a QA record (`question`,
    `answer`), every token after BOS of a text record (`text`). Each record must keep a labelled token."""
    encoded = map_sharded(lambda record: encode_record(tokenizer, template, record, max_length), records)
    values = score_tokens(model, tokenizer, encoded, batch_size, token_values=token_values)
    for record, v in zip(records, values):
        if len(v) == 0:  # a mean over no token is NaN in every score downstream
            raise ValueError(f"record {str(record)[:80]!r} has no labelled token within max_length={max_length}")
    return values


def example_gradient_norms(model, tokenizer, template: PromptTemplate, records: Sequence[dict],
                           max_length: int = 512) -> np.ndarray:
    """‖∇_θ mean answer NLL‖₂ of each QA record alone, in eval mode (no dropout), over every parameter.

    torch.autograd.grad returns the gradients without writing `.grad`, so nothing is left to zero; the
    parameters' requires_grad flags are switched on for the measurement and restored after.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]

    def norm(r: dict) -> float:
        example = encode_qa(tokenizer, template, r["question"], r["answer"], max_length)
        input_ids = torch.tensor([example["input_ids"]], device=model.device)
        labels = torch.tensor([example["labels"]], device=model.device)
        loss = mean_token_nll(model(input_ids=input_ids, use_cache=False).logits, labels)
        return gradient_norm(torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True))

    try:
        for p in params:
            p.requires_grad_(True)
        with eval_mode(model), torch.enable_grad():
            return np.array(map_sharded(norm, records))  # data-parallel evaluation: a share of the records per rank
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)


class MembershipInference(MetricGroup):
    """ROC-AUC of each attack separating benchmark.forget (members) from benchmark.holdout: aggregates
    `mia_<attack>_auc`, plus `mia_reference_auc` from `compare` (loss minus the reference model's loss).

    k: the Min-K% / Min-K%++ fraction; attacks: a subset of ATTACKS (gradient_norm costs one backward
    pass per example); max_examples: only the first N records of each set.
    """

    name = "mia"

    def __init__(self, k: float = 0.4, attacks: Sequence[str] = ATTACKS, batch_size: int = 32,
                 max_length: int = 512, max_examples: int | None = None) -> None:
        unknown = sorted(set(attacks) - set(ATTACKS))
        if unknown:
            raise ConfigError(f"mia.attacks: unknown {unknown}; valid: {', '.join(ATTACKS)}")
        if not 0 < k <= 1:
            raise ConfigError(f"mia.k={k} must be in (0, 1]")
        self.k, self.attacks = k, tuple(attacks)
        self.batch_size, self.max_length, self.max_examples = batch_size, max_length, max_examples

    def scores(self, model, tokenizer, template: PromptTemplate, records: Sequence[dict]) -> dict[str, np.ndarray]:
        """Every configured attack's per-record score, and always `loss` (the reference attack reads it)."""
        tokens = labelled_token_values(model, tokenizer, template, records, logprob_and_normalized,
                                       self.batch_size, self.max_length)
        loss = np.array([mean_nll(t[:, 0]) for t in tokens])
        scores = {"loss": loss}
        if "zlib" in self.attacks:
            scores["zlib"] = np.array([zlib_ratio(l, r["answer"]) for l, r in zip(loss, records)])
        if "min_k" in self.attacks:
            scores["min_k"] = np.array([min_k_percent(t[:, 0], self.k) for t in tokens])
        if "min_k_plus_plus" in self.attacks:
            scores["min_k_plus_plus"] = np.array([min_k_plus_plus(t[:, 1], self.k) for t in tokens])
        if "gradient_norm" in self.attacks:
            scores["gradient_norm"] = example_gradient_norms(model, tokenizer, template, records, self.max_length)
        return scores

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        if not benchmark.holdout:
            raise DataError(f"{benchmark.name}: split 'holdout' is empty; membership inference needs it")
        limit = self.max_examples or None
        scores = {name: self.scores(model, tokenizer, template, records[:limit])
                  for name, records in (("forget", benchmark.forget), ("holdout", benchmark.holdout))}
        aggregates = {f"mia_{attack}_auc": attack_auc(attack, scores["forget"][attack], scores["holdout"][attack])
                      for attack in self.attacks}
        per_example = {name: {attack: values.tolist() for attack, values in s.items()} for name, s in scores.items()}
        return Evaluation(aggregates, per_example, {f"{name}_loss": s["loss"].tolist() for name, s in scores.items()})

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return (*(f"mia_{attack}_auc" for attack in self.attacks), *(("mia_reference_auc",) if compared else ()))

    def compare(self, evaluations: Mapping[str, Evaluation], reference: str | None) -> dict[str, dict[str, float]]:
        if reference is None:
            return {}
        ref = evaluations[reference].raw
        return {name: {"mia_reference_auc": attack_auc(
                    "reference", np.subtract(e.raw["forget_loss"], ref["forget_loss"]),
                    np.subtract(e.raw["holdout_loss"], ref["holdout_loss"]))}
                for name, e in evaluations.items()}
