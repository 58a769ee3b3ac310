"""Retain regularizers: the `alpha * L_retain` term, independent of the forget objective.

Any method combines with any regularizer (`method=grad_ascent retain=nll` is GradDiff), so no method
carries retain code of its own.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from unlearning.methods.base import forward_logits
from unlearning.ops import kl_to_reference, mean_token_nll


class RetainRegularizer(nn.Module):
    """Base: reads the `retain` sub-batch; `alpha` weighs it against the forget term."""

    frozen_models: ClassVar[tuple[str, ...]] = ()
    batch_keys: ClassVar[tuple[str, ...]] = ("retain",)

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, policy: nn.Module, batch: dict, **frozen: nn.Module) -> torch.Tensor:
        raise NotImplementedError


class NLLRetain(RetainRegularizer):
    """Keep fitting the retain answers: mean token NLL (GradDiff's retain term)."""

    def forward(self, policy, batch):
        retain = batch["retain"]
        return mean_token_nll(forward_logits(policy, retain), retain["labels"])


class KLRetain(RetainRegularizer):
    """Stay close to the model before unlearning on retain answers: KL(p_ref || p_theta) per token."""

    frozen_models = ("ref",)

    def forward(self, policy, batch, ref):
        retain = batch["retain"]
        with torch.no_grad():
            ref_logits = forward_logits(ref, retain)
        return kl_to_reference(forward_logits(policy, retain), ref_logits, retain["labels"])
