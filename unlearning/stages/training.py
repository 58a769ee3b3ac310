"""One Lightning fit per training stage: the finetune stages, the reinforced model, unlearning, and the
relearning attack all train the same way, on the same `UnlearningModule`, data module and Trainer.

`StageTrainer` holds what every stage of a run shares (the hardware's Trainer settings, the optimizer,
the seed, the prompt template and `max_length`, the logger); each call of `fit` brings what differs:
the objective and its inputs, and the stage's `TrainingSettings` (epochs, steps, learning rate, batch).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Sequence

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from unlearning.config import build
from unlearning.dashboards import stage_logger
from unlearning.data.collate import PromptTemplate
from unlearning.data.datamodule import UnlearningDataModule
from unlearning.errors import ConfigError
from unlearning.methods.base import Objective
from unlearning.models import ModelSpec
from unlearning.module import UnlearningModule
from unlearning.retain import RetainRegularizer
from unlearning.settings import TrainingSettings
from unlearning.stages.inputs import Inputs
from unlearning.strategies import is_partitioned, partitioned_loading

STAGE_LENGTH_KEYS = ("max_epochs", "max_steps")  # each stage's own, from its TrainingSettings


@dataclass
class StageTrainer:
    trainer: dict  # lightning.Trainer arguments (the hardware), less the stage lengths
    optimizer: DictConfig  # a partial optimizer node; each stage gives its learning rate
    template: PromptTemplate
    max_length: int
    seed: int
    logger: Callable[[str], Any]  # stage name -> the configured Lightning logger (False: none)

    @classmethod
    def from_config(cls, cfg: DictConfig, template: PromptTemplate) -> "StageTrainer":
        trainer = {key: value for key, value in OmegaConf.to_container(cfg.trainer, resolve=True).items()
                   if key not in STAGE_LENGTH_KEYS}
        return cls(trainer, cfg.optimizer, template, cfg.max_length, cfg.seed, partial(stage_logger, cfg))

    def load(self, spec: ModelSpec, path: str | Path) -> tuple[Any, Any]:
        """`spec.load(path)` for a training stage: under ZeRO-3 each rank constructs only its shard."""
        with partitioned_loading(self.trainer) as partitioned:
            model, tokenizer = spec.load(path)
        if partitioned and not is_partitioned(model):
            raise ConfigError(f"hardware runs DeepSpeed ZeRO-3, but {type(model).__name__} from {path} was not "
                              "partitioned at load (it builds parameters outside deepspeed.zero.Init): "
                              "use hardware=deepspeed_zero2 or ddp for this model")
        return model, tokenizer

    def fit(self, policy, tokenizer, objective: Objective, inputs: Inputs, settings: TrainingSettings, stage: str,
            *, retain: RetainRegularizer | None = None, trainable_params: str | None = None,
            combiner: Callable | None = None, callbacks: Sequence = (), ckpt_path: str | None = None) -> None:
        """Train `policy` on `objective` (+ `retain`) over `inputs` (resumed from `ckpt_path`)."""
        L.seed_everything(self.seed, workers=True, verbose=False)
        module = UnlearningModule(policy, objective, build(self.optimizer, lr=settings.lr), retain,
                                  frozen=inputs.frozen, warmup_steps=settings.warmup_steps,
                                  trainable_params=trainable_params, combiner=combiner)
        datamodule = UnlearningDataModule(inputs.sets, tokenizer, self.template, batch_size=settings.batch_size,
                                          max_length=self.max_length, seed=self.seed, aligned_keys=inputs.aligned)
        # The data module splits each global batch over the ranks itself (EpochPermutation).
        trainer = build(self.trainer, max_epochs=settings.epochs, max_steps=settings.max_steps,
                        logger=self.logger(stage), callbacks=list(callbacks), use_distributed_sampler=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
