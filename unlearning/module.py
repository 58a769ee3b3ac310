"""The LightningModule every stage trains: policy + forget objective + optional retain regularizer.

    loss = gamma * L_forget + alpha * L_retain   (or another `combiner` of the two weighted terms)

Each term is logged on its own. Frozen models exist only when the objective or the regularizer
declares them: "ref" is copied from the policy here; others (e.g. "reinforced") come from the pipeline.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping

import lightning as L
import torch
from torch import nn

from unlearning.combiners import WeightedSum
from unlearning.errors import ConfigError
from unlearning.methods.base import Objective
from unlearning.models import frozen_copy
from unlearning.retain import RetainRegularizer


def select_trainable(model: nn.Module, pattern: str | None) -> None:
    """Train only the parameters whose name matches `pattern` (a regex searched in the name)."""
    if pattern is None:
        return
    regex = re.compile(pattern)
    matched = 0
    for name, param in model.named_parameters():
        param.requires_grad_(bool(regex.search(name)))
        matched += param.requires_grad
    if not matched:
        raise ConfigError(f"trainable_params={pattern!r} matches no parameter name of the model")


class UnlearningModule(L.LightningModule):
    def __init__(
        self,
        policy: nn.Module,
        objective: Objective,
        optimizer: Callable[..., torch.optim.Optimizer],
        retain: RetainRegularizer | None = None,
        frozen: Mapping[str, nn.Module] | None = None,
        warmup_steps: int = 0,
        trainable_params: str | None = None,
        combiner: Callable | None = None,
    ) -> None:
        super().__init__()
        self.combiner = combiner or WeightedSum()
        self.policy = policy
        self.objective = objective
        self.retain = retain
        self.optimizer_factory = optimizer
        self.warmup_steps = warmup_steps
        wanted = set(objective.frozen_models) | set(retain.frozen_models if retain is not None else ())
        given = dict(frozen or {})
        if "ref" in wanted and "ref" not in given:
            given["ref"] = frozen_copy(policy)  # copied before any step: the model before unlearning
        missing = wanted - set(given)
        if missing:
            raise ConfigError(f"method needs frozen model(s) {sorted(missing)} that this stage does not provide")
        self.frozen = nn.ModuleDict({name: given[name] for name in sorted(wanted)})
        select_trainable(policy, trainable_params or objective.trainable_params)

    def batch_keys(self) -> tuple[str, ...]:
        """The sub-batches the data module must provide, primary (iterated) key first."""
        keys = self.objective.batch_keys + (self.retain.batch_keys if self.retain is not None else ())
        return tuple(dict.fromkeys(keys))

    def _frozen_for(self, term: nn.Module) -> dict[str, nn.Module]:
        return {name: self.frozen[name] for name in term.frozen_models}

    def _call(self, term: nn.Module, batch: dict) -> torch.Tensor:
        return term(self.policy, batch, **self._frozen_for(term))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch_size = batch[self.objective.batch_keys[0]]["input_ids"].size(0)
        forget = self._call(self.objective, batch)
        terms = {"forget": self.objective.gamma * forget}
        self.log("train/forget_loss", forget, batch_size=batch_size)
        if self.retain is not None:
            retain = self._call(self.retain, batch)
            terms["retain"] = self.retain.alpha * retain
            self.log("train/retain_loss", retain, batch_size=batch_size)
        loss = self.combiner(terms, [p for p in self.policy.parameters() if p.requires_grad])
        self.log("train/loss", loss, batch_size=batch_size, prog_bar=True)
        return loss

    def on_fit_start(self) -> None:
        self.objective.prepare(self.policy, **self._frozen_for(self.objective))

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
