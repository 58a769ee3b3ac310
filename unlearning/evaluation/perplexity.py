"""Perplexity of a model on plain texts: exp of the mean token NLL over all their tokens (token-weighted)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from unlearning.data.collate import PromptTemplate, encode_text
from unlearning.scoring import score_tokens


def perplexity(model, tokenizer, template: PromptTemplate, texts: Sequence[str], batch_size: int = 32,
               max_length: int = 512) -> float:
    encoded = [encode_text(tokenizer, template, text, max_length) for text in texts]
    logp = np.concatenate(score_tokens(model, tokenizer, encoded, batch_size))
    return float(np.exp(-logp.mean()))
