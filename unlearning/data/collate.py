"""Turning question/answer pairs into token ids with answer-only labels, and padding them into batches."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cache
from string import Formatter
from typing import Sequence

import torch

from unlearning.errors import ConfigError, quote
from unlearning.ops import IGNORE_INDEX

log = logging.getLogger(__name__)

TEMPLATE_FIELDS = {"prompt": "question", "answer": "answer"}  # the one field each template text may hold


@dataclass(frozen=True)
class PromptTemplate:
    """How a model expects a QA turn; lives in the model's config because chat formats differ per model.

    `prompt` is formatted with `question`, `answer` with `answer`. The answer (and EOS) are the only
    labelled tokens: the prompt never contributes to a loss or a metric.
    """

    prompt: str = "Question: {question}\nAnswer:"
    answer: str = " {answer}"
    add_bos: bool = True
    add_eos: bool = True

    def __post_init__(self) -> None:
        """Each text holds plain text and its one field once, nothing else (a prompt without `{question}`
        renders every question the same): no attribute or index access
        (`str.format` would evaluate it) and no other braces (lm-eval renders our prompts as Jinja
        templates in an unsandboxed environment: a brace could smuggle Jinja code into it)."""
        for part, field in TEMPLATE_FIELDS.items():
            text = getattr(self, part)
            try:
                pieces = list(Formatter().parse(text))
            except ValueError:  # an unmatched brace
                pieces = [("{", None, None, None)]
            if any("{" in literal or "}" in literal
                   or (name is not None and (name, spec, conversion) != (field, "", None))
                   for literal, name, spec, conversion in pieces):
                raise ConfigError(f"model.template.{part}={quote(text)} is not allowed; valid: plain text and "
                                  f"{{{field}}}, no other braces")
            if sum(name is not None for _, name, _, _ in pieces) != 1:
                raise ConfigError(f"model.template.{part}={quote(text)} does not hold {{{field}}} exactly once; "
                                  f"valid: plain text and {{{field}}} once")


def _ids(tokenizer, text: str) -> list[int]:
    # verbose=False: the callers cut at `length_limit`, so transformers' "longer than the maximum" is noise
    return tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]


def length_limit(tokenizer, max_length: int) -> int:
    """`max_length`, or the model's context when that is shorter (models.load_pretrained puts it in the
    tokenizer's `model_max_length`): positions past the context were never trained, and overflow a
    learned position table, so sequences are cut at the context, with a warning naming both."""
    context = tokenizer.model_max_length
    if context >= max_length:
        return max_length
    _warn_context(max_length, context)
    return context


@cache
def _warn_context(max_length: int, context: int) -> None:
    log.warning("max_length=%d exceeds the model's context of %d tokens (max_position_embeddings): "
                "sequences are truncated at %d", max_length, context, context)


def encode_prompt(tokenizer, template: PromptTemplate, question: str) -> list[int]:
    """Token ids of the prompt alone (BOS included when the template asks for it): generation input."""
    bos = [tokenizer.bos_token_id] if template.add_bos and tokenizer.bos_token_id is not None else []
    return bos + _ids(tokenizer, template.prompt.format(question=question))


def encode_qa(tokenizer, template: PromptTemplate, question: str, answer: str, max_length: int) -> dict:
    """`input_ids` and `labels` (prompt masked with -100) of one QA pair, truncated to `max_length`.

    Prompt and answer are tokenized separately so the prompt/answer boundary is exact whatever the
    tokenizer merges across it.
    """
    prompt_ids = encode_prompt(tokenizer, template, question)
    answer_ids = _ids(tokenizer, template.answer.format(answer=answer))
    if template.add_eos and tokenizer.eos_token_id is not None:
        answer_ids = answer_ids + [tokenizer.eos_token_id]
    limit = length_limit(tokenizer, max_length)
    input_ids = (prompt_ids + answer_ids)[:limit]
    labels = ([IGNORE_INDEX] * len(prompt_ids) + answer_ids)[:limit]
    return {"input_ids": input_ids, "labels": labels}


def encode_text(tokenizer, template: PromptTemplate, text: str, max_length: int) -> dict:
    """A plain-text block (a book passage, a document): every token after BOS is labelled."""
    ids = encode_prompt(tokenizer, PromptTemplate(prompt="{question}", add_bos=template.add_bos), text)
    ids = ids[:length_limit(tokenizer, max_length)]
    bos = int(bool(ids) and ids[0] == tokenizer.bos_token_id and template.add_bos)
    return {"input_ids": ids, "labels": [IGNORE_INDEX] * bos + ids[bos:]}


def encode_record(tokenizer, template: PromptTemplate, record: dict, max_length: int) -> dict:
    """A QA record (`question`, `answer`) or a text record (`text`), encoded for training; a record
    that already holds `input_ids` (encoded by a method's data provider, e.g. WHP's anchored blocks)
    passes through."""
    if "input_ids" in record:
        return record
    if "text" in record:
        return encode_text(tokenizer, template, record["text"], max_length)
    return encode_qa(tokenizer, template, record["question"], record["answer"], max_length)


def pad_batch(examples: Sequence[dict], pad_token_id: int, side: str = "right") -> dict[str, torch.Tensor]:
    """Pad `input_ids` (and `labels` when present) to the longest example; adds `attention_mask`.

    Right padding for training and scoring; left padding for batched generation so that every prompt
    ends at the last position. Extra fields ride along: a nested record (e.g. a translation) is padded
    as a batch of its own, an extra per-token integer list (as long as `input_ids`) is padded with 0.
    """
    width = max(len(e["input_ids"]) for e in examples)
    batch: dict[str, list] = {"input_ids": [], "attention_mask": []}
    has_labels = "labels" in examples[0]
    if has_labels:
        batch["labels"] = []
    for e in examples:
        n_pad = width - len(e["input_ids"])
        ones = [1] * len(e["input_ids"])
        if side == "right":
            batch["input_ids"].append(e["input_ids"] + [pad_token_id] * n_pad)
            batch["attention_mask"].append(ones + [0] * n_pad)
            if has_labels:
                batch["labels"].append(e["labels"] + [IGNORE_INDEX] * n_pad)
        else:
            batch["input_ids"].append([pad_token_id] * n_pad + e["input_ids"])
            batch["attention_mask"].append([0] * n_pad + ones)
            if has_labels:
                batch["labels"].append([IGNORE_INDEX] * n_pad + e["labels"])
    padded = {k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}
    for key in examples[0].keys() - padded.keys():
        if isinstance(examples[0][key], dict):
            padded[key] = pad_batch([e[key] for e in examples], pad_token_id, side)
        else:
            zeros = [[0] * (width - len(e[key])) for e in examples]
            rows = [e[key] + z if side == "right" else z + e[key] for e, z in zip(examples, zeros)]
            padded[key] = torch.tensor(rows, dtype=torch.long)
    return padded
def pad_sub_batches(items: Sequence[dict], pad_token_id: int) -> dict[str, dict[str, torch.Tensor]]:
    """A batch of paired items (`{"forget": example, "retain": example, ...}`): each sub-batch padded."""
    return {key: pad_batch([item[key] for item in items], pad_token_id) for key in items[0]}
