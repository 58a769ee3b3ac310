"""Probability familiarity (Who's Harry Potter, arXiv 2310.02238, Sec. 4): how much probability a model
puts on a text's idiosyncratic continuations. Prompts are contexts from the forget text cut right
before an anchored term; we report the mean probability of the term's first token and of the whole
term (product of its token probabilities) after the context.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from unlearning.data.anchored_terms import term_pattern
from unlearning.data.collate import PromptTemplate, encode_qa
from unlearning.evaluation.tofu import score_tokens


def term_prompts(texts: Sequence[str], terms: Mapping[str, str], context_words: int = 40,
                 limit: int | None = 200) -> list[tuple[str, str]]:
    """(context, " " + term) for the first `limit` occurrences of a term after whitespace: the context is
    the `context_words` words before it in the same text (whitespace normalized)."""
    pattern, prompts = term_pattern(terms), []
    for text in texts:
        for match in pattern.finditer(text):
            context = " ".join(text[:match.start()].split()[-context_words:])
            if context and text[match.start() - 1].isspace():
                prompts.append((context, " " + match.group(0)))
            if limit is not None and len(prompts) >= limit:
                return prompts
    return prompts


def probability_familiarity(model, tokenizer, template: PromptTemplate, prompts: Sequence[tuple[str, str]],
                            batch_size: int = 32, max_length: int = 512) -> dict[str, float]:
    """Mean P(first term token | context) and mean P(term | context) over the prompts."""
    continuation = PromptTemplate(prompt="{question}", answer="{answer}", add_bos=template.add_bos, add_eos=False)
    encoded = [encode_qa(tokenizer, continuation, context, term, max_length) for context, term in prompts]
    scores = [s for s in score_tokens(model, tokenizer, encoded, batch_size) if len(s)]
    return {"term_first_token_prob": float(np.mean([np.exp(s[0]) for s in scores])),
            "term_prob": float(np.mean([np.exp(s.sum()) for s in scores]))}
