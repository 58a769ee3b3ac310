"""DPO with a refusal as the preferred answer: TOFU's IdkDPO ("TOFU: A Task of Fictitious Unlearning for
LLMs", Maini, Feng, Schwarzschild, Lipton, Kolter 2024, arXiv 2401.06121) on the DPO loss ("Direct
Preference Optimization: Your Language Model is Secretly a Reward Model", Rafailov et al. 2023,
arXiv 2305.18290).

    L_forget = -(2/beta) * mean_i log sigmoid(beta * [(log p_theta - log p_ref)(y_w) - (log p_theta - log p_ref)(y_l)])

y_w = the alternate answer (a refusal to the same question, batch key "alternate"), y_l = the forget
answer; sequence log-probs summed over answer tokens. The 2/beta scale follows the unlearning
literature (it makes the loss comparable to NPO, which is this loss without y_w).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.data import alternates  # noqa: F401  (provides the "alternate" batch set read below)
from unlearning.methods.base import Objective, policy_and_reference_logp


def dpo_loss(policy_win: torch.Tensor, ref_win: torch.Tensor, policy_lose: torch.Tensor, ref_lose: torch.Tensor,
             beta: float) -> torch.Tensor:
    """DPO on per-sequence log-probs [B] of the preferred (win) and dispreferred (lose) answers."""
    margin = (policy_win - ref_win) - (policy_lose - ref_lose)
    return -(2.0 / beta) * F.logsigmoid(beta * margin).mean()


class DPO(Objective):
    frozen_models = ("ref",)
    batch_keys = ("forget", "alternate")

    def __init__(self, beta: float = 0.1, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.beta = beta

    def forward(self, policy, batch, ref):
        policy_win, ref_win = policy_and_reference_logp(policy, ref, batch["alternate"])
        policy_lose, ref_lose = policy_and_reference_logp(policy, ref, batch["forget"])
        return dpo_loss(policy_win, ref_win, policy_lose, ref_lose, self.beta)
