"""Anchored terms (Who's Harry Potter, arXiv 2310.02238): a dictionary of idiosyncratic expressions ->
generic replacements, the translation of a record with it, and the token alignment between the
original and the translated encoding.

Alignment is computed on token ids (difflib's opcodes), not on characters, so it holds for any
tokenizer and any record type (QA or text): equal stretches map one to one; a changed stretch (an
anchored term and its replacement) maps its r-th original token to replacement token
floor(r * n_replacement / n_original), so every term token maps into the replacement's tokens.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Hashable, Mapping, Sequence

import yaml

from unlearning.config import CONFIG_DIR
from unlearning.data.benchmark import DataError
from unlearning.data.collate import PromptTemplate, encode_record
from unlearning.data.files import read_text
from unlearning.errors import quote
from unlearning.ops import IGNORE_INDEX
from unlearning.results import write_text_atomic

SHIPPED_DIR = Path(CONFIG_DIR) / "anchored_terms"
TEXT_FIELDS = ("text", "question", "answer")


def load_dictionary(name_or_path: str | Path) -> dict[str, str]:
    """A YAML or JSON mapping term -> replacement, from a file or a shipped name (conf/anchored_terms/)."""
    path = Path(name_or_path).expanduser()
    if not path.is_file():
        path = SHIPPED_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        shipped = sorted(p.stem for p in SHIPPED_DIR.glob("*.yaml"))
        raise DataError(f"anchored terms {name_or_path}: no such file or shipped dictionary ({', '.join(shipped)})")
    text = read_text(path, "anchored terms file")
    try:
        terms = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as error:
        where = getattr(error, "lineno", None) or getattr(getattr(error, "problem_mark", None), "line", -1) + 1
        raise DataError(f"anchored terms file {path} line {where} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}"
                        ) from None
    if not isinstance(terms, dict) or not terms:
        raise DataError(f"anchored terms file {path}: expected a non-empty mapping term -> replacement")
    for term, replacement in terms.items():
        if not isinstance(term, str) or not isinstance(replacement, str) or not term.strip():
            raise DataError(f"anchored terms file {path}: entry {quote(term)}: {quote(replacement)} is not text -> text")
    return terms


def save_dictionary(path: str | Path, terms: Mapping[str, str], header: str) -> None:
    """Write a dictionary as YAML, `header` as leading comment lines (for the user who edits it)."""
    comments = "".join(f"# {line}\n" for line in header.splitlines())
    body = yaml.safe_dump(dict(terms), sort_keys=False, allow_unicode=True, width=1000)
    write_text_atomic(path, comments + body)


def term_pattern(terms: Mapping[str, str]) -> re.Pattern:
    """Whole-word occurrences of any term, longest first (so "Sherlock Holmes" wins over "Holmes")."""
    alternatives = "|".join(re.escape(t) for t in sorted(terms, key=len, reverse=True))
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)")


def translate(text: str, terms: Mapping[str, str], pattern: re.Pattern | None = None) -> str:
    pattern = pattern or term_pattern(terms)
    return pattern.sub(lambda match: terms[match.group(0)], text)


def changed_regions(original: Sequence[int], translated: Sequence[int],
                    min_match: int = 2) -> list[tuple[int, int, int, int]]:
    """The stretches (i1, i2, j1, j2) where original[i1:i2] became translated[j1:j2] (difflib's opcodes).
    An equal run shorter than `min_match` between two changes is absorbed into them: it is a token a
    term shares with its replacement (the "m" of Holmes / Smith), not text between two terms."""
    opcodes = difflib.SequenceMatcher(a=list(original), b=list(translated), autojunk=False).get_opcodes()
    regions: list[tuple[int, int, int, int]] = []
    for k, (tag, i1, i2, j1, j2) in enumerate(opcodes):
        absorbed = tag == "equal" and i2 - i1 < min_match and 0 < k < len(opcodes) - 1
        if tag == "equal" and not absorbed:
            continue
        if regions and regions[-1][1] == i1 and regions[-1][3] == j1:
            regions[-1] = (regions[-1][0], i2, regions[-1][2], j2)
        else:
            regions.append((i1, i2, j1, j2))
    return regions


def align_tokens(original: Sequence[int], translated: Sequence[int],
                 min_match: int = 2) -> tuple[list[int], list[tuple[int, int, int, int]]]:
    """For each original token, the index of its counterpart in `translated`, and the changed regions.
    Outside regions tokens map one to one; inside, the r-th of n original tokens maps to replacement
    token floor(r * m / n) of m (a deleted stretch maps to the next translated token)."""
    positions, offset, done = [], 0, 0
    regions = changed_regions(original, translated, min_match)
    for i1, i2, j1, j2 in regions:
        positions += [i + offset for i in range(done, i1)]
        last = max(len(translated) - 1, 0)
        positions += [min(j1 + r * (j2 - j1) // (i2 - i1), last) for r in range(i2 - i1)]
        offset, done = j2 - i2, i2
    positions += [i + offset for i in range(done, len(original))]
    return positions, regions


def prediction_positions(positions: Sequence[int]) -> list[int]:
    """Logit position p of the original predicts token p+1: its counterpart in the translation is the
    position predicting token positions[p+1], i.e. positions[p+1] - 1. The last position predicts
    nothing (0, masked by the labels' shift)."""
    return [max(positions[p + 1] - 1, 0) for p in range(len(positions) - 1)] + [0] * bool(positions)


def first_occurrence_mask(length: int, regions: Sequence[tuple[int, int, Hashable]]) -> list[bool]:
    """WHP's consistency rule: keep (True) every token except those of a region (start, end, key) whose
    key already occurred in an earlier region of the same block."""
    keep = [True] * length
    seen = set()
    for start, end, key in sorted(regions, key=lambda region: region[0]):
        if key in seen:
            keep[start:end] = [False] * (end - start)
        seen.add(key)
    return keep


def anchor_record(tokenizer, template: PromptTemplate, record: dict, terms: Mapping[str, str],
                  max_length: int, pattern: re.Pattern | None = None) -> dict:
    """Encode a record and its translation: `input_ids`, `labels` (repeated anchored terms masked),
    `translated` (the translation's `input_ids`) and `aligned_positions` (per original logit position,
    the translated logit position predicting the same token)."""
    pattern = pattern or term_pattern(terms)
    translated_record = {k: translate(v, terms, pattern) if k in TEXT_FIELDS else v for k, v in record.items()}
    original = encode_record(tokenizer, template, record, max_length)
    translated = encode_record(tokenizer, template, translated_record, max_length)
    positions, regions = align_tokens(original["input_ids"], translated["input_ids"])
    # A term's identity is its original and replacement text, so every later occurrence matches it.
    keyed = [(i1, i2, (tokenizer.decode(original["input_ids"][i1:i2]).strip(),
                       tokenizer.decode(translated["input_ids"][j1:j2]).strip())) for i1, i2, j1, j2 in regions]
    keep = first_occurrence_mask(len(positions), keyed)
    return {
        "input_ids": original["input_ids"],
        "labels": [label if k else IGNORE_INDEX for label, k in zip(original["labels"], keep)],
        "translated": {"input_ids": translated["input_ids"]},
        "aligned_positions": prediction_positions(positions),
    }


def anchor_records(tokenizer, template: PromptTemplate, records: Sequence[dict], terms: Mapping[str, str],
                   max_length: int) -> list[dict]:
    pattern = term_pattern(terms)
    return [anchor_record(tokenizer, template, r, terms, max_length, pattern) for r in records]
