"""Scoring primitives every metric group, selector and the WHP term proposal share: token log-probs of
encoded records in padded batches, batched greedy generation, ROUGE-L.

Batches group records of similar length (longest first, so running out of memory happens at once);
the model is measured in eval mode and given back in the mode it had. In data-parallel evaluation
(unlearning/sharding.py) each rank computes a share of these same batches, and tokenizes and scores
ROUGE for a share of the records: work every rank would otherwise repeat.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Sequence

import numpy as np
import torch
from rouge_score import rouge_scorer
from tqdm.auto import tqdm

from unlearning.data.collate import PromptTemplate, encode_prompt, encode_qa, pad_batch
from unlearning.ops import token_logprobs
from unlearning.sharding import map_sharded


@contextmanager
def eval_mode(model):
    """Disable dropout while measuring, then give the caller back the model in the mode it had."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def length_batches(lengths: Sequence[int], batch_size: int, segments: Sequence[int] | None = None) -> list[np.ndarray]:
    """Index batches of similar lengths (longest first, so running out of memory happens at once).
    segments: the sizes of consecutive parts batched apart (several evaluation sets scored in one call,
    each batched as if alone, so their numbers do not depend on what else is scored with them)."""
    lengths = np.asarray(lengths)
    batches, start = [], 0
    for size in segments if segments is not None else [len(lengths)]:
        order = start + np.argsort(-lengths[start:start + size], kind="stable")
        batches += [order[i:i + batch_size] for i in range(0, size, batch_size)]
        start += size
    return batches


def padded_sizes(batches: Sequence[np.ndarray], lengths: Sequence[int], extra: int = 0) -> list[int]:
    """Each batch's padded size in tokens (rows x (longest + extra)): what a forward pass costs, to
    balance the batches over the ranks."""
    lengths = np.asarray(lengths)
    return [len(idx) * (int(lengths[idx].max()) + extra) for idx in batches]


def n_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)


def in_order(model, compute: Callable[[np.ndarray], list], batches: Sequence[np.ndarray], count: int,
             progress_bar: tqdm | None = None, costs: Sequence[float] | None = None) -> list:
    """`compute(index batch)` (a value per index) in eval mode over `batches`, as one list by record
    index; under data-parallel evaluation each rank computes its share of the batches (map_sharded,
    balanced by `costs`)."""
    values: list = [None] * count
    with eval_mode(model):
        for idx, batch_values in zip(batches, map_sharded(compute, batches, progress_bar, costs), strict=True):
            for i, value in zip(idx, batch_values, strict=True):
                values[i] = value
    return values


@torch.no_grad()
def score_tokens(model, tokenizer, encoded: Sequence[dict], batch_size: int = 32,
                 progress_bar: tqdm | None = None, token_values: Callable = token_logprobs,
                 segments: Sequence[int] | None = None) -> list[np.ndarray]:
    """The log-prob of every labelled token of each encoded record (`input_ids`, `labels`), in order;
    or, per labelled token, whatever `token_values(logits, labels) -> (values [B, T-1, ...], mask)` gives.
    segments: see `length_batches`."""
    def forward(idx: np.ndarray) -> list[np.ndarray]:
        batch = pad_batch([encoded[i] for i in idx], pad_id(tokenizer))
        batch = {k: v.to(model.device) for k, v in batch.items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False).logits
        values, mask = token_values(logits, batch["labels"])
        return [values[row][mask[row]].double().cpu().numpy() for row in range(len(idx))]

    lengths = [len(e["input_ids"]) for e in encoded]
    batches = length_batches(lengths, batch_size, segments)
    return in_order(model, forward, batches, len(encoded), progress_bar, padded_sizes(batches, lengths))


def score_answers(model, tokenizer, template: PromptTemplate, pairs: Sequence[tuple[str, str]],
                  batch_size: int = 32, max_length: int = 512, progress_bar: tqdm | None = None,
                  segments: Sequence[int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sum of answer-token log-probs and number of answer tokens of each (question, answer), in order.
    segments: see `length_batches`."""
    encoded = map_sharded(lambda pair: encode_qa(tokenizer, template, *pair, max_length), pairs)
    scores = score_tokens(model, tokenizer, encoded, batch_size, progress_bar, segments=segments)
    logp = np.array([s.sum() for s in scores])
    counts = np.array([len(s) for s in scores], dtype=np.int64)
    if (counts == 0).any():  # a 0/0 here would silently become NaN in every metric downstream
        question, answer = pairs[int(np.argmax(counts == 0))]
        raise ValueError(f"answer {answer!r} to {question!r} has no token within max_length={max_length}")
    return logp, counts


@torch.no_grad()
def generate_answers(model, tokenizer, template: PromptTemplate, questions: Sequence[str],
                     max_new_tokens: int = 200, batch_size: int = 32,
                     progress_bar: tqdm | None = None, budget_counts_prompt: bool = False,
                     segments: Sequence[int] | None = None) -> list[str]:
    """Greedy answers to `questions`, batched with left padding so every prompt ends at the last slot.

    budget_counts_prompt: `max_new_tokens` bounds the whole left-padded sequence, prompt included, as
    TOFU's own `generate(max_length=200)` does; an answer gets what the batch's prompts leave (none: "").
    segments: see `length_batches`.
    """
    prompts = map_sharded(lambda question: {"input_ids": encode_prompt(tokenizer, template, question)}, questions)

    def generate(idx: np.ndarray) -> list[str]:
        batch = pad_batch([prompts[i] for i in idx], pad_id(tokenizer), side="left")
        batch = {k: v.to(model.device) for k, v in batch.items()}
        new_tokens = max_new_tokens - batch["input_ids"].shape[1] if budget_counts_prompt else max_new_tokens
        if new_tokens <= 0:
            return [""] * len(idx)
        out = model.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=pad_id(tokenizer))
        texts = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [text.strip() for text in texts]

    lengths = [len(p["input_ids"]) for p in prompts]
    batches = length_batches(lengths, batch_size, segments)
    # each batch grows to at most its prompts + max_new_tokens (exactly, unless the budget counts the prompt)
    return in_order(model, generate, batches, len(prompts), progress_bar,
                    padded_sizes(batches, lengths, max_new_tokens))


def _rouge_l(predictions: Sequence[str], references: Sequence[str], use_stemmer: bool) -> list:
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=use_stemmer)
    return map_sharded(lambda pair: scorer.score(target=pair[1], prediction=pair[0])["rougeL"],
                       list(zip(predictions, references, strict=True)))


def rouge_l_recall(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example ROUGE-L recall (LCS / |reference|, stemmed): the share of the answer reproduced."""
    return np.array([score.recall for score in _rouge_l(predictions, references, use_stemmer=True)])


def rouge_l_f1(predictions: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """Per-example ROUGE-L F1 (harmonic mean of LCS recall and precision), unstemmed as MUSE scores."""
    return np.array([score.fmeasure for score in _rouge_l(predictions, references, use_stemmer=False)])
