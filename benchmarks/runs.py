"""The training runs the benchmark items time, framework and hand-written, on identical work.

Framework: what `unlearn` runs for a stage, minus the disk writes that are not per step (checkpoints):
an `UnlearningModule` and `UnlearningDataModule` fitted by a `lightning.Trainer` built from the
project's trainer config (precision, gradient clipping, logging interval) with a CSV logger, for
`max_steps` steps. The progress bar is off: it draws to the terminal the suite reports on.

Hand loop: the minimal PyTorch loop a researcher would write for the same job: a DataLoader over the
same paired examples in the same order, each method's loss from its own pure loss function
(unlearning/methods/*.py) plus the NLL retain term, AdamW with the same settings, the same gradient
clipping. It has no Lightning and no UnlearningModule. Both start from the same weights, so they must
end at the same loss: each run returns its last loss and the items check they agree.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable

import torch
import transformers
from lightning.fabric.utilities.warnings import PossibleUserWarning
from lightning.pytorch.loggers import CSVLogger
from omegaconf import DictConfig
from torch import nn
from torch.utils.data import DataLoader

from benchmarks.report import agreement
from benchmarks.timing import Variant
from benchmarks.workload import Workload, project_config
from unlearning.cli import CONFIG_DIR
from unlearning.config import build
from unlearning.data.collate import pad_sub_batches
from unlearning.data.datamodule import EpochPermutation, UnlearningDataModule
from unlearning.methods.base import Objective, decoder_layer_output, forward_logits
from unlearning.methods.ce_u import ceu_loss
from unlearning.methods.dpo import dpo_loss, policy_and_reference_logp
from unlearning.methods.grad_ascent import grad_ascent_loss
from unlearning.methods.npo import npo_loss
from unlearning.methods.rmu import rmu_loss, steering_vector
from unlearning.methods.satimp import satimp_loss
from unlearning.methods.simnpo import simnpo_loss
from unlearning.methods.undial import undial_loss
from unlearning.methods.unlikelihood import unlikelihood_loss
from unlearning.methods.wga import wga_loss
from unlearning.models import frozen_copy
from unlearning.module import UnlearningModule, select_trainable
from unlearning.stages.inputs import declared
from unlearning.ops import mean_token_nll, sequence_logprob
from unlearning.retain import NLLRetain

# The forget term of each method, from its pure loss function: (policy, frozen reference or None, the
# objective (for its hyperparameters), batch) -> loss.
ForgetLoss = Callable[[nn.Module, nn.Module | None, Objective, dict], torch.Tensor]


def _logits_and_labels(policy, batch):
    forget = batch["forget"]
    return forward_logits(policy, forget), forget["labels"]


def _npo(policy, ref, objective, batch):
    return npo_loss(*policy_and_reference_logp(policy, ref, batch["forget"]), objective.beta)


def _simnpo(policy, ref, objective, batch):
    return simnpo_loss(*sequence_logprob(*_logits_and_labels(policy, batch)), objective.beta, objective.delta)


def _idk_dpo(policy, ref, objective, batch):
    return dpo_loss(*policy_and_reference_logp(policy, ref, batch["alternate"]),
                    *policy_and_reference_logp(policy, ref, batch["forget"]), objective.beta)


def _undial(policy, ref, objective, batch):
    logits, labels = _logits_and_labels(policy, batch)
    with torch.no_grad():
        ref_logits = forward_logits(ref, batch["forget"])
    return undial_loss(logits, ref_logits, labels, objective.strength, objective.focus_fraction,
                       objective.focus_weight)


def _rmu(policy, ref, objective, batch):
    hidden = decoder_layer_output(policy, batch["forget"], objective.layer)
    control = steering_vector(hidden.size(-1), objective.steering_coeff, objective.seed)
    return rmu_loss(hidden, control, batch["forget"]["labels"])


FORGET_LOSSES: dict[str, ForgetLoss] = {
    "grad_ascent": lambda policy, ref, objective, batch: grad_ascent_loss(*_logits_and_labels(policy, batch)),
    "npo": _npo,
    "simnpo": _simnpo,
    "idk_dpo": _idk_dpo,
    "wga": lambda policy, ref, objective, batch: wga_loss(*_logits_and_labels(policy, batch), objective.beta),
    "satimp": lambda policy, ref, objective, batch: satimp_loss(*_logits_and_labels(policy, batch),
                                                                objective.beta1, objective.beta2),
    "ce_u": lambda policy, ref, objective, batch: ceu_loss(*_logits_and_labels(policy, batch)),
    "unlikelihood": lambda policy, ref, objective, batch: unlikelihood_loss(*_logits_and_labels(policy, batch)),
    "undial": _undial,
    "fundial": _undial,
    "rmu": _rmu,
}

EXCLUDED_METHODS = {
    "task_vector": "no training step: a weight edit computed from the reinforced stage",
    "whp": "needs the reinforced model (a finetuning stage of its own) and anchored-term translations of "
           "the forget text; its step is a cross-entropy to labels precomputed from both",
    "chen2024": "its forget set is picked by a selector (an evaluative model run before training) and its "
                "loss is five functions over three forward passes, not one pure loss: a hand loop would "
                "restate Chen2024.forward line by line",
}


def quiet() -> None:
    """Keep what Lightning and transformers print on every fit (device summary, tips, "max_steps reached",
    few-batches and few-workers warnings) out of the suite's output."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", category=PossibleUserWarning)
    transformers.logging.set_verbosity_error()


