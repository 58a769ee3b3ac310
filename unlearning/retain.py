"""Retain regularizers: the `alpha * L_retain` term, independent of the forget objective.

Any method combines with any regularizer (`method=grad_ascent retain=nll` is GradDiff), so no method
carries retain code of its own.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from unlearning.errors import ConfigError
from unlearning.methods.base import decoder_layer_output, forward_logits
from unlearning.ops import IGNORE_INDEX, kl_to_reference, masked_mse, mean_token_nll


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
    """Stay close to the model before unlearning on retain answers: KL(p_ref || p_theta) per token,
    averaged over `positions` ("answer": the answer tokens; "all": every position of the batch, as TOFU
    and open-unlearning do, see `kl_to_reference`)."""

    frozen_models = ("ref",)

    def __init__(self, alpha: float = 1.0, positions: str = "answer") -> None:
        super().__init__(alpha)
        if positions not in ("answer", "all"):
            raise ConfigError(f"retain.positions={positions!r}: expected 'answer' or 'all'")
        self.positions = positions

    def forward(self, policy, batch, ref):
        retain = batch["retain"]
        with torch.no_grad():
            ref_logits = forward_logits(ref, retain)
        return kl_to_reference(forward_logits(policy, retain), ref_logits, retain["labels"], self.positions)


class ActivationRetain(RetainRegularizer):
    """Keep the retain answers' hidden states where they were: MSE between the outputs of decoder layer
    `layer` under the policy and under the frozen model before unlearning (RMU's retain term, WMDP,
    arXiv 2403.03218). The paper's alpha = 1200 suits Zephyr-7B; on the default tiny model, whose
    forget and retain answers share a template and one 128-unit layer, even alpha = 10 nearly stops
    RMU's forgetting within the default 5 epochs, so alpha defaults to 1 here."""

    frozen_models = ("ref",)

    def __init__(self, alpha: float = 1.0, layer: int = 1) -> None:
        super().__init__(alpha)
        self.layer = layer

    def forward(self, policy, batch, ref):
        retain = batch["retain"]
        with torch.no_grad():
            frozen_hidden = decoder_layer_output(ref, retain, self.layer)
        hidden = decoder_layer_output(policy, retain, self.layer)
        return masked_mse(hidden, frozen_hidden, retain["labels"] != IGNORE_INDEX)
