"""What every benchmark item trains and evaluates on, built once per process.

Data: the real TOFU files (forget10, retain90, forget10_perturbed). Evaluation model: the real
stories260K. Training model: a randomly initialised Llama with stories260K's tokenizer (512 tokens),
by default hidden 384, 4 layers, ~7.3M parameters, so that a step's compute dominates the per-step
fixed costs a framework adds, as it does on the models the framework is meant for (stories260K itself
is so small that fixed costs would dominate). Method, retain term, optimizer, trainer and evaluation
settings come from the project's Hydra configs (`experiment=tofu_stories260K`), so the benchmark trains
what `unlearn experiment=tofu_stories260K method=<name>` trains, on a bigger model.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from transformers import LlamaConfig, LlamaForCausalLM

from unlearning.cli import CONFIG_DIR
from unlearning.config import build
from unlearning.data.alternates import alternate_answers
from unlearning.data.collate import encode_record
from unlearning.data.datamodule import UnlearningDataModule
from unlearning.data.tofu import load_records
from unlearning.evaluation.tofu import TofuEvaluation, evaluate_tofu

REPO = Path(__file__).resolve().parent.parent
HEAD_DIM = 64


def option(default, help: str):
    """A Settings field that is also a `python -m benchmarks` option, with its help text."""
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class Settings:
    """The suite's sizes; every field is a command-line option of `python -m benchmarks`."""

    data_dir: Path = option(Path(os.environ.get("UNLEARNING_DATA_DIR", REPO.parent / "shared" / "data")),
                            "folder of the real data: tofu/, models/stories260K (default: $UNLEARNING_DATA_DIR "
                            "or ../shared/data beside the checkout)")
    repeats: int = option(3, "timed repeats per measurement, the median is reported; also the memory "
                             "processes per method")
    warmup: int = option(1, "untimed rounds before the timed repeats")
    steps: int = option(4, "training steps per timed run (items 1, 2)")
    batch_size: int = option(4, "forget examples per step, each paired with one retain example")
    hidden_size: int = option(384, "hidden size of the benchmark Llama (attention heads of 64)")
    num_layers: int = option(4, "decoder layers of the benchmark Llama")
    eval_records: int = option(50, "forget10 records evaluated in item 3")
    scaling_base: int = option(8, "forget records at 1x in item 5 (a multiple of --batch-size)")
    memory_steps: int = option(3, "training steps of each memory-measuring process (item 4)")
    plan_hidden_size: int = option(1024, "hidden size of item 6's Llama (8 layers: 101.7M parameters)")
    plan_num_layers: int = option(8, "decoder layers of item 6's Llama")
    plan_configs: str = option("single,single_checkpointing,ddp,zero2,zero2_checkpointing,zero3",
                               "configs of item 6 (plan vs reality), comma-separated; benchmarks/plan_vs_reality.py "
                               "lists them")
    eval_overrides: str = option("", "overrides of the default experiment whose three models item 8 evaluates "
                                     "(one string, split as a shell splits it; default: none)")

    def check(self, forget_size: int) -> None:
        needed = {"--steps x --batch-size": self.steps * self.batch_size,
                  "4 x --scaling-base": 4 * self.scaling_base, "--eval-records": self.eval_records,
                  "--memory-steps x --batch-size": self.memory_steps * self.batch_size}
        for what, count in needed.items():
            if count > forget_size:
                raise ValueError(f"{what} = {count} exceeds the {forget_size} forget10 records (one epoch)")
        if self.scaling_base % self.batch_size:
            raise ValueError(f"--scaling-base {self.scaling_base} must be a multiple of --batch-size {self.batch_size}")


def project_config(data_dir: Path, *overrides: str) -> DictConfig:
    """The composed config `unlearn experiment=tofu_stories260K <overrides>` would run with (real TOFU,
    stories260K's tokenizer and prompt template, max_length 256, the evaluation settings)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config", overrides=[
            "experiment=tofu_stories260K", f"paths.data_dir={data_dir}", "paths.run_dir=unused", *overrides])


def random_llama(tokenizer, hidden: int, layers: int, positions: int, seed: int) -> LlamaForCausalLM:
    """A randomly initialised Llama (same weights for a given seed) in train mode: heads of 64, Llama's
    8/3 MLP ratio rounded up to 32, embeddings tied, `tokenizer`'s vocabulary and special tokens."""
    heads = max(1, hidden // HEAD_DIM)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=-(-8 * hidden // 3 // 32) * 32,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=positions, tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaForCausalLM(config).train()


class Workload:
    """The data, models and configs of one suite run, loaded once and shared by every item."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.config = project_config(settings.data_dir)
        spec = build(self.config.model)
        self.template = spec.template
        self.eval_model, self.tokenizer = spec.load(spec.base_path())
        self.eval_model.eval()
        tofu = str(settings.data_dir / "tofu")
        self.forget = load_records(tofu, "forget10")
        self.forget_perturbed = load_records(tofu, "forget10_perturbed")
        # Tokenized here once (the data module passes encoded records through): every data module reads it.
        self.retain = [encode_record(self.tokenizer, self.template, record, self.config.max_length)
                       for record in load_records(tofu, "retain90")]
        settings.check(len(self.forget))
        self._datamodules: dict[tuple, UnlearningDataModule] = {}

    def datamodule(self, keys: tuple[str, ...], forget_size: int | None = None) -> UnlearningDataModule:
        """The data module serving `keys` (the first `forget_size` forget records), as the pipeline builds it;
        set up once and shared by every run that reads the same sets (tokenizing is not what is timed)."""
        if (keys, forget_size) not in self._datamodules:
            forget = self.forget[:forget_size]
            sets = {"forget": forget, "retain": self.retain, "alternate": alternate_answers(forget, self.config.seed)}
            datamodule = UnlearningDataModule(
                {key: sets[key] for key in keys}, self.tokenizer, self.template, batch_size=self.settings.batch_size,
                max_length=self.config.max_length, seed=self.config.seed, aligned_keys=("alternate",))
            datamodule.setup("fit")
            self._datamodules[keys, forget_size] = datamodule
        return self._datamodules[keys, forget_size]

    def evaluate_forget(self, records: list[dict], batch_size: int | None = None,
                        generate: bool = True) -> TofuEvaluation:
        """The project's TOFU evaluation of `records` as the forget set, by stories260K, with the evaluation
        config's settings (its batch size unless one is given)."""
        tofu = self.config.eval.groups.tofu
        return evaluate_tofu(self.eval_model, self.tokenizer, self.template, {"forget": records},
                             batch_size or tofu.batch_size, self.config.max_length, tofu.max_new_tokens,
                             generate=generate)

    def training_model(self) -> LlamaForCausalLM:
        """The randomly initialised benchmark Llama (same weights for a given seed), in train mode."""
        return random_llama(self.tokenizer, self.settings.hidden_size, self.settings.num_layers,
                            2 * self.config.max_length, self.config.seed)

    @cached_property
    def training_model_description(self) -> str:
        """What the items' tables say of the model they train (built once to count its parameters)."""
        model = self.training_model()
        shape = model.config
        params = sum(p.numel() for p in model.parameters())
        return (f"randomly initialised Llama, hidden {shape.hidden_size}, {shape.num_hidden_layers} layers, "
                f"{shape.num_attention_heads} heads, MLP {shape.intermediate_size}, {params / 1e6:.1f}M parameters, "
                f"float32, stories260K's tokenizer ({len(self.tokenizer)} tokens), max_length {self.config.max_length}")
