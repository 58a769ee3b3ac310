"""CE-U: "CE-U: Cross Entropy Unlearning" (Bo Yang 2025, arXiv 2503.01224).

    q_t = softmax(sg(z_t) with z_t[y_t] := -inf),    L_forget = mean_t CE(q_t, softmax(z_t))

over the answer tokens. The target is the model's own distribution with the answer token removed, so
the gradient on the logits, softmax(z_t) - q_t, is bounded: it lowers y_t by p_t (vanishing once the
token is forgotten, unlike gradient ascent's 1/p_t) and redistributes the mass over the other tokens
as the model already ranks them. That gradient is exactly the gradient of unlikelihood,
-log(1 - p_t) (unlikelihood.py): the two losses differ by H(q_t), a constant under the stop-gradient,
so both methods train identically, unless `ignore_first_n_answer_tokens` drops the first answer
tokens from the mean (open-unlearning's CE-U uses 1; the default 0 keeps every answer token).
"""

from __future__ import annotations

import torch

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import masked_mean, next_token_targets, soft_cross_entropy, without_targets


def ceu_target_logits(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The target's logits: sg(z) with each position's target token at -inf (zero target mass)."""
    return without_targets(logits.detach(), targets)


def without_first_labelled(mask: torch.Tensor, n: int) -> torch.Tensor:
    """`mask` [B, T] with the first `n` labelled positions of each row switched off."""
    return mask & (mask.cumsum(dim=1) > n)


def ceu_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_first_n_answer_tokens: int = 0) -> torch.Tensor:
    logits, targets, mask = next_token_targets(logits, labels)
    mask = without_first_labelled(mask, ignore_first_n_answer_tokens)
    return masked_mean(soft_cross_entropy(logits, ceu_target_logits(logits, targets)), mask)


class CEU(Objective):
    def __init__(self, ignore_first_n_answer_tokens: int = 0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.ignore_first_n_answer_tokens = ignore_first_n_answer_tokens

    def forward(self, policy, batch):
        forget = batch["forget"]
        return ceu_loss(forward_logits(policy, forget), forget["labels"], self.ignore_first_n_answer_tokens)
