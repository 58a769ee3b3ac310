"""The splits the TOFU protocol needs, in TOFU's own schema, whatever produced them.

Every QA data source (the synthetic generator, the TOFU loader) returns a `QABenchmark`; the pipeline
and the evaluation only ever see this object.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from unlearning.errors import UnlearningError

QA_FIELDS = ("question", "answer")
PERTURBED_FIELDS = ("question", "answer", "paraphrased_answer", "perturbed_answer")
MULTIPLE_CHOICE_FIELDS = ("question", "answer", "perturbed_answer")


class DataError(UnlearningError):
    """Bad input data: the message names the split or file and the field at fault."""


def fits_field(name: str, value) -> bool:
    """`perturbed_answer` is a list of strings (TOFU's wrong answers); every other field is a string."""
    if name == "perturbed_answer":
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    return isinstance(value, str)


def is_blank(value) -> bool:
    """An empty or whitespace-only text, or an empty list (or one holding such a text)."""
    if isinstance(value, list):
        return not value or any(is_blank(item) for item in value)
    return not value.strip()


@dataclass
class QABenchmark:
    """TOFU-shaped splits.

    full: what the target model is finetuned on. retain: what the retain model is finetuned on, and
    the retain regularizer's samples. forget: what unlearning removes. The `*_perturbed` sets and the
    multiple-choice sets feed the evaluation. `pretrain` holds general knowledge that a from-scratch
    model must learn alongside both finetunes (empty for pretrained models, which already have it).
    """

    name: str
    full: list[dict]
    retain: list[dict]
    forget: list[dict]
    forget_perturbed: list[dict]
    retain_perturbed: list[dict]
    real_authors: list[dict]
    world_facts: list[dict]
    holdout: list[dict] = field(default_factory=list)
    pretrain: list[dict] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Fail with one line naming the split and the field when a record does not fit the schema, and
        on a record repeated within a split: a copy weighs double in training and in every mean (TOFU
        has no ids; it does repeat a question with different answers, so the pair is what must differ)."""
        required = {
            "full": QA_FIELDS,
            "retain": QA_FIELDS,
            "forget": QA_FIELDS,
            "forget_perturbed": PERTURBED_FIELDS,
            "retain_perturbed": PERTURBED_FIELDS,
            "real_authors": MULTIPLE_CHOICE_FIELDS,
            "world_facts": MULTIPLE_CHOICE_FIELDS,
            "holdout": QA_FIELDS,
            "pretrain": QA_FIELDS,
        }
        for split, fields in required.items():
            records = getattr(self, split)
            if not records and split in ("full", "retain", "forget", "forget_perturbed"):
                raise DataError(f"{self.name}: split '{split}' is empty")
            first_seen: dict[tuple[str, str], int] = {}
            for i, record in enumerate(records):
                for name in fields:
                    if name not in record or record[name] is None:
                        raise DataError(f"{self.name}: split '{split}' record {i} has no field '{name}'")
                    if not fits_field(name, record[name]):
                        kind = "a list of text" if name == "perturbed_answer" else "text"
                        raise DataError(f"{self.name}: split '{split}' record {i} field '{name}' is not {kind}")
                    if is_blank(record[name]):  # an empty list of wrong answers breaks the truth ratio
                        raise DataError(f"{self.name}: split '{split}' record {i} field '{name}' is empty")
                pair = (record["question"], record["answer"])
                if pair in first_seen:
                    raise DataError(f"{self.name}: split '{split}' record {i} repeats record {first_seen[pair]} "
                                    "(same question and answer)")
                first_seen[pair] = i
        self.check_perturbed_matches_forget()

    def check_perturbed_matches_forget(self) -> None:
        """The forget set's perturbed file must be its own: the same questions, as many (a perturbed file
        of another split would score forget quality on questions that were never unlearned)."""
        forget = [record["question"] for record in self.forget]
        perturbed = [record["question"] for record in self.forget_perturbed]
        if len(forget) != len(perturbed):
            raise DataError(f"{self.name}: split 'forget_perturbed' has {len(perturbed)} records, split 'forget' "
                            f"{len(forget)}; valid: the perturbed file of the same forget split")
        asked = set(forget)
        unmatched = next((i for i, question in enumerate(perturbed) if question not in asked), None)
        if unmatched is not None:
            raise DataError(f"{self.name}: split 'forget_perturbed' record {unmatched} asks a question that is not "
                            "in split 'forget'; valid: the perturbed file of the same forget split")

    def eval_sets(self) -> dict[str, list[dict]]:
        """The four TOFU evaluation sets, by the names the metrics report them under."""
        return {
            "forget": self.forget_perturbed,
            "retain": self.retain_perturbed,
            "real_authors": self.real_authors,
            "world_facts": self.world_facts,
        }

    def corpus(self) -> list[str]:
        """Every text of the benchmark: what a from-scratch tokenizer is trained on."""
        texts: list[str] = []
        for records in (self.full, self.pretrain, self.forget_perturbed, self.retain_perturbed,
                        self.real_authors, self.world_facts, self.holdout):
            for r in records:
                texts.append(r["question"])
                texts.append(r["answer"])
                if "paraphrased_answer" in r:
                    texts.append(r["paraphrased_answer"])
                texts.extend(r.get("perturbed_answer", []))
        return texts
