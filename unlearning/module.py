"""The LightningModule every stage trains: policy + forget objective + optional retain regularizer.

    loss = gamma * L_forget + alpha * L_retain   (or another `combiner` of the two weighted terms)

Under several processes the logged losses are the mean over ranks (the global batch's loss).

Each term is logged on its own; a term that turns NaN/inf stops the run (`NonFiniteLoss`). The module
is handed exactly the frozen models its objective and regularizer declare ("ref", "reinforced", ...;
unlearning/stages/inputs.py provides them) and keeps them as submodules, so a strategy places them with
the policy. Checkpoints leave the frozen models out (they are rebuilt from their source on resume) and
carry the RNG states, so a resumed run continues exactly where the killed one stopped.
"""

from __future__ import annotations

import random
import re
from typing import Callable, Mapping

import lightning as L
import numpy as np
import torch
from torch import nn

from unlearning.combiners import WeightedSum
from unlearning.errors import ConfigError, NonFiniteLoss
from unlearning.lora import base_weight_name, is_lora
from unlearning.methods.base import Objective
from unlearning.retain import RetainRegularizer


def rng_states() -> dict:
    """The global RNG states in types `torch.load(weights_only=True)` accepts (no numpy arrays)."""
    name, keys, position, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def restore_rng_states(states: dict) -> None:
    torch.set_rng_state(states["torch"])
    random.setstate(states["python"])
    name, keys, position, has_gauss, gauss = states["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), position, has_gauss, gauss))
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def select_trainable(model: nn.Module, pattern: str | None) -> None:
    """Of the parameters that train (all; under LoRA the adapters), keep those whose base weight name
    matches `pattern` (a regex searched in the name; an adapter answers to the weight it adapts)."""
    if pattern is None:
        return
    regex = re.compile(pattern)
    matched = 0
    for name, param in model.named_parameters():
        param.requires_grad_(param.requires_grad and bool(regex.search(base_weight_name(name))))
        matched += param.requires_grad
    if not matched:
        raise ConfigError(f"trainable_params={pattern!r} matches no trainable parameter of the model"
                          + (" (under model.lora: no adapted weight)" if is_lora(model) else ""))


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
        self.resumed = False
        wanted = set(objective.frozen_models) | set(retain.frozen_models if retain is not None else ())
        given = dict(frozen or {})
        missing = wanted - set(given)
        if missing:
            raise ConfigError(f"method needs frozen model(s) {sorted(missing)} that this stage does not provide")
        self.frozen = nn.ModuleDict({name: given[name] for name in sorted(wanted)})
        select_trainable(policy, trainable_params or objective.trainable_params)

    def _frozen_for(self, term: nn.Module) -> dict[str, nn.Module]:
        return {name: self.frozen[name] for name in term.frozen_models}

    def _call(self, term: nn.Module, batch: dict) -> torch.Tensor:
        return term(self.policy, batch, **self._frozen_for(term))

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        batch_size = batch[self.objective.batch_keys[0]]["input_ids"].size(0)
        forget = self._finite(self._call(self.objective, batch), "forget")
        terms = {"forget": self.objective.gamma * forget}
        self.log("train/forget_loss", forget, batch_size=batch_size, sync_dist=True)
        if self.retain is not None:
            retain = self._finite(self._call(self.retain, batch), "retain")
            terms["retain"] = self.retain.alpha * retain
            self.log("train/retain_loss", retain, batch_size=batch_size, sync_dist=True)
        loss = self.combiner(terms, [p for p in self.policy.parameters() if p.requires_grad])
        self.log("train/loss", loss, batch_size=batch_size, prog_bar=True, sync_dist=True)
        return loss

    def _finite(self, loss: torch.Tensor, term: str) -> torch.Tensor:
        # Stopping here, before the update, leaves the last checkpoint as the last good state.
        if not torch.isfinite(loss).all():
            raise NonFiniteLoss(f"step {self.global_step + 1}: the {term} loss is {loss.item()}; the run stopped "
                                "(lower optimizer.lr or the method's weights; the last checkpoint is kept)")
        return loss

    def on_fit_start(self) -> None:
        # A resumed run restored the prepared weights already: preparing again would apply an edit twice.
        if not self.resumed:
            self.objective.prepare(self.policy, **self._frozen_for(self.objective))

    def on_train_epoch_start(self) -> None:
        # Retain pairing depends on the epoch, so every epoch draws fresh retain samples.
        self.trainer.datamodule.set_epoch(self.current_epoch)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if not k.startswith("frozen.")}
        checkpoint["rng_states"] = rng_states()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # The frozen models were rebuilt from their source (target, cached stages) before loading.
        checkpoint["state_dict"].update({f"frozen.{k}": v for k, v in self.frozen.state_dict().items()})
        restore_rng_states(checkpoint["rng_states"])
        self.resumed = True

    def configure_optimizers(self):
        params = [p for p in self.policy.parameters() if p.requires_grad]
        optimizer = self.optimizer_factory(params)
        if not self.warmup_steps:
            return optimizer
        warmup = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: min(1.0, (step + 1) / self.warmup_steps)
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": warmup, "interval": "step"}}