def trained_methods() -> list[str]:
    """Every method config (conf/method/*.yaml) the items train, failing on one they neither train nor exclude."""
    names = sorted(path.stem for path in (Path(CONFIG_DIR) / "method").glob("*.yaml"))
    unknown = [name for name in names if name not in FORGET_LOSSES and name not in EXCLUDED_METHODS]
    if unknown:
        raise ValueError(f"method config(s) {unknown} are neither benchmarked nor excluded in benchmarks/runs.py")
    return [name for name in names if name in FORGET_LOSSES]


def count_tokens(items: list[dict]) -> int:
    """Non-padding tokens of every sub-batch (forget, retain, alternate) the steps train on."""
    return sum(len(item[key]["input_ids"]) for item in items for key in item)


@dataclass
class MethodRun:
    """One method's training job: the policy and its starting weights, the terms, the data both loops read."""

    name: str
    config: DictConfig
    policy: nn.Module
    initial_weights: dict[str, torch.Tensor]
    optimizer: Callable[..., torch.optim.Optimizer]  # the configured optimizer, given the parameters
    objective: Objective
    retain: NLLRetain | None
    datamodule: UnlearningDataModule
    items: list[dict]  # the paired examples of the timed steps, in the order the framework visits them
    steps: int
    # The baselines' frozen copy of the starting weights, made by their first `prepare_baseline` (the
    # framework makes its own; a copy made here for nothing would count against it in memory measurements).
    reference: nn.Module | None = None

    @classmethod
    def build(cls, workload: Workload, method: str, retain: str, steps: int,
              forget_size: int | None = None) -> "MethodRun":
        config = project_config(workload.settings.data_dir, f"method={method}", f"retain={retain}")
        objective = build(config.method)
        regularizer = build(config.retain) if config.get("retain") else None
        if regularizer is not None and not isinstance(regularizer, NLLRetain):
            raise ValueError(f"retain={retain}: the hand loop restates only the NLL retain term")
        policy = workload.training_model()
        datamodule = workload.datamodule(declared(objective, regularizer)[0], forget_size)
        # The order the framework's sampler visits the examples in (first epoch, one process).
        order = list(EpochPermutation(datamodule.train_set, config.seed, datamodule.batch_size))
        items = [datamodule.train_set[i] for i in order[:steps * datamodule.batch_size]]
        return cls(method, config, policy, {k: v.clone() for k, v in policy.state_dict().items()},
                   build(config.optimizer), objective, regularizer, datamodule, items, steps)

    @property
    def pad_id(self) -> int:
        return self.datamodule.tokenizer.pad_token_id

    @property
    def batch_size(self) -> int:
        return self.datamodule.batch_size

    def tokens_per_step(self) -> float:
        return count_tokens(self.items) / self.steps

    def reset_policy(self) -> None:
        self.policy.load_state_dict(self.initial_weights)
        self.policy.zero_grad(set_to_none=True)
        self.policy.requires_grad_(True)
        self.policy.train()

    def prepare_baseline(self) -> None:
        """What a baseline does before its loop, untimed like the framework's module construction: starting
        weights, the method's trainable parameters, the frozen reference."""
        self.reset_policy()
        select_trainable(self.policy, self.objective.trainable_params)
        if self.reference is None and "ref" in self.objective.frozen_models:
            self.reference = frozen_copy(self.policy)

    def loss(self, policy: nn.Module, batch: dict) -> torch.Tensor:
        """gamma * forget + alpha * retain, restated from the pure functions (the hand loop's loss)."""
        loss = self.objective.gamma * FORGET_LOSSES[self.name](policy, self.reference, self.objective, batch)
        if self.retain is not None:
            loss = loss + self.retain.alpha * mean_token_nll(forward_logits(policy, batch["retain"]),
                                                             batch["retain"]["labels"])
        return loss

    def framework(self, log_dir: Path) -> Variant:
        """Lightning fit of `steps` steps through UnlearningModule; returns the last logged loss."""
        def prepare() -> UnlearningModule:
            self.reset_policy()
            frozen = {"ref": frozen_copy(self.policy)} if "ref" in self.objective.frozen_models else None
            return UnlearningModule(self.policy, self.objective, self.optimizer, self.retain, frozen=frozen)

        def run(module: UnlearningModule) -> float:
            trainer = build(self.config.trainer, max_steps=self.steps, logger=CSVLogger(log_dir, name=self.name),
                            callbacks=[], use_distributed_sampler=False, enable_checkpointing=False,
                            enable_progress_bar=False)
            trainer.fit(module, datamodule=self.datamodule)
            return float(trainer.callback_metrics["train/loss"])

        return Variant(run, prepare)

    def hand_loop(self) -> Variant:
        """The same steps in plain PyTorch; returns the last loss."""
        def run(_: None) -> float:
            params = [p for p in self.policy.parameters() if p.requires_grad]
            optimizer = self.optimizer(params)
            loader = DataLoader(self.items, batch_size=self.batch_size,
                                collate_fn=lambda items: pad_sub_batches(items, self.pad_id))
            for batch in islice(loader, self.steps):
                loss = self.loss(self.policy, batch)
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, self.config.trainer.gradient_clip_val)
                optimizer.step()
            return loss.item()

        return Variant(run, self.prepare_baseline)


def same_last_loss(baseline: float, ours: float, tolerance: float = 1e-3) -> str:
    """Whether two runs of the same steps ended at the same loss (relative, float32 summation order aside),
    as a table cell with both losses."""
    same = abs(baseline - ours) <= tolerance * max(1.0, abs(baseline), abs(ours))
    return agreement(same, f"{baseline:.4g} vs {ours:.4g}")
