"""Config checking at startup: a misspelled key, a value of the wrong type or out of range fails before
anything is built, with one line naming the key and what is valid.

Hydra accepts a key added with `+` (or written in a user's YAML) that no code reads: `+method.gama=1`
would run NPO at gamma 1 and label it a gamma experiment. A bad value fails minutes later inside a
stage, or never (a negative learning rate trains away from the objective). What reads a node says
what it may hold:

- a `_target_` node: the signature of its target (its keys; the types its annotations name; a nested
  `_target_` node or a dataclass-typed parameter, such as `model.template`, is checked in turn);
- the plain nodes (top level, finetune, reinforce, data, eval, paths): the dataclasses of
  `unlearning/settings.py` that describe them;
- every number whose key is in RANGES (lr, gamma, alpha, beta, k, batch_size, max_steps, ...),
  wherever it appears.

`prepare_config` also refuses secrets in the config (it is written to results.json and sent to the
loggers) and output paths outside the run folder (relative ones are taken inside it).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import os
import types
import typing
from collections.abc import Iterable, Mapping
from pathlib import Path
from pkgutil import resolve_name
from typing import Any, Literal, Union

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from unlearning.command_line import environment_secrets
from unlearning.errors import ConfigError, quote
from unlearning.settings import TRAINING_KEYS, EvaluationSettings, Target

HYDRA_KEYS = {"_target_", "_partial_", "_recursive_", "_convert_", "_args_"}
OUTPUT_PATHS = ("logger.save_dir", "eval.groups.lm_eval.benchmark_dir")  # where a run writes besides run_dir


@dataclasses.dataclass(frozen=True)
class Range:
    """The numbers a key accepts: from `low` (excluded when `low_open`) up to `high` included."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value) or (isinstance(value, int) and abs(value) > LARGEST_INT):
            return False  # inf would pass `> 0`; an int past int64 overflows torch and the loaders
        return (value > self.low if self.low_open else value >= self.low) and value <= self.high

    def __str__(self) -> str:
        if self.high == math.inf:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return f"{'(' if self.low_open else '['}{self.low:g}, {self.high:g}]"


LARGEST_INT = 2**63 - 1  # what torch, numpy and Lightning's counters hold
POSITIVE = Range(0, low_open=True)
NON_NEGATIVE = Range(0)
COUNT = Range(1)
FRACTION = Range(0, 1, low_open=True)
STEPS = Range(-1)  # -1: no limit, Lightning's convention
RANGES = {
    "lr": POSITIVE, "beta": POSITIVE, "steering_coeff": POSITIVE, "limit": POSITIVE,
    "gamma": NON_NEGATIVE, "alpha": NON_NEGATIVE, "beta1": NON_NEGATIVE, "beta2": NON_NEGATIVE,
    "strength": NON_NEGATIVE, "w_neg": NON_NEGATIVE, "w_pos": NON_NEGATIVE, "weight_decay": NON_NEGATIVE,
    "gradient_clip_val": NON_NEGATIVE, "warmup_steps": NON_NEGATIVE, "epochs": NON_NEGATIVE,
    "seed": NON_NEGATIVE, "layer": NON_NEGATIVE, "num_fewshot": NON_NEGATIVE, "n_shots": NON_NEGATIVE,
    "k": FRACTION, "fraction": FRACTION, "focus_fraction": Range(0, 1),
    "batch_size": COUNT, "max_length": COUNT, "max_new_tokens": COUNT, "max_examples": COUNT,
    "every_n_steps": COUNT, "checkpoint_every_n_steps": COUNT, "log_every_n_steps": COUNT,
    "requests": COUNT, "n_prompts": COUNT, "context_words": COUNT, "max_prompts": COUNT,
    "vocab_size": COUNT, "hidden_size": COUNT, "intermediate_size": COUNT, "num_layers": COUNT,
    "num_heads": COUNT, "max_position_embeddings": COUNT,
    "max_steps": STEPS, "max_epochs": STEPS,
}


