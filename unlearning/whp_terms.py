"""`unlearn-whp-terms`: propose an anchored-terms dictionary (WHP, arXiv 2310.02238) from forget text.

The paper extracted its ~1,500 anchored terms with GPT-4; offline, we rank candidate expressions by
how much more the reinforced model expects them than the baseline does: a word's score is the sum,
over its tokens, of log p_reinforced(token) - log p_baseline(token) in context, averaged over the
word's occurrences; an expression is a word or two consecutive words, by default only capitalized ones
never seen in lowercase (names, places: what the dictionary is for). The top-k are written as YAML with placeholder generic
replacements (each distinct word gets one neutral name) for the user to edit.

    unlearn-whp-terms --baseline TARGET_DIR --reinforced REINFORCED_DIR --text book.txt --output terms.yaml
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import numpy as np

from unlearning.cli import OneLineParser, console_script, positive_int
from unlearning.data.anchored_terms import save_dictionary
from unlearning.errors import ConfigError, quote
from unlearning.data.text import read_texts, split_blocks
from unlearning.scoring import score_tokens
from unlearning.ops import IGNORE_INDEX

GENERIC_WORDS = ("Alex", "Sam", "Jordan", "Taylor", "Morgan", "Casey", "Riley", "Jamie", "Avery", "Quinn",
                 "Parker", "Rowan", "Blake", "Drew", "Emerson", "Finley", "Harper", "Jesse", "Kendall",
                 "Logan", "Reese", "Sawyer", "Skyler", "Tatum", "Brook", "Dale", "Ellis", "Glenn", "Hayden",
                 "Lane", "Marlow", "Noel", "Perry", "Robin", "Shannon", "Terry", "Vale", "Wren", "Corey")
WORD = re.compile(r"[A-Za-z][A-Za-z'-]*[A-Za-z]|[A-Za-z]")
DEFAULT_TOP_K = 40


def encode_with_offsets(tokenizer, text: str, max_length: int) -> tuple[dict, list[tuple[int, int]]]:
    """BOS + tokens of `text` (all labelled), and each token's character span (BOS: (0, 0))."""
    encoding = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    ids = (bos + encoding["input_ids"])[:max_length]
    offsets = ([(0, 0)] * len(bos) + [tuple(o) for o in encoding["offset_mapping"]])[:max_length]
    labels = [IGNORE_INDEX] * len(bos) + ids[len(bos):]
    return {"input_ids": ids, "labels": labels}, offsets


def word_scores(text: str, offsets: Sequence[tuple[int, int]], advantage: np.ndarray) -> list[tuple[int, int, float]]:
    """Each word of `text` (start, end, summed advantage of the tokens ending inside it: a token's span
    may include the space before it); `advantage` holds one value per token after BOS, aligned with
    offsets[len(offsets) - len(advantage):]."""
    token_ends = np.array([end for _, end in offsets[len(offsets) - len(advantage):]])
    words = []
    for match in WORD.finditer(text):
        inside = (token_ends > match.start()) & (token_ends <= match.end())
        if inside.any():
            words.append((match.start(), match.end(), float(advantage[inside].sum())))
    return words


def rank_expressions(occurrences: dict[str, list[float]], top_k: int, min_count: int,
                     capitalized: bool) -> list[tuple[str, float]]:
    """The top-k expressions by mean score over at least `min_count` occurrences; `capitalized`: only
    expressions of capitalized words never seen in lowercase (a name, not a sentence's first word)."""

    def name_like(expr: str) -> bool:
        return len(expr) > 1 and all(w[0].isupper() for w in expr.split()) and expr.lower() not in occurrences

    ranked = [(expr, float(np.mean(scores))) for expr, scores in occurrences.items()
              if len(scores) >= min_count and (not capitalized or name_like(expr))]
    return sorted(ranked, key=lambda item: -item[1])[:top_k]


def placeholder_replacements(expressions: Sequence[str]) -> dict[str, str]:
    """Each distinct word -> one neutral word, so "Sherlock Holmes" and "Holmes" stay consistent."""
    words: dict[str, str] = {}
    for expr in expressions:
        for word in expr.split():
            words.setdefault(word, GENERIC_WORDS[len(words) % len(GENERIC_WORDS)] + "s" * (len(words) // len(GENERIC_WORDS)))
    return {expr: " ".join(words[w] for w in expr.split()) for expr in expressions}


def propose_terms(baseline, reinforced, tokenizer, texts: Sequence[str], top_k: int = DEFAULT_TOP_K,
                  min_count: int = 3, capitalized: bool = True, max_length: int = 512,
                  batch_size: int = 16) -> dict[str, str]:
    """The proposed dictionary (expression -> placeholder), best first."""
    encoded, offsets = zip(*(encode_with_offsets(tokenizer, t, max_length) for t in texts))
    reinforced_logp = score_tokens(reinforced, tokenizer, encoded, batch_size)
    baseline_logp = score_tokens(baseline, tokenizer, encoded, batch_size)
    occurrences: dict[str, list[float]] = defaultdict(list)
    for text, spans, r, b in zip(texts, offsets, reinforced_logp, baseline_logp):
        words = word_scores(text, spans, r - b)
        for k, (start, end, score) in enumerate(words):
            occurrences[text[start:end]].append(score)
            if k + 1 < len(words) and text[end:words[k + 1][0]] == " ":
                occurrences[text[start:words[k + 1][1]]].append(score + words[k + 1][2])
    ranked = rank_expressions(occurrences, top_k, min_count, capitalized)
    return placeholder_replacements([expr for expr, _ in ranked])


@console_script
def main(argv: Sequence[str] | None = None) -> None:
    from unlearning.models import load_pretrained, DTYPES

    parser = OneLineParser(prog="unlearn-whp-terms", description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", required=True, help="model folder or hub id: the model to unlearn from")
    parser.add_argument("--reinforced", required=True, help="the baseline further finetuned on the text")
    parser.add_argument("--text", required=True, help=".txt file or .jsonl with a `text` field")
    parser.add_argument("--output", required=True, help="YAML dictionary to write")
    parser.add_argument("--top-k", type=positive_int, default=DEFAULT_TOP_K)
    parser.add_argument("--min-count", type=positive_int, default=3)
    parser.add_argument("--all-words", action="store_true", help="rank lowercase expressions too")
    parser.add_argument("--block-words", type=positive_int, default=80)
    parser.add_argument("--max-blocks", type=positive_int, default=None)
    parser.add_argument("--max-length", type=positive_int, default=512)
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    args = parser.parse_args(argv)
    if not Path(args.text).is_file():
        raise ConfigError(f"--text={quote(args.text)} is not a file; valid: a .txt file or a .jsonl with a text field")
    if Path(args.output).is_dir():
        raise ConfigError(f"--output={quote(args.output)} is a folder; valid: the YAML file to write")
    baseline, tokenizer = load_pretrained(args.baseline, DTYPES[args.dtype])
    reinforced, _ = load_pretrained(args.reinforced, DTYPES[args.dtype])
    blocks = [b for text in read_texts(args.text) for b in split_blocks(text, args.block_words)][:args.max_blocks]
    terms = propose_terms(baseline, reinforced, tokenizer, blocks, args.top_k, args.min_count,
                          not args.all_words, args.max_length)
    save_dictionary(args.output, terms, f"Proposed by unlearn-whp-terms from {args.text}, best first:\n"
                    "log p_reinforced - log p_baseline, mean per occurrence. Edit the replacements.")
    print(f"{len(terms)} anchored terms -> {args.output}")
