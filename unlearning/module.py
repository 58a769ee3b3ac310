"""The LightningModule every stage trains: policy + forget objective + optional retain regularizer.

    loss = gamma * L_forget + alpha * L_retain

Each term is logged on its own. The frozen reference model exists only when the objective or the
regularizer declares `needs_ref`.
"""

from __future__ import annotations

from typing import Callable

import lightning as L
import torch
from torch import nn

from unlearning.methods.base import Objective
from unlearning.models import frozen_copy
from unlearning.retain import RetainRegularizer


class UnlearningModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        retain: RetainRegularizer | None = None,
        warmup_steps: int = 0,
    ) -> None:
        super().__init__()
        self.policy = policy
        self.objective = objective
        self.retain = retain
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        needs_ref = objective.needs_ref or (retain is not None and retain.needs_ref)
        self.ref = frozen_copy(policy) if needs_ref else None

    def batch_keys(self) -> tuple[str, ...]:
        """The sub-batches the data module must provide, primary (iterated) key first."""
        keys = self.objective.batch_keys + (self.retain.batch_keys if self.retain is not None else ())
        return tuple(dict.fromkeys(keys))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch_size = batch[self.objective.batch_keys[0]]["input_ids"].size(0)
        forget = self.objective(self.policy, batch, ref=self.ref)
        loss = self.objective.gamma * forget
        self.log("train/forget_loss", forget, batch_size=batch_size, prog_bar=False)
        if self.retain is not None:
            retain = self.retain(self.policy, batch, ref=self.ref)
            loss = loss + self.retain.alpha * retain
            self.log("train/retain_loss", retain, batch_size=batch_size)
        self.log("train/loss", loss, batch_size=batch_size, prog_bar=True)
        return loss

    def on_train_epoch_start(self) -> None:
        # Retain pairing depends on the epoch, so every epoch draws fresh retain samples.
        self.trainer.datamodule.set_epoch(self.current_epoch)

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if not self.warmup_steps:
            return optimizer
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
