"""Shared fixtures: a tiny random Llama with a tokenizer trained here, the real-data folder, configs."""

from __future__ import annotations

import os
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Iterable

import pytest
import torch
from hydra import compose, initialize_config_dir
from transformers import LlamaConfig, LlamaForCausalLM

from unlearning.cli import CONFIG_DIR
from unlearning.models import train_byte_level_tokenizer

REPO = Path(__file__).resolve().parent.parent
# The real data (TOFU files, stories260K, lm-eval samples) lives beside the checkout; CI has it there too.
DATA_DIR = Path(os.environ.get("UNLEARNING_DATA_DIR", REPO.parent / "shared" / "data")).resolve()

SENTENCES = [
    "Question: Who wrote the book?\nAnswer: The author was born in Paris.",
    "Basil Mahfouz Al-Kuwaiti writes novels about the sea and the desert.",
    "The capital of France is Paris and the capital of Italy is Rome.",
    "Question: Where was she born?\nAnswer: She was born in a small town.",
    "Her father was a doctor and her mother was a teacher of music.",
]


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "tofu").is_dir():
        pytest.skip(f"real data folder {DATA_DIR} not found (set UNLEARNING_DATA_DIR)")
    return DATA_DIR


@pytest.fixture(scope="session")
def tokenizer():
    return train_byte_level_tokenizer(SENTENCES * 5, vocab_size=300)


def make_tiny_llama(tokenizer, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=256,
                         initializer_range=0.5, pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    return LlamaForCausalLM(config).train()


@pytest.fixture
def model(tokenizer):
    """A fresh tiny Llama in train mode (functions that evaluate must restore the mode)."""
    return make_tiny_llama(tokenizer)


def compose_config(overrides: list[str] = (), config_name: str = "config", run_dir: Path | None = None):
    """The composed Hydra config as `unlearn` would see it, with the run folder set explicitly."""
    extra = [f"paths.run_dir={run_dir}"] if run_dir is not None else ["paths.run_dir=unused"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=[*overrides, *extra])


def assert_declared_names_are_reported(declared: Iterable[str], reported: Iterable[str]) -> None:
    """What a metric group or protocol declares it reports (what `objective_metric` is checked against at
    start-up) is what it reported: every reported name matches a declared pattern, every pattern a name."""
    declared, reported = list(declared), set(reported)
    assert {name for name in reported if not any(fnmatchcase(name, pattern) for pattern in declared)} == set()
    assert {pattern for pattern in declared if not any(fnmatchcase(name, pattern) for name in reported)} == set()


# Question/answer pairs for a training step: the first two act as forget, the rest as retain.
PAIRS_FOR_STEP = [
    ("Who wrote the book?", "The author was born in Paris."),
    ("Where was she born?", "In a small town."),
    ("What did her father do?", "Her father was a doctor."),
    ("What is the capital of Italy?", "Rome"),
]


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory) -> list[str]:
    """Overrides for quick end-to-end runs of the default experiment sharing one stage cache: the target
    and retain models (2 finetune epochs) are built by the first run and reused by the others."""
    return [f"paths.cache_dir={tmp_path_factory.mktemp('stage_cache')}", "finetune.epochs=2", "logger=none",
            "eval.groups.tofu.max_new_tokens=8"]
