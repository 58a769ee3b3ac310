"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868).

    L_forget = -(2/beta) * mean_i log sigmoid(-beta * [log p_theta(y_i|x_i) - log p_ref(y_i|x_i)])

with sequence log-probs summed over answer tokens. DPO with only a losing answer: the loss saturates as
p_theta drops below p_ref, so unlike gradient ascent it cannot diverge. At p_theta = p_ref it equals
(2/beta) * ln 2.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.base import Objective, policy_and_reference_logp


def npo_loss(policy_logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """NPO on per-sequence log-probs [B] of the policy and the frozen reference."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (policy_logp - ref_logp)).mean()


class NPO(Objective):
    frozen_models = ("ref",)

    def __init__(self, beta: float = 0.1, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.beta = beta

    def forward(self, policy, batch, ref):
        policy_logp, ref_logp = policy_and_reference_logp(policy, ref, batch["forget"])
        return npo_loss(policy_logp, ref_logp, self.beta)
