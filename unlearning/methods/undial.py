"""UnDIAL: "UNDIAL: Self-Distillation with Adjusted Logits for Robust Unlearning in Large Language Models"
(Dong, Lin, Belkin, Huerta, Vulic 2024, arXiv 2402.10052), and its focused variant FUnDIAL.

    p~_t = softmax(z_ref,t - strength * onehot(y_t)),    L_forget = sum_t w_t CE(p~_t, p_theta,t) / sum_t w_t

over the answer tokens (prompt and padding have w_t = 0). The teacher is the frozen model before
unlearning with the answer token's logit lowered, a fixed target: the loss is minimised, never
maximised, so training converges instead of diverging. `strength` is the paper's gamma (renamed: gamma
is this term's weight in the total loss).

UnDIAL weighs every answer token alike (w_t = 1). FUnDIAL focuses on chosen tokens (the paper: key tokens
such as entities and nouns). The objective has no tokenizer, so `focus: min_k` is our
tokenizer-free reading: in each answer, the ceil(focus_fraction * |y|) tokens the teacher finds least
likely get w_t = focus_weight. As in Min-K% Prob (Shi et al. 2023, arXiv 2310.16789), those are the
tokens that carry the sample's own information (names, places, titles), while function words and
template phrases are predictable from the language alone. A fixed probability threshold would not do:
the finetuned target gives 98% of the synthetic forget answers' tokens p > 0.5, yet their Min-K% tokens
are mostly the sub-words of names, places and titles.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.errors import ConfigError
from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import next_token_targets, soft_cross_entropy, token_logprobs

FOCUS_CRITERIA = (None, "min_k")


def min_k_focus_weights(ref_logp: torch.Tensor, mask: torch.Tensor, fraction: float,
                        focus_weight: float) -> torch.Tensor:
    """Per-token weights [B, T]: focus_weight on the ceil(fraction * n) lowest-`ref_logp` labelled tokens
    of each row (n its labelled count), 1 on the other labelled tokens, 0 on unlabelled ones."""
    ranks = ref_logp.masked_fill(~mask, float("inf")).argsort(dim=-1, stable=True).argsort(dim=-1)
    focused = ranks < (fraction * mask.sum(-1, keepdim=True)).ceil()
    return mask * torch.where(focused, focus_weight, 1.0)


def undial_loss(policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, strength: float,
                focus_fraction: float = 0.0, focus_weight: float = 1.0) -> torch.Tensor:
    """Weighted mean over answer tokens of CE(p~_t, p_theta,t); by default every token weighs 1 (UnDIAL)."""
    policy, targets, mask = next_token_targets(policy_logits, labels)
    ref, _, _ = next_token_targets(ref_logits, labels)
    adjusted = ref - strength * F.one_hot(targets, ref.size(-1)).to(ref.dtype)
    ref_logp, _ = token_logprobs(ref_logits, labels)
    weights = min_k_focus_weights(ref_logp, mask, focus_fraction, focus_weight)
    # Normalised by the weights, not the token count: FUnDIAL keeps UnDIAL's loss scale (same gamma, lr).
    return (soft_cross_entropy(policy, adjusted) * weights).sum() / weights.sum().clamp(min=1e-12)


class UnDIAL(Objective):
    frozen_models = ("ref",)

    def __init__(self, strength: float = 10.0, focus: str | None = None, focus_fraction: float = 0.4,
                 focus_weight: float = 3.0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        if focus not in FOCUS_CRITERIA:
            raise ConfigError(f"method.focus={focus!r} is not one of {list(FOCUS_CRITERIA)}")
        if not 0.0 <= focus_fraction <= 1.0 or focus_weight <= 0:
            raise ConfigError(f"method.focus_fraction={focus_fraction} must be in [0, 1] and "
                              f"method.focus_weight={focus_weight} positive")
        self.strength = strength
        self.focus_fraction = focus_fraction if focus == "min_k" else 0.0
        self.focus_weight = focus_weight

    def forward(self, policy, batch, ref):
        forget = batch["forget"]
        with torch.no_grad():
            ref_logits = forward_logits(ref, forget)
        return undial_loss(forward_logits(policy, forget), ref_logits, forget["labels"], self.strength,
                           self.focus_fraction, self.focus_weight)
