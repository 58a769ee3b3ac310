"""A model's shape from its config alone, never its weights: what `unlearn-plan` counts parameters from.

Where a shape comes from (`model_shape`):
- the built scratch model (`model=tiny_llama`, `ScratchLlama`): its own config fields;
- a local folder: its `config.json`;
- a hub id: a shipped copy of the fields of its published `config.json`, in
  `conf/model_shapes/<id with / as __>.json` (nothing is downloaded). Another hub id is refused: save
  the model (or just its config.json) in a folder and give that folder.

Parameters are enumerated by name, as transformers names them, so the count is exact for the Llama
family (Llama, Mistral: gated MLP, RMSNorm, no biases) and for Phi (biases, LayerNorm, a two-matrix
MLP), and `trainable_params` regexes and LoRA's `target_modules` select from them as they do in a run.
Another `model_type` is counted as a Llama (an estimate, said in the shape's description).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from unlearning.config import CONFIG_DIR
from unlearning.errors import ConfigError
from unlearning.lora import LoraSettings
from unlearning.models import ModelSpec, PretrainedModel, ScratchLlama

SHAPES_DIR = Path(CONFIG_DIR) / "model_shapes"


@dataclass(frozen=True)
class Architecture:
    """What differs between the families counted here: the names of a layer's modules, which carry
    biases, and how many tensors of the MLP's width a layer keeps for backward (planning.memory)."""

    attention_output: str
    mlp: tuple[tuple[str, bool], ...]  # (name, whether it maps hidden -> intermediate)
    layer_norms: tuple[str, ...]
    final_norm: str
    biases: bool  # linear layers, norms and the LM head
    mlp_kept: int  # intermediate-sized tensors kept: gate, SiLU(gate), up, product (4); fc1, GELU(fc1) (2)


LLAMA = Architecture("o_proj", (("gate_proj", True), ("up_proj", True), ("down_proj", False)),
                     ("input_layernorm", "post_attention_layernorm"), "norm", biases=False, mlp_kept=4)
PHI = Architecture("dense", (("fc1", True), ("fc2", False)), ("input_layernorm",), "final_layernorm",
                   biases=True, mlp_kept=2)
ARCHITECTURES = {"llama": LLAMA, "mistral": LLAMA, "phi": PHI}


