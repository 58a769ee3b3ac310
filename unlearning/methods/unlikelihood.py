"""Unlikelihood on the forget answers, MOLLM's "unlearning cross-entropy": "Multi-Objective Large Language
Model Unlearning" (Pan, Zhang, Zheng, Li, Cheng, Zhao 2024, arXiv 2412.20412).

    L_forget = mean_t -log(1 - p_theta(y_t | x, y_<t))

over the answer tokens. Unlike gradient ascent (-log p, gradient 1/p that explodes as p -> 0), its
gradient vanishes once a token is unlikely, so the loss has a floor of 0 and cannot diverge. Its
gradient on the logits, softmax(z_t) - softmax(z_t without y_t), is CE-U's (ce_u.py). Only the
objective is implemented; MOLLM's multiple-gradient combination is `combiner=min_norm`.
"""

from __future__ import annotations

import torch

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import masked_mean, next_token_targets, without_targets


def unlikelihood_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    logits, targets, mask = next_token_targets(logits, labels)
    # log(1 - p_y) = logsumexp over the other tokens - logsumexp over all: exact, and finite as p_y -> 1,
    # where log1p(-p_y) would round to log(0).
    log_not_target = without_targets(logits, targets).logsumexp(-1) - logits.logsumexp(-1)
    return masked_mean(-log_not_target, mask)


class Unlikelihood(Objective):
    def forward(self, policy, batch):
        forget = batch["forget"]
        return unlikelihood_loss(forward_logits(policy, forget), forget["labels"])
