"""SatImp: "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning"
(Yang, Wang, Huang, Liu, Zhang, Han 2025, arXiv 2505.11953).

    w_t = sg(p_t^beta1 * (1 - p_t)^beta2),    L_forget = mean_t w_t * log p_t,    p_t = p_theta(y_t | x, y_<t)

over the answer tokens of the batch. p^beta1 is the "saturation" term (little weight on tokens already
unlearned), (1 - p)^beta2 the "importance" term (little weight on tokens the model finds trivially
predictable); the product concentrates the ascent on tokens in between.
"""

from __future__ import annotations

import torch

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import masked_mean, token_logprobs


def satimp_loss(logits: torch.Tensor, labels: torch.Tensor, beta1: float, beta2: float) -> torch.Tensor:
    logp, mask = token_logprobs(logits, labels)
    p = logp.detach().exp()
    return masked_mean(p.pow(beta1) * (1 - p).pow(beta2) * logp, mask)


class SatImp(Objective):
    def __init__(self, beta1: float = 5.0, beta2: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.beta1 = beta1
        self.beta2 = beta2

    def forward(self, policy, batch):
        forget = batch["forget"]
        return satimp_loss(forward_logits(policy, forget), forget["labels"], self.beta1, self.beta2)