def prepare_config(cfg: DictConfig, schema: type) -> None:
    """Check `cfg` against `schema` (RunSettings or EvaluationSettings) and refuse secrets in it, then
    take its relative output paths inside the run folder, so that a run writes nowhere else besides the
    shared stage cache. Raises ConfigError with one line."""
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as error:
        raise ConfigError(f"{error.full_key} is missing; valid: any value, given as {error.full_key}=...") from None
    except OmegaConfBaseException as error:
        raise ConfigError(f"{error.full_key} cannot be resolved: {str(error).splitlines()[0]}") from None
    refuse_secrets(resolved)
    if schema is EvaluationSettings:  # `unlearn-eval experiment=<name>` composes the experiment's training
        resolved = {name: value for name, value in resolved.items() if name not in TRAINING_KEYS}  # keys too
    check_fields("", resolved, schema)
    run_dir = Path(cfg.paths.run_dir)
    for key in OUTPUT_PATHS:
        path = OmegaConf.select(cfg, key)
        if not path:
            continue
        inside = run_dir / Path(path).expanduser()  # an absolute path stays itself
        folder = os.path.abspath(run_dir)
        if os.path.abspath(inside) != folder and not os.path.abspath(inside).startswith(os.path.join(folder, "")):
            raise ConfigError(f"{key}={quote(path)} is outside the run folder {run_dir}; valid: a path inside it "
                              "(relative paths are taken inside it)")
        OmegaConf.update(cfg, key, str(inside))


def check_fields(key: str, node: dict, schema: type) -> None:
    """A plain node against a dataclass: no unknown key, no required key missing, every value fitting."""
    annotations = typing.get_type_hints(schema)
    fields = {field.name: field for field in dataclasses.fields(schema)}
    for name, value in node.items():
        if name not in fields:
            raise ConfigError(f"{child(key, name)} is not a key of {key or 'the config'}; valid: {', '.join(fields)}")
        check_value(child(key, name), value, annotations[name])
    for name, field in fields.items():
        if name not in node and field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(f"{child(key, name)} is missing; valid: {describe(annotations[name])}")


