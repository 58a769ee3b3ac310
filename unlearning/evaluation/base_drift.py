"""How far a model moved from the base model, on text neither unlearning term trains on: WHP's claim that
the benchmarks "barely move" (arXiv 2310.02238), tested at any scale.

- general_ppl: perplexity on general text from another source than the forget and the retain corpora (the
  text protocol's held-out perplexity is on lines of the retain term's own file, so the retain term
  improves it and says nothing about general capability);
- base_kl: mean per-token KL(base || model) on continuations the base model sampled itself (fixed seed):
  on the base model's own distribution, any change of the model's predictions shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from unlearning.data.collate import PromptTemplate, encode_prompt, pad_batch
from unlearning.data.files import read_json_lines
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.perplexity import perplexity
from unlearning.ops import masked_mean, position_kl
from unlearning.scoring import eval_mode, pad_id


def general_texts(path: str | Path, field: str, n: int) -> list[str]:
    """The first `n` non-empty `field` values of a JSON lines file (read as every data file is: files.py)."""
    records = read_json_lines(Path(path).expanduser(), "protocol.general_path")
    for number, record in enumerate(records, 1):
        if not isinstance(record.get(field), str):
            raise ConfigError(f"{path} record {number}: no string field '{field}' (protocol.general_field)")
    return [record[field] for record in records if record[field].strip()][:n]


def sample_continuations(model, tokenizer, prompts: Sequence[list[int]], max_new_tokens: int,
                         seed: int) -> list[dict]:
    """Each prompt continued by sampling (temperature 1) from `model`, the same for a given seed; the
    records label the sampled tokens only."""
    samples = []
    with eval_mode(model), torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for ids in prompts:
            output = model.generate(torch.tensor([ids], device=model.device), do_sample=True, top_k=0,
                                    max_new_tokens=max_new_tokens, pad_token_id=pad_id(tokenizer))[0].tolist()
            samples.append({"input_ids": output, "labels": [-100] * len(ids) + output[len(ids):]})
    return samples


def shifted_logits(model, samples: Sequence[dict], pad_token_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token logits [B, T-1, V] at the positions that predict a labelled token, and their mask."""
    batch = pad_batch(samples, pad_token_id)
    with eval_mode(model), torch.no_grad():
        logits = model(input_ids=batch["input_ids"].to(model.device),
                       attention_mask=batch["attention_mask"].to(model.device)).logits[:, :-1].float().cpu()
    return logits, (batch["labels"][:, 1:] != -100).float()


class BaseDrift(MetricGroup):
    """general_ppl and base_kl of every model. `bind_base` samples the base model's continuations (of the
    general texts' first words) and keeps its next-token logits on them once; `evaluate` compares."""

    name = "base_drift"
    columns = ("general_ppl", "base_kl")
    reads_qa_splits = False

    def __init__(self, texts: Sequence[str], n_samples: int = 32, prompt_words: int = 8, max_new_tokens: int = 32,
                 seed: int = 0, batch_size: int = 16, max_length: int = 512) -> None:
        if not texts:
            raise ConfigError("protocol.general_path: no general text to measure drift on")
        self.texts, self.n_samples, self.prompt_words = list(texts), n_samples, prompt_words
        self.max_new_tokens, self.seed, self.batch_size, self.max_length = max_new_tokens, seed, batch_size, max_length
        self.samples: list[dict] = []
        self.base_logits: list[torch.Tensor] = []

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return self.columns  # its table shows all it reports

    def check_disjoint(self, *corpora: Sequence[str]) -> None:
        """The point of the measure: none of the general texts is one the forget or retain term trains on."""
        trained = {text for corpus in corpora for text in corpus}
        shared = set(self.texts) & trained
        if shared:
            raise ConfigError(f"protocol.general_path shares {len(shared)} texts with the forget/retain corpora, "
                              f"e.g. {next(iter(shared))[:60]!r}")

    def bind_base(self, model, tokenizer, template: PromptTemplate) -> None:
        prompts = [encode_prompt(tokenizer, PromptTemplate(prompt="{question}", add_bos=template.add_bos),
                                 " ".join(text.split()[: self.prompt_words])) for text in self.texts[: self.n_samples]]
        self.samples = sample_continuations(model, tokenizer, prompts, self.max_new_tokens, self.seed)
        self.base_logits = [shifted_logits(model, self.samples[i:i + self.batch_size], pad_id(tokenizer))[0]
                            for i in range(0, len(self.samples), self.batch_size)]

    def evaluate(self, model, tokenizer, template, corpus) -> Evaluation:
        if not self.samples:
            raise RuntimeError("BaseDrift.bind_base must run before evaluate")
        total, count = 0.0, 0.0
        for start, base_logits in zip(range(0, len(self.samples), self.batch_size), self.base_logits):
            logits, mask = shifted_logits(model, self.samples[start:start + self.batch_size], pad_id(tokenizer))
            total += float(masked_mean(position_kl(base_logits, logits), mask.bool())) * float(mask.sum())
            count += float(mask.sum())
        general_ppl = perplexity(model, tokenizer, template, self.texts, self.batch_size, self.max_length)
        return Evaluation({"general_ppl": general_ppl, "base_kl": total / count})
