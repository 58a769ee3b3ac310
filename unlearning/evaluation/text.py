"""The plain-text protocol's table (WHP's setting, arXiv 2310.02238): mean probability of the anchored
terms' first token and of the whole term after forget-text contexts cut right before them, perplexity
on held-out general text (WikiText lines never trained on) and on the first forget blocks."""

from __future__ import annotations

from typing import Mapping

from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.familiarity import probability_familiarity, term_prompts
from unlearning.evaluation.perplexity import perplexity


class TextMetrics(MetricGroup):
    name = "text"
    columns = ("term_first_token_prob", "term_prob", "heldout_ppl", "forget_ppl")
    reads_qa_splits = False

    def __init__(self, terms: Mapping[str, str], n_prompts: int = 200, context_words: int = 40,
                 n_forget_blocks: int = 50, batch_size: int = 32, max_length: int = 512) -> None:
        self.terms, self.n_prompts, self.context_words = terms, n_prompts, context_words
        self.n_forget_blocks, self.batch_size, self.max_length = n_forget_blocks, batch_size, max_length

    def result_names(self, compared: bool) -> tuple[str, ...]:
        return self.columns  # its table shows all it reports

    def prompts(self, corpus) -> list[tuple[str, str]]:
        return term_prompts([r["text"] for r in corpus.forget], self.terms, self.context_words, self.n_prompts)

    def evaluate(self, model, tokenizer, template, corpus) -> Evaluation:
        def ppl(texts):
            return perplexity(model, tokenizer, template, texts, self.batch_size, self.max_length)

        return Evaluation({
            **probability_familiarity(model, tokenizer, template, self.prompts(corpus), self.batch_size, self.max_length),
            "heldout_ppl": ppl([r["text"] for r in corpus.heldout]),
            "forget_ppl": ppl([r["text"] for r in corpus.forget[: self.n_forget_blocks]]),
        })


def text_metric_groups(groups: Mapping[str, MetricGroup]) -> dict[str, MetricGroup]:
    """The configured metric groups a text corpus can feed. TOFU's is left out (the default eval config
    has it; it scores QA pairs); any other that reads QA splits is a config error."""
    for name, group in groups.items():
        if name != "tofu" and group.reads_qa_splits:
            hint = " or eval.groups.lm_eval.benchmark_tasks=false" if name == "lm_eval" else ""
            raise ConfigError(f"eval.groups.{name} reads a question-answer benchmark, which protocol=text "
                              f"does not have: set eval.groups.{name}=null{hint}")
    return {name: group for name, group in groups.items() if name != "tofu"}
