"""Plain next-token prediction: the objective of the finetune stages (target, retain model).

Not a forget objective (no YAML in conf/method/): it lets the finetune stages run on the same
`UnlearningModule` and Trainer as unlearning, so every stage shares one training loop.
"""

from __future__ import annotations

from unlearning.methods.base import Objective, forward_logits
from unlearning.ops import mean_token_nll


class LanguageModeling(Objective):
    batch_keys = ("train",)

    def forward(self, policy, batch):
        train = batch["train"]
        return mean_token_nll(forward_logits(policy, train), train["labels"])
