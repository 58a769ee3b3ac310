"""MUSE metrics (Shi et al. 2024, arXiv 2407.06460), as its reference code computes them.

- VerbMem: greedy continuation (128 new tokens) of each `prompt`; ROUGE-L F1 (unstemmed) against `gt`
  cut to its first 128 tokens (MUSE tokenizes `gt` with BOS, which counts among the 128).
- KnowMem: `Question: {q}\\nAnswer: {a}\\n\\n` per few-shot pair, then `Question: {q}\\nAnswer: `; greedy
  32 new tokens, cut at a blank line or "Question"; ROUGE-L F1 vs the answer. `knowmem_f` on forget
  QA, `knowmem_r` on retain QA.
- PrivLeak (`compare`): `(AUC_model − AUC_reference) / AUC_reference × 100`. MUSE's AUC takes forget as
  the positive class and Min-K% (k = 0.4) as the score, i.e. 1 − the member-oriented AUC of mia.py: a
  model that memorized the forget set has AUC ≈ 0 (PrivLeak ≈ −100 against a retrained reference), an
  over-unlearned one a large positive PrivLeak.
VerbMem and KnowMem prompts are raw text (no chat template), with BOS when the model's template adds
one. ROUGE values are in [0, 1] (MUSE's tables print them × 100).

Without `source`, the data derive from the run's QABenchmark (`muse_from_benchmark`): VerbMem continues
each forget question in the model's template toward its answer; KnowMem asks the forget QA and the
TOFU retain-evaluation QA after 3 retain pairs as shots; PrivLeak scores forget vs holdout answers given
their questions.
"""

from __future__ import annotations

import re
from typing import Mapping, Sequence

import numpy as np

from unlearning.data.collate import PromptTemplate, encode_prompt
from unlearning.data.muse import MuseData, load_muse, muse_from_benchmark
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.mia import labelled_token_values, membership_auc, min_k_percent
from unlearning.scoring import generate_answers, rouge_l_f1
from unlearning.ops import token_logprobs

ROUGE_SPLITS = ("verbmem_f", "knowmem_f", "knowmem_r")  # the splits scored by ROUGE-L F1 (`muse_<split>`)



# ---------------------------------------------------------------------------------------------- pure


def knowmem_prompt(shots: Sequence[dict], question: str) -> str:
    """The few-shot pairs then the question, in MUSE's format (its trailing space included)."""
    context = "".join(f"Question: {s['question']}\nAnswer: {s['answer']}\n\n" for s in shots)
    return f"{context}Question: {question}\nAnswer: "


def cut_knowmem_answer(generation: str, stop: Sequence[str] = ("\n\n", "Question")) -> str:
    """The generated answer up to the first of the `stop` strings (the model moving on): by default a
    blank line or any "Question"; MUSE and open-unlearning stop at "\n\n", "\nQuestion", "Question:"."""
    return re.split("|".join(map(re.escape, stop)), generation, maxsplit=1)[0].strip()


def privleak_auc(forget_min_k, holdout_min_k) -> float:
    """MUSE's AUC: forget texts positive, Min-K% (higher = less likely seen) as the score."""
    return membership_auc(forget_min_k, holdout_min_k)


def privleak(auc: float, reference_auc: float) -> float:
    """(AUC − AUC_reference) / AUC_reference × 100; NaN when the reference AUC is 0 (undefined)."""
    return (auc - reference_auc) / reference_auc * 100 if reference_auc else float("nan")


# --------------------------------------------------------------------------------------------- model


