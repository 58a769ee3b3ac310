"""SimNPO: "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"
(Fan, Liu, Lin, Jia, Zhang, Mei, Liu 2024, arXiv 2410.07163).

    L_forget = -(2/beta) * mean_i log sigmoid(beta * (NLL_sum(y_i|x_i) / |y_i| - delta))

NPO without the reference model: the length-normalised NLL replaces the log-ratio to p_ref, so long
answers are not pushed harder than short ones and no frozen copy is needed. Minimising it raises the
NLL, and the sigmoid saturates once the mean token NLL is well above delta.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import sequence_logprob


def simnpo_loss(policy_logp: torch.Tensor, lengths: torch.Tensor, beta: float, delta: float) -> torch.Tensor:
    """SimNPO on per-sequence summed answer log-probs [B] and answer lengths [B]."""
    mean_nll = -policy_logp / lengths.clamp(min=1)
    return -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta)).mean()


class SimNPO(Objective):
    def __init__(self, beta: float = 4.5, delta: float = 0.0, gamma: float = 0.125) -> None:
        super().__init__(gamma)
        self.beta = beta
        self.delta = delta

    def forward(self, policy, batch):
        forget = batch["forget"]
        policy_logp, lengths = sequence_logprob(forward_logits(policy, forget), forget["labels"])
        return simnpo_loss(policy_logp, lengths, self.beta, self.delta)
