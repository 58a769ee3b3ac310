"""The objective contract: one small module per unlearning method.

An objective computes the forget term from the policy, a batch and the frozen models it declares
(`frozen_models`, passed to `forward` as keyword arguments by name: "ref" is the model before
unlearning, "reinforced" the WHP reinforced model). It never builds a model or a data loader: the
`UnlearningModule`, the pipeline and the data module read its declarations and provide those pieces.
"""

from __future__ import annotations

import re
from typing import ClassVar

import torch
from torch import nn

from unlearning.errors import ConfigError
from unlearning.ops import sequence_logprob


def forward_logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    """Logits of a causal LM on a padded batch (`input_ids`, `attention_mask`)."""
    return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits


def policy_and_reference_logp(policy: nn.Module, ref: nn.Module,
                              inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probs [B] (`sequence_logprob`) of one sub-batch under the policy and, without
    gradient, the frozen reference: (policy_logp, ref_logp).

    The order matters for memory: the reference runs first, and its [B, T, V] logits are reduced to [B]
    and freed before the policy's forward, whose activations are then held for backward. Run after the
    policy, the reference's logits would sit on top of those activations and raise the peak.
    """
    with torch.no_grad():
        ref_logp, _ = sequence_logprob(forward_logits(ref, inputs), inputs["labels"])
    policy_logp, _ = sequence_logprob(forward_logits(policy, inputs), inputs["labels"])
    return policy_logp, ref_logp


def decoder_layer_output(model: nn.Module, inputs: dict[str, torch.Tensor], layer: int) -> torch.Tensor:
    """The residual stream [B, T, H] leaving decoder layer `layer` (0-based, a module named `*.layers.<i>`).

    Read with a forward hook: `output_hidden_states` would do for inner layers, but transformers
    replaces the last layer's entry with the final-norm output, which is not that layer's output.
    """
    name = re.compile(rf"(^|\.)layers\.{layer}$")
    block = next((module for path, module in model.named_modules() if name.search(path)), None)
    if block is None:
        raise ConfigError(f"layer={layer}: the model has no decoder layer named '*.layers.{layer}'")
    captured = []
    handle = block.register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output))
    try:
        forward_logits(model, inputs)
    finally:
        handle.remove()
    return captured[0]


class Objective(nn.Module):
    """Base of every forget objective.

    frozen_models: the frozen models `forward` receives by keyword ("ref", "reinforced").
    batch_keys: the named sub-batches the objective reads, primary (iterated) key first; the pipeline
        provides "forget", "retain" and "alternate" (an alternate answer to each forget question).
    trainable_params: a regex of the parameter names to train (None: all); `cfg.trainable_params` wins.
    gamma: the weight of this term in `gamma * forget + alpha * retain`.
    """

    frozen_models: ClassVar[tuple[str, ...]] = ()
    batch_keys: ClassVar[tuple[str, ...]] = ("forget",)
    trainable_params: str | None = None

    def __init__(self, gamma: float = 1.0) -> None:
        super().__init__()
        self.gamma = gamma

    def prepare(self, policy: nn.Module, **frozen: nn.Module) -> None:
        """Called once before the first step with the same models as `forward` (e.g. to edit weights
        or precompute targets from the frozen models). Default: nothing. Not called again when a run
        resumes from a checkpoint: what it does must live in the policy's weights, which the checkpoint holds."""

    def forward(self, policy: nn.Module, batch: dict, **frozen: nn.Module) -> torch.Tensor:
        raise NotImplementedError
