"""The objective contract: one small module per unlearning method.

An objective computes the forget term from the policy, a batch and (when it declares `needs_ref`) a
frozen reference model. It never builds a model or a data loader: the `UnlearningModule` and the data
module read its class-level declarations and provide those pieces.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn


def forward_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a causal LM on a padded batch (`input_ids`, `attention_mask`)."""
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


class Objective(nn.Module):
    """Base of every forget objective.

    needs_ref: a frozen copy of the model before unlearning is passed as `ref`.
    batch_keys: the named sub-batches the objective reads (the data module provides them).
    gamma: the weight of this term in `gamma * forget + alpha * retain`.
    """

    needs_ref: ClassVar[bool] = False
    batch_keys: ClassVar[tuple[str, ...]] = ("forget",)

    def __init__(self, gamma: float = 1.0) -> None:
        super().__init__()
        self.gamma = gamma

    def forward(self, policy: nn.Module, batch: dict, ref: nn.Module | None = None) -> torch.Tensor:
        raise NotImplementedError
