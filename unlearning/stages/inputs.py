"""Stage inputs: the batch sets and frozen models an objective or a retain regularizer declares.

An objective names what it reads (`batch_keys`: "forget", "retain", "alternate", "anchored", ...) and
which frozen models it compares against (`frozen_models`: "ref", "reinforced", ...). Each name has one
provider, registered where it belongs with `@batch_set(name)` or `@frozen_model(name)`: the core sets
and the reference model below, `alternate` in unlearning/data/alternates.py, `anchored` with WHP in
unlearning/methods/whp.py, `reinforced` with the finetune stages. A method that needs a new set or a
new teacher registers its provider in its own file; neither this module nor `UnlearningModule` changes.

A provider receives the stage's `StageInputs` (the experiment, the policy before unlearning, its
tokenizer, the target folder) and may ask it for other sets or models: each is built once per stage.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from torch import nn

from unlearning.config import build
from unlearning.errors import ConfigError
from unlearning.lora import AdapterDisabled, is_lora
from unlearning.methods.base import Objective
from unlearning.models import freeze, frozen_copy
from unlearning.retain import RetainRegularizer
from unlearning.selectors import DECISIONS_FILE, SelectionContext
from unlearning.strategies import is_partitioned

if TYPE_CHECKING:
    from unlearning.experiment import Experiment

BATCH_SETS: dict[str, Callable[["StageInputs"], list[dict]]] = {}
ALIGNED_SETS: set[str] = set()  # row i pairs with forget row i (an alternate answer to the same question)
FROZEN_MODELS: dict[str, Callable[["StageInputs"], nn.Module]] = {}


def batch_set(name: str, *, aligned: bool = False):
    """Register the provider of batch set `name` (a function of the stage's `StageInputs`)."""

    def register(provider):
        BATCH_SETS[name] = provider
        if aligned:
            ALIGNED_SETS.add(name)
        return provider

    return register


def frozen_model(name: str):
    """Register the provider of frozen model `name` (a function of the stage's `StageInputs`)."""

    def register(provider):
        FROZEN_MODELS[name] = provider
        return provider

    return register


def declared(objective: Objective, retain: RetainRegularizer | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The batch keys (primary, iterated key first; each once) and frozen models a stage's terms read."""
    terms = [objective] + ([retain] if retain is not None else [])
    keys = tuple(dict.fromkeys(key for term in terms for key in term.batch_keys))
    models = tuple(dict.fromkeys(name for term in terms for name in term.frozen_models))
    return keys, models


@dataclass
class Inputs:
    """What one training stage reads: its named record sets, frozen models, and which sets are aligned."""

    sets: dict[str, list[dict]]
    frozen: dict[str, nn.Module] = field(default_factory=dict)
    aligned: tuple[str, ...] = ()


class StageInputs:
    """Resolves a stage's declared inputs for the unlearning of `policy` (the target, loaded; under LoRA
    with its adapters), each built once and on request only."""

    def __init__(self, experiment: "Experiment", policy: nn.Module, tokenizer, target: Path) -> None:
        self.experiment = experiment
        self.policy = policy
        self.tokenizer = tokenizer
        self.target = target
        self._sets: dict[str, list[dict]] = {}
        self._frozen: dict[str, nn.Module] = {}

    def batch_set(self, name: str) -> list[dict]:
        if name not in self._sets:
            provider = BATCH_SETS.get(name)
            if provider is None:
                raise ConfigError(f"the method reads batch set {name!r}; registered batch sets: {sorted(BATCH_SETS)}")
            self._sets[name] = provider(self)
        return self._sets[name]

    def frozen(self, name: str) -> nn.Module:
        if name not in self._frozen:
            provider = FROZEN_MODELS.get(name)
            if provider is None:
                raise ConfigError(f"the method needs frozen model {name!r}; registered frozen models: "
                                  f"{sorted(FROZEN_MODELS)}")
            self._frozen[name] = provider(self)
        return self._frozen[name]

    def resolve(self, objective: Objective, retain: RetainRegularizer | None) -> Inputs:
        keys, models = declared(objective, retain)
        frozen = {name: self.frozen(name) for name in models}  # first: a provider may train (reinforced)
        return Inputs({key: self.batch_set(key) for key in keys}, frozen,
                      tuple(key for key in keys if key in ALIGNED_SETS))

    @property
    def flagged(self) -> set[tuple[str, str]]:
        """The (question, answer) pairs a selector chose to forget (empty without a selector)."""
        if not self.experiment.cfg.get("selector"):
            return set()
        return {(r["question"], r["answer"]) for r in self.batch_set("forget")}


@batch_set("forget")
def forget_set(inputs: StageInputs) -> list[dict]:
    """The benchmark's forget split; with `selector`, the training pairs (forget + retain) it flags,
    judged with the target; its decisions are saved in the run folder."""
    experiment = inputs.experiment
    benchmark = experiment.benchmark
    if not experiment.cfg.get("selector"):
        return benchmark.forget
    context = SelectionContext(inputs.policy, inputs.tokenizer, experiment.spec.template)
    return build(experiment.cfg.selector).select(benchmark.forget + benchmark.retain, context,
                                                 experiment.run_dir / DECISIONS_FILE)


@batch_set("retain")
def retain_set(inputs: StageInputs) -> list[dict]:
    # Selected pairs may come from the retain split: the retain term must not pull them back.
    flagged, retain = inputs.flagged, inputs.experiment.benchmark.retain
    if not flagged:  # no selector; text records have no question to match
        return retain
    return [r for r in retain if (r["question"], r["answer"]) not in flagged]


def reference_model(policy: nn.Module) -> nn.Module:
    """The model before unlearning: a frozen copy taken before any step, or under LoRA the policy
    itself with its adapters switched off (no copy)."""
    return AdapterDisabled(policy) if is_lora(policy) else frozen_copy(policy)


@frozen_model("ref")
def reference(inputs: StageInputs) -> nn.Module:
    # A ZeRO-3 shard cannot be copied into a model: the reference is loaded (partitioned) from the target.
    if is_partitioned(inputs.policy) and not is_lora(inputs.policy):
        experiment = inputs.experiment
        return freeze(experiment.trainer.load(experiment.spec, inputs.target)[0])
    return reference_model(inputs.policy)

