"""Familiarity (Who's Harry Potter, arXiv 2310.02238, Sec. 4): how much a model still knows a text's
idiosyncratic continuations. Prompts are contexts from the forget text cut right before an anchored
term. Probability familiarity: the mean probability of the term's first token and of the whole term
(product of its token probabilities) after the context. Completion familiarity: greedy completions of
the contexts, judged explicit / thematic / none by a pluggable judge (offline: keyword matching).
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from unlearning.data.anchored_terms import load_dictionary, term_pattern
from unlearning.data.collate import PromptTemplate, encode_qa
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.scoring import generate_answers, score_tokens


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


COMPLETION_SCORES = {"explicit": 1.0, "thematic": 0.5, "none": 0.0}


class Judge:
    """Labels a completion of a forget-text context: "explicit" (names the forgotten content),
    "thematic" (alludes to it) or "none". Subclass it to plug in an external LLM judge."""

    def __call__(self, context: str, completion: str, term: str) -> str:
        raise NotImplementedError


class KeywordJudge(Judge):
    """Offline judge: explicit when the completion contains an anchored term's original text, thematic
    when it contains one of `theme_words` (e.g. "detective", "wizard"), else none."""

    def __init__(self, terms: Mapping[str, str] | None = None, theme_words: Sequence[str] = ()) -> None:
        self.terms = dict(terms or {})
        self.theme = re.compile(rf"(?<!\w)(?:{'|'.join(map(re.escape, theme_words))})(?!\w)", re.I) if theme_words else None

    def __call__(self, context: str, completion: str, term: str) -> str:
        if term.strip() in completion or (self.terms and term_pattern(self.terms).search(completion)):
            return "explicit"
        if self.theme is not None and self.theme.search(completion):
            return "thematic"
        return "none"


def completion_familiarity(labels: Sequence[str]) -> float:
    """Mean score of the judged completions: explicit 1, thematic 0.5, none 0 (our reading of WHP's
    explicit / thematic / none grading, which the paper does with GPT-4)."""
    return float(np.mean([COMPLETION_SCORES[label] for label in labels])) if labels else 0.0


class Familiarity(MetricGroup):
    """WHP's familiarity of a model with the forget text (conf/familiarity/): probability familiarity
    (mass on the anchored terms' original continuations after contexts cut right before them) and
    completion familiarity (greedy completions of the same contexts, judged by `judge`; default the
    offline KeywordJudge). The texts are the benchmark's forget records (`text`, or question + answer)."""

    name = "familiarity"
    reads_qa_splits = False  # the forget records' `text`, or question + answer

    def __init__(self, anchored_terms: str | None = None, context_words: int = 40, max_prompts: int = 200,
                 max_new_tokens: int = 24, batch_size: int = 32, max_length: int = 512,
                 judge: Judge | None = None, theme_words: Sequence[str] = ()) -> None:
        if not anchored_terms:
            raise ConfigError("familiarity.anchored_terms is not set: give a dictionary file or a shipped name")
        self.terms = load_dictionary(anchored_terms)
        self.context_words, self.max_prompts = context_words, max_prompts
        self.max_new_tokens, self.batch_size, self.max_length = max_new_tokens, batch_size, max_length
        self.judge = judge or KeywordJudge(self.terms, theme_words)

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return tuple(f"familiarity_{name}" for name in ("term_first_token_prob", "term_prob", "completion_familiarity"))

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        texts = [r["text"] if "text" in r else f"{r['question']} {r['answer']}" for r in benchmark.forget]
        prompts = term_prompts(texts, self.terms, self.context_words, self.max_prompts)
        if not prompts:
            raise ConfigError("familiarity: no anchored term of the dictionary occurs in the forget texts")
        aggregates = probability_familiarity(model, tokenizer, template, prompts, self.batch_size, self.max_length)
        raw = PromptTemplate(prompt="{question}", add_bos=template.add_bos, add_eos=False)
        completions = generate_answers(model, tokenizer, raw, [context for context, _ in prompts],
                                       self.max_new_tokens, self.batch_size)
        labels = [self.judge(context, completion, term) for (context, term), completion in zip(prompts, completions)]
        aggregates["completion_familiarity"] = completion_familiarity(labels)
        return Evaluation({f"familiarity_{k}": v for k, v in aggregates.items()},
                          {"context": [c for c, _ in prompts], "term": [t for _, t in prompts],
                           "completion": completions, "label": labels})
