"""The stages before unlearning, all cached (unlearning/stages/cache.py): the base model, the target and
retain models finetuned from it, and the reinforced model (WHP, task vectors: the target further
finetuned on the forget set), which is also the "reinforced" frozen model a method may declare.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from torch import nn

from unlearning.config import fingerprint
from unlearning.errors import ConfigError
from unlearning.methods.language_modeling import LanguageModeling
from unlearning.models import PretrainedModel, ScratchLlama, freeze
from unlearning.settings import TrainingSettings
from unlearning.stages.inputs import Inputs, StageInputs, frozen_model
from unlearning.strategies import global_rank, save_full_weights

if TYPE_CHECKING:
    from unlearning.experiment import Experiment


def base_model(experiment: "Experiment") -> str:
    """The path the protocol starts from: a built scratch model, or a hub id / folder."""
    spec = experiment.spec
    if isinstance(spec, ScratchLlama):
        corpus = experiment.benchmark.corpus()
        parts = {**experiment.model_key, "corpus": fingerprint(corpus)}

        def make(folder: Path) -> None:
            if global_rank() == 0:  # nothing to train: one process writes the model
                spec.build(folder, corpus, experiment.cfg.seed)

        return str(experiment.cache.get_or_build("base", parts, make))
    if isinstance(spec, PretrainedModel):
        return spec.base_path()
    raise ConfigError(f"model._target_ builds a {type(spec).__name__}, which has no base model")


def finetune(experiment: "Experiment", stage: str, records: list[dict], settings: TrainingSettings | None = None,
             start: Path | None = None) -> Path:
    """`start` (default: the base model, with the benchmark's general knowledge added to `records`)
    trained on `records` with `settings` (default: the finetune settings); cached. A `<stage>_path` in
    the settings names an already trained model instead."""
    settings = settings or experiment.settings.finetune
    given = settings.given(stage)
    if given:
        return Path(given)
    if start is None:
        records = experiment.benchmark.pretrain + records
    base = str(start) if start is not None else base_model(experiment)
    parts = {**experiment.model_key, "base": base, "finetune": asdict(settings),
             "records": fingerprint(records), "max_length": experiment.cfg.max_length}

    def make(folder: Path) -> None:
        policy, tokenizer = experiment.trainer.load(experiment.spec, base)
        experiment.trainer.fit(policy, tokenizer, LanguageModeling(), Inputs({"train": records}), settings,
                               f"finetune_{stage}")
        save_full_weights(policy, tokenizer, folder)

    return experiment.cache.get_or_build(f"finetune_{stage}", parts, make)


def target_and_retain(experiment: "Experiment") -> tuple[Path, Path]:
    """The target (finetuned on every split) and the retain model (on the retain split alone)."""
    benchmark = experiment.benchmark
    return finetune(experiment, "target", benchmark.full), finetune(experiment, "retain", benchmark.retain)


def reinforce(experiment: "Experiment", target: Path) -> Path:
    """The reinforced model: the target further finetuned on the forget set (`reinforce` settings)."""
    return finetune(experiment, "reinforced", experiment.benchmark.forget, experiment.settings.reinforce, start=target)


@frozen_model("reinforced")
def reinforced_model(inputs: StageInputs) -> nn.Module:
    experiment = inputs.experiment
    return freeze(experiment.trainer.load(experiment.spec, reinforce(experiment, inputs.target))[0])