class MuseMetrics(MetricGroup):
    """VerbMem, KnowMem (forget, retain) and the PrivLeak AUC per model; PrivLeak itself in `compare`.

    source: a MUSE hub id (`muse-bench/MUSE-News`) or a folder in its layout (unlearning/data/muse.py);
    null derives MUSE-shaped data from the run's QABenchmark (see the module docstring). n_shots: the
    first N few-shot pairs (null: all of the ICL split, as MUSE). k: the Min-K% fraction of PrivLeak.
    max_examples: only the first N records of each evaluated split. knowmem_stop: where a KnowMem
    answer is cut (`cut_knowmem_answer`). Aggregates: `muse_verbmem_f`,
    `muse_knowmem_f`, `muse_knowmem_r`, `muse_privleak_auc`; `muse_privleak` from `compare`.
    """

    name = "muse"

    def __init__(self, source: str | None = None, verbmem_max_new_tokens: int = 128,
                 knowmem_max_new_tokens: int = 32, n_shots: int | None = None, k: float = 0.4,
                 batch_size: int = 8, max_length: int = 2048, max_examples: int | None = None,
                 knowmem_stop: Sequence[str] = ("\n\n", "Question")) -> None:
        self.source, self.n_shots, self.k = source, n_shots, k
        self.verbmem_max_new_tokens, self.knowmem_max_new_tokens = verbmem_max_new_tokens, knowmem_max_new_tokens
        self.batch_size, self.max_length, self.max_examples = batch_size, max_length, max_examples
        self.knowmem_stop = tuple(knowmem_stop)
        self._loaded: MuseData | None = None  # hub or folder data, read once per group

    def data(self, benchmark, template: PromptTemplate) -> MuseData:
        if self.source is None:
            return muse_from_benchmark(benchmark, template)
        if self._loaded is None:
            self._loaded = load_muse(self.source)
        return self._loaded

    def verbmem(self, model, tokenizer, raw: PromptTemplate, records: list[dict]) -> dict[str, list]:
        generations = generate_answers(model, tokenizer, raw, [r["prompt"] for r in records],
                                       self.verbmem_max_new_tokens, self.batch_size)
        references = [tokenizer.decode(encode_prompt(tokenizer, raw, r["gt"])[:self.verbmem_max_new_tokens],
                                       skip_special_tokens=True) for r in records]
        return {"rouge_l_f1": rouge_l_f1(generations, references).tolist(), "generation": generations}

    def knowmem(self, model, tokenizer, raw: PromptTemplate, records: list[dict],
                shots: list[dict]) -> dict[str, list]:
        prompts = [knowmem_prompt(shots[:self.n_shots], r["question"]) for r in records]
        generations = generate_answers(model, tokenizer, raw, prompts, self.knowmem_max_new_tokens, self.batch_size)
        answers = [cut_knowmem_answer(g, self.knowmem_stop) for g in generations]
        return {"rouge_l_f1": rouge_l_f1(answers, [r["answer"] for r in records]).tolist(), "generation": answers}

    def min_k(self, model, tokenizer, template: PromptTemplate, records: list[dict]) -> list[float]:
        logprobs = labelled_token_values(model, tokenizer, template, records, token_logprobs,
                                         self.batch_size, self.max_length)
        return [min_k_percent(lp, self.k) for lp in logprobs]

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        data = self.data(benchmark, template)
        limit = self.max_examples or None
        raw = PromptTemplate(prompt="{question}", add_bos=template.add_bos)
        per_example = {
            "verbmem_f": self.verbmem(model, tokenizer, raw, data.verbmem[:limit]),
            "knowmem_f": self.knowmem(model, tokenizer, raw, data.knowmem_forget[:limit], data.knowmem_forget_icl),
            "knowmem_r": self.knowmem(model, tokenizer, raw, data.knowmem_retain[:limit], data.knowmem_retain_icl),
            "privleak": {"forget_min_k": self.min_k(model, tokenizer, template, data.privleak_forget[:limit]),
                         "holdout_min_k": self.min_k(model, tokenizer, template, data.privleak_holdout[:limit])},
        }
        aggregates = {f"muse_{name}": float(np.mean(per_example[name]["rouge_l_f1"]))
                      for name in ROUGE_SPLITS}
        leak = per_example["privleak"]
        aggregates["muse_privleak_auc"] = privleak_auc(leak["forget_min_k"], leak["holdout_min_k"])
        return Evaluation(aggregates, per_example)

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return (*(f"muse_{name}" for name in ROUGE_SPLITS), "muse_privleak_auc", *(("muse_privleak",) if compared else ()))

    def compare(self, evaluations: Mapping[str, Evaluation], reference: str | None) -> dict[str, dict[str, float]]:
        if reference is None:
            return {}
        reference_auc = evaluations[reference].aggregates["muse_privleak_auc"]
        return {name: {"muse_privleak": privleak(e.aggregates["muse_privleak_auc"], reference_auc)}
                for name, e in evaluations.items()}
