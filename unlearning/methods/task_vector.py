"""Task-vector negation (Ilharco et al. 2023, "Editing Models with Task Arithmetic", arXiv 2212.04089;
the WHP paper's baseline, arXiv 2310.02238).

    theta_unlearned = theta - lambda * (theta_reinforced - theta)

The reinforced model (the target further trained on the forget set, a cached pipeline stage shared
with WHP) points from the target toward more of the forget knowledge; stepping the other way removes
it. A weight edit, not a loss: `prepare` applies it before training, and `forward` adds nothing, so
any epochs that follow only apply the retain regularizer (use `retain=none trainer.max_epochs=0` for
the pure edit).
"""

from __future__ import annotations

import torch

from unlearning.errors import ConfigError
from unlearning.lora import is_lora
from unlearning.methods.base import Objective


def negate_task_vector(theta: torch.Tensor, reinforced: torch.Tensor, scale: float) -> torch.Tensor:
    """theta - scale * (reinforced - theta)."""
    return theta - scale * (reinforced - theta)


class TaskVector(Objective):
    frozen_models = ("reinforced",)

    def __init__(self, scale: float = 1.0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        self.scale = scale

    @torch.no_grad()
    def prepare(self, policy, reinforced):
        if is_lora(policy):  # the edit is to the base weights, which LoRA freezes and its adapter would not save
            raise ConfigError("method=task_vector edits every weight of the model: run it with model.lora=null")
        reinforced_params = dict(reinforced.named_parameters())
        for name, param in policy.named_parameters():
            param.copy_(negate_task_vector(param, reinforced_params[name], self.scale))

    def forward(self, policy, batch, reinforced):
        # The edit is done; a zero that still belongs to the graph (one parameter is enough, not a sum
        # over all of them every step) keeps the training loop uniform.
        return next(p for p in policy.parameters() if p.requires_grad).sum() * 0.0
