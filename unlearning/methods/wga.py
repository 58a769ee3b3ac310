"""Weighted Gradient Ascent: "Rethinking LLM Unlearning Objectives: A Gradient Perspective and Go Beyond"
(Wang, Zhou, Zhou, Shin, Han, Weinberger 2025, arXiv 2502.19301).

    w_t = sg(p_theta(y_t | x, y_<t))^beta,    L_forget = mean_t w_t * log p_theta(y_t | x, y_<t)

over the answer tokens of the batch. Gradient ascent's gradient on log p_t scales with 1/p_t, so tokens
already unlearned (small p_t) dominate and utility collapses; the stop-gradient weight p_t^beta cancels
that, shifting the push to tokens the model still predicts.
"""

from __future__ import annotations

import torch

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import masked_mean, token_logprobs


def wga_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float) -> torch.Tensor:
    logp, mask = token_logprobs(logits, labels)
    weights = logp.detach().exp().pow(beta)
    return masked_mean(weights * logp, mask)


class WGA(Objective):
    def __init__(self, beta: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.beta = beta

    def forward(self, policy, batch):
        forget = batch["forget"]
        return wga_loss(forward_logits(policy, forget), forget["labels"], self.beta)
