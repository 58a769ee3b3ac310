"""What the config holds, as dataclasses: the plain nodes (top level, finetune, reinforce, data, eval,
paths) that `schema.prepare_config` checks a composed config against, and the training settings of
each stage, instantiated once from the config (`StageSettings.from_config`) and handed to training.

A field with a default may be absent from the config; a present value must fit the annotation.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar, Literal

from omegaconf import DictConfig, OmegaConf

from unlearning.data.tofu import FORGET_SPLITS


class Target:
    """A `_target_` node: checked against the signature of the class or function it names."""


@dataclasses.dataclass(kw_only=True, frozen=True)
class TrainingSettings:
    """One training stage's loop: `epochs` over its set (or `max_steps` optimizer steps, -1: no limit),
    `batch_size` primary examples per step, learning rate `lr` (no warmup but unlearning's)."""

    epochs: int
    lr: float
    batch_size: int
    max_steps: int
    warmup_steps: ClassVar[int] = 0

    def given(self, stage: str) -> str | None:
        """An already trained model for `stage` (`<stage>_path`: hub id or folder), which skips it."""
        return getattr(self, f"{stage}_path", None)


@dataclasses.dataclass(kw_only=True, frozen=True)
class UnlearnSettings(TrainingSettings):
    """The unlearning stage's loop, with `warmup_steps` of linear learning-rate warmup."""

    warmup_steps: int = 0


@dataclasses.dataclass(kw_only=True, frozen=True)
class FinetuneSettings(TrainingSettings):
    """`finetune`: the target (on `full`) and the retain model (on `retainXX`)."""

    target_path: str | None = None
    retain_path: str | None = None


@dataclasses.dataclass(kw_only=True, frozen=True)
class ReinforceSettings(TrainingSettings):
    """`reinforce`: the reinforced model (WHP, task vectors), the target further trained on the forget set."""

    reinforced_path: str | None = None


@dataclasses.dataclass(kw_only=True)
class DataSettings:
    benchmark: Target
    batch_size: int
    split: Literal[FORGET_SPLITS] = None  # QA benchmarks only
    path: str = None  # TOFU: a hub id or a folder
    anchored_terms: str | None = None
    alternates_path: str | None = None


@dataclasses.dataclass(kw_only=True)
class DuringTrainingSettings:
    every_n_steps: int | None
    max_examples: int
    monitor: str | None
    mode: Literal["max", "min"]


@dataclasses.dataclass(kw_only=True)
class EvalSettings:
    groups: dict[str, Target | None]
    during_training: DuringTrainingSettings


@dataclasses.dataclass(kw_only=True)
class PathSettings:
    cache_dir: str
    data_dir: str
    run_dir: str


@dataclasses.dataclass(kw_only=True)
class ReportSettings:
    columns: list[str]
    across: str | None = None


@dataclasses.dataclass(kw_only=True)
class ConventionSettings:
    """`conventions` (conf/conventions/): where the project deliberately differs from a reference, the
    value the method, retain and metric configs read; README "Conventions" lists each."""

    name: str
    kl_retain_positions: Literal["answer", "all"]
    ceu_ignore_first_n_answer_tokens: int
    satimp_gamma: float
    extraction_strength_last_miss_one_over_n: bool
    tofu_budget_counts_prompt: bool
    tofu_max_examples: int | None
    knowmem_stop: list[str]


@dataclasses.dataclass(kw_only=True)
class CommonSettings:
    seed: int
    max_length: int
    model: Target
    data: DataSettings
    eval: EvalSettings
    logger: Target | None
    paths: PathSettings
    report: ReportSettings
    conventions: ConventionSettings


@dataclasses.dataclass(kw_only=True)
class RunSettings(CommonSettings):
    """conf/config.yaml: `unlearn`."""

    warmup_steps: int
    objective_metric: str | list[str]
    trainable_params: str | None
    checkpoint_every_n_steps: int | None
    resume: bool | str | None
    finetune: FinetuneSettings
    reinforce: ReinforceSettings
    protocol: Target
    method: Target
    retain: Target | None
    selector: Target | None = None
    combiner: Target | None = None
    optimizer: Target
    trainer: Target


@dataclasses.dataclass(kw_only=True)
class EvaluationSettings(CommonSettings):
    """conf/evaluate.yaml: `unlearn-eval`."""

    checkpoint: str
    retain_checkpoint: str | None = None


# Keys only `unlearn` reads (finetune, trainer, method, ...): unlearn-eval ignores them.
TRAINING_KEYS = frozenset(field.name for field in dataclasses.fields(RunSettings)) - frozenset(
    field.name for field in dataclasses.fields(CommonSettings))


@dataclasses.dataclass(frozen=True)
class StageSettings:
    """The training settings of every stage of a run, instantiated once from its config. Unlearning's
    loop is set where a user sets it: `trainer.max_epochs` / `trainer.max_steps`, `optimizer.lr`,
    `data.batch_size`, `warmup_steps`."""

    finetune: FinetuneSettings
    reinforce: ReinforceSettings
    unlearn: UnlearnSettings

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "StageSettings":
        return cls(
            finetune=FinetuneSettings(**OmegaConf.to_container(cfg.finetune, resolve=True)),
            reinforce=ReinforceSettings(**OmegaConf.to_container(cfg.reinforce, resolve=True)),
            unlearn=UnlearnSettings(epochs=cfg.trainer.max_epochs, lr=cfg.optimizer.lr, batch_size=cfg.data.batch_size,
                                    max_steps=cfg.trainer.get("max_steps", -1), warmup_steps=cfg.warmup_steps),
        )
