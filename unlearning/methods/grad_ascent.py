"""Gradient ascent on the forget set (the baseline of every unlearning paper; e.g. TOFU, arXiv 2401.06121).

    L_forget = -NLL_mean(y | x)

Maximising the answer NLL is unbounded, which is why utility collapses with long training; GradDiff is
this objective with `retain=nll`.
"""

from __future__ import annotations

import torch

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import mean_token_nll


def grad_ascent_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Negative mean token NLL of the labelled (answer) tokens."""
    return -mean_token_nll(logits, labels)


class GradAscent(Objective):
    def forward(self, policy, batch):
        forget = batch["forget"]
        return grad_ascent_loss(forward_logits(policy, forget), forget["labels"])
