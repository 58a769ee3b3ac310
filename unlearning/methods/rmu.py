"""RMU (Representation Misdirection for Unlearning): "The WMDP Benchmark: Measuring and Reducing Malicious
Use With Unlearning" (Li et al. 2024, arXiv 2403.03218).

    L_forget = mean_t MSE(h_t, c * u)    over the forget answer tokens,

h_t the output of decoder layer `layer` (the paper: layer 7 of Zephyr-7B; here 1, the last of the
default 2-layer tiny model), u a random unit vector drawn once (as the authors' code: uniform [0, 1)
entries, normalised), c = `steering_coeff`. Only the MLP down-projections of layers layer-2..layer
train. The paper's retain term, alpha * MSE(h_retain, h_retain^frozen), is the `activations` retain
regularizer: `method=rmu retain=activations`.

c must exceed the layer's typical activation norm to scramble it: the paper's 6.5 suits Zephyr's
layer 7; the tiny model's layer-1 outputs have norm ~50 on answer tokens, hence 100 here.
"""

from __future__ import annotations

import torch

from unlearning.errors import ConfigError
from unlearning.methods.base import Objective, decoder_layer_output
from unlearning.ops import IGNORE_INDEX, masked_mse


def steering_vector(size: int, coeff: float, seed: int) -> torch.Tensor:
    """c * u, u uniform in [0, 1)^size normalised to unit length, the same for a given seed."""
    u = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return coeff * u / u.norm()


def rmu_loss(hidden: torch.Tensor, control: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """MSE between the hidden states [B, T, H] of the labelled tokens and the control vector [H]."""
    return masked_mse(hidden, control, labels != IGNORE_INDEX)


class RMU(Objective):
    def __init__(self, layer: int = 1, steering_coeff: float = 100.0, seed: int = 0, gamma: float = 1.0) -> None:
        super().__init__(gamma)
        if layer < 0:
            raise ConfigError(f"method.layer={layer} must be a decoder layer index >= 0")
        self.layer = layer
        self.steering_coeff = steering_coeff
        self.seed = seed
        updated = "|".join(str(i) for i in range(max(0, layer - 2), layer + 1))
        self.trainable_params = rf"(^|\.)layers\.({updated})\.mlp\.down_proj\.weight$"
        # Drawn at the first step: only then is the hidden size known (the objective never sees the model here).
        self.register_buffer("control", None, persistent=False)

    def forward(self, policy, batch):
        forget = batch["forget"]
        hidden = decoder_layer_output(policy, forget, self.layer)
        if self.control is None:
            self.control = steering_vector(hidden.size(-1), self.steering_coeff, self.seed).to(hidden)
        return rmu_loss(hidden, self.control, forget["labels"])