@dataclass(frozen=True)
class ModelShape:
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    vocab_size: int
    tied_embeddings: bool
    context: int  # max_position_embeddings: sequences are cut there (data/collate.py)
    head_dim: int
    model_type: str
    source: str  # where the fields were read

    @classmethod
    def from_config_json(cls, fields: dict, source: str) -> "ModelShape":
        try:
            heads = fields["num_attention_heads"]
            return cls(hidden_size=fields["hidden_size"], intermediate_size=fields["intermediate_size"],
                       num_layers=fields["num_hidden_layers"], num_heads=heads,
                       num_kv_heads=fields.get("num_key_value_heads") or heads, vocab_size=fields["vocab_size"],
                       tied_embeddings=fields.get("tie_word_embeddings", False),
                       context=fields.get("max_position_embeddings", 0),
                       head_dim=fields.get("head_dim") or fields["hidden_size"] // heads,
                       model_type=fields.get("model_type", "llama"), source=source)
        except KeyError as missing:
            raise ConfigError(f"{source} has no {missing.args[0]} field: unlearn-plan reads a causal LM's "
                              "config.json (hidden_size, intermediate_size, num_hidden_layers, ...)") from None

    @property
    def architecture(self) -> Architecture:
        return ARCHITECTURES.get(self.model_type, LLAMA)

    def linear_layers(self) -> dict[str, tuple[int, int]]:
        """A decoder layer's linear modules, by their path in the layer: (in features, out features)."""
        hidden, width, arch = self.hidden_size, self.intermediate_size, self.architecture
        query, key_value = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        layers = {"self_attn.q_proj": (hidden, query), "self_attn.k_proj": (hidden, key_value),
                  "self_attn.v_proj": (hidden, key_value), f"self_attn.{arch.attention_output}": (query, hidden)}
        layers.update({f"mlp.{name}": (hidden, width) if widens else (width, hidden) for name, widens in arch.mlp})
        return layers

    def named_parameters(self) -> Iterator[tuple[str, int]]:
        """(name, number of elements) of every parameter, in transformers' names."""
        arch, hidden = self.architecture, self.hidden_size
        norm = ("weight", "bias") if arch.biases else ("weight",)
        yield "model.embed_tokens.weight", self.vocab_size * hidden
        for index in range(self.num_layers):
            prefix = f"model.layers.{index}."
            for module, (fan_in, fan_out) in self.linear_layers().items():
                yield f"{prefix}{module}.weight", fan_in * fan_out
                if arch.biases:
                    yield f"{prefix}{module}.bias", fan_out
            for name in arch.layer_norms:
                yield from ((f"{prefix}{name}.{kind}", hidden) for kind in norm)
        yield from ((f"model.{arch.final_norm}.{kind}", hidden) for kind in norm)
        if not self.tied_embeddings:
            yield "lm_head.weight", self.vocab_size * hidden
            if arch.biases:
                yield "lm_head.bias", self.vocab_size

    def parameters(self, pattern: str | None = None) -> int:
        """The number of parameters, or of those whose name `pattern` (a regex) is found in."""
        regex = re.compile(pattern) if pattern is not None else None
        return sum(numel for name, numel in self.named_parameters() if regex is None or regex.search(name))

    def layer_parameters(self) -> int:
        """One decoder layer's parameters (what ZeRO-3 gathers at a time, unless the embedding is bigger)."""
        return self.parameters(r"^model\.layers\.0\.")

    def adapter_parameters(self, lora: LoraSettings, pattern: str | None = None) -> int:
        """LoRA's trainable parameters: r x (in + out) per adapted linear module (peft's `all-linear`:
        every linear module but the LM head; a list: module names, matched at the end of the path; another
        string: a regex the full module name must match), restricted to the modules whose weight's name
        `pattern` is found in, as `trainable_params` picks adapters by the weight they adapt."""
        targets, regex = lora.target_modules, re.compile(pattern) if pattern is not None else None
        total = 0
        for index in range(self.num_layers):
            for module, (fan_in, fan_out) in self.linear_layers().items():
                name = f"model.layers.{index}.{module}"
                if targets == "all-linear":
                    adapted = True
                elif isinstance(targets, str):
                    adapted = re.fullmatch(targets, name) is not None
                else:
                    adapted = any(name == target or name.endswith(f".{target}") for target in targets)
                if adapted and (regex is None or regex.search(f"{name}.weight")):
                    total += lora.r * (fan_in + fan_out)
        if not total:
            raise ConfigError(f"model.lora.target_modules={targets!r} adapts no linear module of this "
                              f"{self.model_type} model (its layers hold {', '.join(self.linear_layers())})")
        return total

    def describe(self) -> str:
        counted = "" if self.model_type in ARCHITECTURES else f", counted as a Llama (model_type {self.model_type})"
        return (f"{self.parameters() / 1e9:.3g}B parameters ({self.parameters():,}): {self.num_layers} layers, "
                f"hidden {self.hidden_size}, MLP {self.intermediate_size}, {self.num_heads} heads "
                f"({self.num_kv_heads} key/value), vocabulary {self.vocab_size}"
                f"{', tied embeddings' if self.tied_embeddings else ''}{counted}; from {self.source}")


def shipped_shape_file(hub_id: str) -> Path:
    return SHAPES_DIR / f"{hub_id.replace('/', '__')}.json"


def model_shape(spec: ModelSpec) -> ModelShape:
    """The shape of the model a run trains, from the model config (see the module docstring)."""
    if isinstance(spec, ScratchLlama):
        fields = {"hidden_size": spec.hidden_size, "intermediate_size": spec.intermediate_size,
                  "num_hidden_layers": spec.num_layers, "num_attention_heads": spec.num_heads,
                  "vocab_size": spec.vocab_size, "tie_word_embeddings": True,
                  "max_position_embeddings": spec.max_position_embeddings}
        return ModelShape.from_config_json(fields, f"model={spec.name} (built from its config)")
    if not isinstance(spec, PretrainedModel):
        raise ConfigError(f"model._target_ builds a {type(spec).__name__}: unlearn-plan reads the shape of a "
                          "PretrainedModel (config.json) or a ScratchLlama")
    path = spec.base_path()
    local = Path(path).expanduser()
    config = local / "config.json" if local.is_dir() else shipped_shape_file(path)
    if not config.is_file():
        where = f"the folder {path} has no config.json" if local.is_dir() else (
            f"no folder {path} here, and no shape shipped for that hub id (conf/model_shapes/{config.name})")
        raise ConfigError(f"model.name_or_path={path}: {where}; give a local folder holding the model's "
                          "config.json (the weights are not needed)")
    try:
        fields = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ConfigError(f"model.name_or_path={path}: cannot read {config}: {error}".splitlines()[0]) from None
    source = str(config) if local.is_dir() else f"conf/model_shapes/{config.name}, the shape shipped for {path}"
    return ModelShape.from_config_json(fields, source)