def check_target(key: str, node: dict) -> None:
    """A `_target_` node against its target's signature (a `**kwargs` target takes any key)."""
    path = node["_target_"]
    try:
        parameters = signature(resolve_name(path)).parameters
    except Exception:  # hydra raises several types, each with a multi-line message
        raise ConfigError(f"{key}._target_={path!r} cannot be imported; valid: a dotted path to a class or "
                          "function") from None
    named = [name for name, p in parameters.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    takes_any_key = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    for name, value in node.items():
        if name in HYDRA_KEYS:
            continue
        if name in named:
            check_value(child(key, name), value, parameters[name].annotation)
        elif takes_any_key:
            check_value(child(key, name), value, Any)
        else:
            raise ConfigError(f"{child(key, name)} is not a parameter of {path}; valid: {', '.join(named) or 'none'}")


def signature(target: Any) -> inspect.Signature:
    """With annotations evaluated; a target whose annotations do not evaluate keeps them as strings,
    which `matches` accepts anything for."""
    try:
        return inspect.signature(target, eval_str=True)
    except Exception:
        return inspect.signature(target)


def check_value(key: str, value: Any, annotation: Any) -> None:
    """`value` must fit one member of `annotation` (a union's members are tried in order); a matching
    mapping or list is checked inside, a number against RANGES by its key's last name."""
    if isinstance(value, dict) and "_target_" in value:
        check_target(key, value)
        return
    if is_number(value) and not finite_number(value):  # whatever the annotation: no setting means inf or NaN
        raise ConfigError(f"{key}={quote(value)} is not allowed; valid: a finite number (integers within int64)")
    for member in union_members(annotation):
        if matches(value, member):
            check_contents(key, value, member)
            rule = RANGES.get(key.rpartition(".")[2])
            if rule is not None and is_number(value) and value not in rule:
                raise ConfigError(f"{key}={quote(value)} is out of range; valid: {rule}")
            return
    raise ConfigError(f"{key}={quote(value)} is not allowed; valid: {describe(annotation)}")


def matches(value: Any, member: Any) -> bool:
    """Whether `value`, as YAML gives it, has the shape `member` describes (one member of a union)."""
    origin = typing.get_origin(member) or member
    if member in (Any, inspect.Parameter.empty) or isinstance(member, (str, typing.ForwardRef)):
        return True
    if origin is Literal:
        return value in typing.get_args(member)
    if member is type(None):
        return value is None
    if member is bool:
        return isinstance(value, bool)
    if member is int:
        return isinstance(value, int) and not isinstance(value, bool) and finite_number(value)
    if member is float:
        return is_number(value) and finite_number(value)
    if member in (str, Path, os.PathLike):
        return isinstance(value, str)
    if member is Target:
        return False  # a `_target_` node was taken before: this is a node without one
    if dataclasses.is_dataclass(member) or (isinstance(origin, type) and issubclass(origin, Mapping)):
        return isinstance(value, dict)
    if isinstance(origin, type) and issubclass(origin, Iterable):
        return isinstance(value, list)
    if isinstance(origin, type):
        return isinstance(value, origin)
    return True  # a typing construct this check does not model (Callable, ...)


def check_contents(key: str, value: Any, member: Any) -> None:
    """Inside a matched container: a dataclass's fields, a mapping's values, a homogeneous list's items."""
    arguments = typing.get_args(member)
    if dataclasses.is_dataclass(member):
        check_fields(key, value, member)
    elif isinstance(value, dict) and len(arguments) == 2:
        for name, item in value.items():
            check_value(child(key, str(name)), item, arguments[1])
    elif isinstance(value, list) and len(arguments) == 1:
        for index, item in enumerate(value):
            check_value(f"{key}[{index}]", item, arguments[0])


def refuse_secrets(node: Any, key: str = "") -> None:
    """No value may hold a secret of the environment (`${oc.env:WANDB_API_KEY}` or pasted): the resolved
    config is written to results.json and logged as hyperparameters by every logger."""
    if isinstance(node, dict):
        for name, item in node.items():
            refuse_secrets(item, child(key, str(name)))
    elif isinstance(node, list):
        for index, item in enumerate(node):
            refuse_secrets(item, f"{key}[{index}]")
    elif isinstance(node, str):
        for variable, secret in environment_secrets().items():
            if secret in node:
                raise ConfigError(f"{key} holds the value of ${variable}; valid: secrets stay in the environment "
                                  "(the config is written to results.json and the loggers)")


def union_members(annotation: Any) -> tuple:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return typing.get_args(annotation)
    return (annotation,)


def describe(annotation: Any) -> str:
    """What an annotation accepts, in words: `float or Tensor`, `'max', 'min'`, `a _target_ node`."""
    words = []
    for member in union_members(annotation):
        if typing.get_origin(member) is Literal:
            words.append(", ".join(repr(choice) for choice in typing.get_args(member)))
        elif member is type(None):
            words.append("null")
        elif member is Target:
            words.append("a _target_ node")
        elif dataclasses.is_dataclass(member):
            words.append(f"a mapping of {', '.join(field.name for field in dataclasses.fields(member))}")
        else:
            origin = typing.get_origin(member) or member
            words.append(getattr(origin, "__name__", str(member)))
    return " or ".join(words)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def finite_number(value: float) -> bool:
    """No number a run computes with is inf, NaN or an integer past int64 (which torch cannot hold)."""
    return math.isfinite(value) and not (isinstance(value, int) and abs(value) > LARGEST_INT)


def child(key: str, name: str) -> str:
    return f"{key}.{name}" if key else name
