"""LoRA unlearning (`model.lora`): adapters on the target, the target itself frozen.

The policy becomes a peft `PeftModel`; only adapter weights train. The reference model ("ref", the
model before unlearning) is then the same network with its adapters switched off: `AdapterDisabled`
runs the policy inside `disable_adapter()`, so no second copy of the weights exists. `trainable_params`
(cfg, else the method's) still applies: it picks the adapters by the name of the base weight each
adapts (`model.layers.1.mlp.down_proj.weight`), so a method's regex means the same with and without LoRA.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from unlearning.errors import ConfigError

MERGED_FOLDER = "merged"  # <run>/unlearned/merged: the merged model when `merge_on_save`
# peft names: base_model.model.<base path>.lora_A.<adapter>.weight (or .base_layer.weight for the frozen weight)
ADAPTER_SUFFIX = re.compile(r"\.(lora_[A-Za-z_]+\.[^.]+|base_layer)(\.weight)?$")


@dataclass(frozen=True)
class LoraSettings:
    """`model.lora`: rank `r`, scale `alpha` (the update is alpha/r * B A), the adapted modules
    (names or peft's "all-linear"), adapter dropout, and whether saving also writes the merged model."""

    r: int = 8
    alpha: float = 16.0
    target_modules: Any = "all-linear"
    dropout: float = 0.0
    merge_on_save: bool = False

    @classmethod
    def from_config(cls, node: Mapping) -> "LoraSettings":
        unknown = sorted(set(node) - set(cls.__dataclass_fields__))
        if unknown:
            raise ConfigError(f"model.lora.{unknown[0]} is not a LoRA setting; valid: {', '.join(cls.__dataclass_fields__)}")
        settings = dict(node)
        if not isinstance(settings.get("target_modules", ""), str):
            settings["target_modules"] = [str(name) for name in settings["target_modules"]]
        lora = cls(**settings)
        if not isinstance(lora.r, int) or lora.r < 1:
            raise ConfigError(f"model.lora.r={lora.r!r} must be a positive integer")
        return lora


def add_adapters(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """The model wrapped with fresh LoRA adapters (B = 0: at first it computes exactly the model)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, target_modules=settings.target_modules,
                        lora_dropout=settings.dropout, task_type="CAUSAL_LM")
    try:
        return get_peft_model(model, config)
    except ValueError as error:  # peft's message when no module name matches
        raise ConfigError(f"model.lora.target_modules={settings.target_modules!r}: {error}".splitlines()[0]) from None


def is_lora(model: nn.Module) -> bool:
    """Whether `model` carries peft adapters (without importing peft for models that do not)."""
    peft = sys.modules.get("peft")
    return peft is not None and isinstance(model, peft.PeftModel)


def base_weight_name(name: str) -> str:
    """The name a parameter's base weight has in the plain model: adapters answer to the weight they adapt."""
    return ADAPTER_SUFFIX.sub(".weight", name.removeprefix("base_model.model."))


class AdapterDisabled(nn.Module):
    """The LoRA policy with its adapters off, in eval mode and without gradients: the frozen reference.

    The policy is a submodule (so `decoder_layer_output` finds its layers) whose parameters are the
    policy's own; `train()`/`eval()` on this wrapper leave the shared policy's mode alone."""

    def __init__(self, policy: nn.Module) -> None:
        super().__init__()
        self.policy = policy
        self.training = False

    def train(self, mode: bool = True) -> "AdapterDisabled":
        self.training = mode
        return self

    def forward(self, *args, **kwargs):
        was_training = self.policy.training
        self.policy.eval()
        try:
            with torch.no_grad(), self.policy.disable_adapter():
                return self.policy(*args, **kwargs)
        finally:
            self.policy.train(was_training)

