"""Plain-text corpora (a book, documents) as unlearning data: the forget text cut into blocks, a general
text as retain data, records with a `text` field (every token labelled, see collate.encode_text).

Blocks are packed from whole paragraphs up to `block_words` words (a paragraph longer than that is cut
at word boundaries): tokenizer-independent, so the same corpus config serves every model; the
encoder truncates a block at `max_length` tokens (about 3 tokens per word with stories260K's 512-token
vocabulary, 1.3 with a 32K one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from unlearning.data.benchmark import DataError
from unlearning.data.files import read_json_lines, read_text


def read_texts(path: str | Path) -> list[str]:
    """The documents of a .txt file (one document) or a .jsonl file (one `text` per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"text corpus {path} not found")
    if path.suffix != ".jsonl":
        return [read_text(path, "text corpus")]
    records = read_json_lines(path, "text corpus")
    for number, record in enumerate(records):
        if not isinstance(record.get("text"), str):
            raise DataError(f"text corpus {path} record {number} has no `text` string field")
    return [record["text"] for record in records]


def split_blocks(text: str, block_words: int) -> list[str]:
    """Consecutive paragraphs packed into blocks of at most `block_words` words (line breaks inside a
    paragraph become spaces; paragraphs stay separated by a blank line)."""
    blocks, current, size = [], [], 0
    for paragraph in text.split("\n\n"):
        words = paragraph.split()
        if current and size + len(words) > block_words:
            blocks.append("\n\n".join(current))
            current, size = [], 0
        while len(words) > block_words:
            blocks.append(" ".join(words[:block_words]))
            words = words[block_words:]
        if words:
            current.append(" ".join(words))
            size += len(words)
    if current:
        blocks.append("\n\n".join(current))
    return blocks


@dataclass
class TextCorpus:
    """forget: the blocks to unlearn (and to finetune the target on); retain: general text for the retain
    regularizer; heldout: general text never trained on, for perplexity. Same duck type as QABenchmark
    where the pipeline's stages read it (forget, retain, pretrain, corpus())."""

    name: str
    forget: list[dict]
    retain: list[dict]
    heldout: list[dict]
    pretrain: list[dict] = field(default_factory=list)

    @property
    def full(self) -> list[dict]:
        """What a target is trained on when the QA protocol's stages run on text (MUSE's and WMDP's
        settings, whose targets are given with finetune.target_path): the forget and retain texts."""
        return self.forget + self.retain

    def corpus(self) -> list[str]:
        """Every text, for a tokenizer trained from scratch."""
        return [r["text"] for r in self.forget + self.retain + self.heldout]


def load_text_corpus(forget_path: str, retain_path: str, block_words: int = 80, max_blocks: int | None = None,
                     retain_lines: int | None = None) -> TextCorpus:
    """The forget file in blocks (the first `max_blocks`), the retain file's documents split into the
    first `retain_lines` (retain regularizer; default half) and the rest (held-out perplexity)."""
    if block_words < 1:
        raise DataError(f"data.benchmark.block_words={block_words} must be at least 1")
    blocks = [b for text in read_texts(forget_path) for b in split_blocks(text, block_words)][:max_blocks]
    general = [{"text": t} for t in read_texts(retain_path) if t.strip()]
    n_retain = len(general) // 2 if retain_lines is None else retain_lines
    if not blocks or not 0 < n_retain < len(general):
        raise DataError(f"text corpus {forget_path} / {retain_path}: need forget text and retain lines on both "
                        f"sides of retain_lines={n_retain} (of {len(general)})")
    return TextCorpus(name=Path(forget_path).stem, forget=[{"text": b} for b in blocks],
                      retain=general[:n_retain], heldout=general[n_retain:])
