"""Where models come from: a Hugging Face id or folder, or a tiny Llama built from config.

A model config instantiates a `ModelSpec`: it knows the prompt template of the model and how to load
weights + tokenizer from a path. `ScratchLlama` can also *build* its base model (a tokenizer trained on
the benchmark's text and randomly initialised weights), which is what the self-contained default uses.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from unlearning.data.collate import PromptTemplate
from unlearning.data.files import looks_local
from unlearning.errors import ConfigError
from unlearning.lora import LoraSettings

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
ATTENTION_IMPLEMENTATIONS = (None, "eager", "sdpa", "flash_attention_2")
# Model config keys that change how a model trains, not what it learns: the cached stages ignore them.
RUNTIME_KEYS = ("lora", "gradient_checkpointing", "attn_implementation")


@dataclass
class ModelSpec:
    """What every model config provides: a name, a prompt template, dtype and how to load a folder."""

    name: str
    template: PromptTemplate = field(default_factory=PromptTemplate)
    dtype: str = "float32"
    trust_remote_code: bool = False
    lora: LoraSettings | None = None  # null: unlearning trains every weight; else LoRA adapters (unlearning/lora.py)
    # Memory and speed switches: they change how a model computes, not what (see RUNTIME_KEYS).
    gradient_checkpointing: bool = False  # recompute activations in backward: less memory, ~30% more time
    attn_implementation: str | None = None  # eager, sdpa, flash_attention_2; null: transformers' default

    def __post_init__(self) -> None:
        if isinstance(self.template, Mapping):
            self.template = PromptTemplate(**self.template)
        if isinstance(self.lora, Mapping):
            self.lora = LoraSettings.from_config(self.lora)
        if self.dtype not in DTYPES:
            raise ConfigError(f"model.dtype={self.dtype!r} is not one of {sorted(DTYPES)}")
        if self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ConfigError(f"model.attn_implementation={self.attn_implementation!r} is not one of "
                              f"{[name for name in ATTENTION_IMPLEMENTATIONS if name]} (or null)")
        if self.attn_implementation == "flash_attention_2" and importlib.util.find_spec("flash_attn") is None:
            raise ConfigError("model.attn_implementation=flash_attention_2 needs the flash-attn package "
                              "(pip install flash-attn, on a CUDA machine); sdpa needs nothing")

    def load(self, path: str | Path) -> tuple[torch.nn.Module, PreTrainedTokenizerFast]:
        model, tokenizer = load_pretrained(path, DTYPES[self.dtype], self.trust_remote_code, self.attn_implementation)
        if self.gradient_checkpointing:
            # Non-reentrant: works with frozen inputs (LoRA) and with ZeRO-3's parameter gathering.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        return model, tokenizer


@dataclass
class PretrainedModel(ModelSpec):
    """A pretrained causal LM: a Hugging Face hub id or a local folder in `save_pretrained` format."""

    name_or_path: str = ""

    def base_path(self) -> str:
        if not self.name_or_path:
            raise ConfigError("model.name_or_path is empty: give a Hugging Face id or a local folder")
        return self.name_or_path


@dataclass
class ScratchLlama(ModelSpec):
    """A tiny Llama whose tokenizer (byte-level BPE) is trained on the benchmark's own text.

    Nothing is downloaded: the default experiment makes its model from this config and the data.
    """

    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    max_position_embeddings: int = 256

    def build(self, folder: Path, corpus: list[str], seed: int) -> None:
        """Train the tokenizer on `corpus`, initialise the weights from `seed`, save both to `folder`."""
        tokenizer = train_byte_level_tokenizer(corpus, self.vocab_size)
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            num_key_value_heads=self.num_heads,
            max_position_embeddings=self.max_position_embeddings,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            tie_word_embeddings=True,
        )
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            model = LlamaForCausalLM(config)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)


def train_byte_level_tokenizer(corpus: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer (GPT-2 style) with <pad>, <s>, </s>; deterministic for a given corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def load_pretrained(path: str | Path, dtype: torch.dtype, trust_remote_code: bool = False,
                    attn_implementation: str | None = None):
    """Model (in train mode) and tokenizer from a hub id or folder; safetensors only (a pickled checkpoint
    can run code when loaded), no remote code unless the model config asks for it.

    A tokenizer without a pad token pads with EOS, with a warning (padding is always masked out of
    losses and metrics, so this is what a researcher loading Llama-2 expects). The tokenizer's
    `model_max_length` becomes the model's context, where encoding cuts sequences (collate.py)."""
    path = str(path)
    folder = Path(path).expanduser()
    check_model_path(folder, path)
    if folder.is_dir() and not any(
        (folder / name).exists() for name in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ):
        raise ConfigError(f"model folder {path} has no tokenizer (tokenizer.json / tokenizer.model)")
    if folder.is_dir() and not any(folder.glob("*.safetensors")):
        raise ConfigError(f"model folder {path} has no .safetensors weights; valid: safetensors only (pickled "
                          "*.bin / *.pt checkpoints can run code when loaded: convert them where you trust them)")
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as error:  # transformers' several ways to fail
        raise ConfigError(f"the tokenizer of {path} cannot be loaded: {first_line(error)}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise ConfigError(f"the tokenizer of {path} has neither a pad nor an EOS token; "
                              "valid: a tokenizer with either")
        log.warning("the tokenizer of %s has no pad token: padding with its EOS token %r", path, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=dtype, use_safetensors=True, trust_remote_code=trust_remote_code,
            **({"attn_implementation": attn_implementation} if attn_implementation else {}),
        )
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as error:
        raise ConfigError(f"the model {path} cannot be loaded: {first_line(error)}") from None
    embeddings = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > embeddings:  # an id past the table would index out of range in the first batch
        raise ConfigError(f"the tokenizer of {path} has {len(tokenizer)} tokens, more than the model's {embeddings} "
                          "embeddings; valid: the tokenizer the model was trained with")
    context = getattr(model.config, "max_position_embeddings", None)
    if context:
        tokenizer.model_max_length = context
    # from_pretrained returns eval mode: training stages need dropout etc. as configured.
    model.train()
    return model, tokenizer


def check_model_path(folder: Path, path: str) -> None:
    """A model folder's files, each named when wrong: a missing local folder is refused (never looked up
    as a hub id), a file given for the folder, a folder or corrupt JSON for config.json and the
    tokenizer's JSON files, and truncated or corrupt safetensors."""
    if not folder.exists():
        if looks_local(path):
            raise ConfigError(f"model folder {path} does not exist; valid: a local folder in save_pretrained "
                              "format, or a hub id such as org/name")
        return
    if not folder.is_dir():
        raise ConfigError(f"model folder {path} is a file; valid: a folder in save_pretrained format")
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if file.is_dir():
            raise ConfigError(f"{file} is a folder; valid: a JSON file")
        if file.exists():
            try:
                json.loads(file.read_text(encoding="utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as error:
                raise ConfigError(f"{file} is corrupt (not valid JSON: {first_line(error)})") from None
    from safetensors import safe_open

    for file in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(file), framework="pt") as weights:
                weights.keys()
        except Exception as error:  # safetensors raises its own SafetensorError, or OSError
            raise ConfigError(f"{file} is corrupt or truncated: {first_line(error)}") from None


def first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0][:200]


def freeze(model: torch.nn.Module) -> torch.nn.Module:
    """`model` in eval mode without gradients: a reference / teacher model objectives compare against."""
    model.eval()
    model.requires_grad_(False)
    return model


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A frozen copy of `model` as it is now (the policy before its first step)."""
    return freeze(copy.deepcopy(model))
