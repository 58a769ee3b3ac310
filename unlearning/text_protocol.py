"""The plain-text protocol (WHP's setting, arXiv 2310.02238): base -> finetune target on the forget text
-> (reinforced: target further finetuned on it) -> unlearn -> probability familiarity + perplexity.

Rows of the table: base (the model before it read the text), target, reinforced, unlearned, and
`whp_inference` (MUSE's inference-time WHP on target and reinforced, no training); columns: mean
probability of anchored terms' first token / whole term after book contexts cut right before them,
perplexity on held-out general text (WikiText lines never trained on) and on the first forget blocks.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from unlearning.data.anchored_terms import load_dictionary
from unlearning.errors import ConfigError
from unlearning.evaluation.base import MetricGroup
from unlearning.evaluation.familiarity import probability_familiarity, term_prompts
from unlearning.evaluation.perplexity import perplexity
from unlearning.methods.whp import WHPInference
from unlearning.pipeline import build_protocol
from unlearning.results import format_table, write_json_atomic
from unlearning.strategies import end_processes

COLUMNS = ("term_first_token_prob", "term_prob", "heldout_ppl", "forget_ppl")


def text_metric_groups(groups: dict[str, MetricGroup]) -> list[MetricGroup]:
    """The configured metric groups a text corpus can feed. TOFU's is left out (the default eval config
    has it; it scores QA pairs); any other that reads QA splits is a config error."""
    for name, group in groups.items():
        if name != "tofu" and group.reads_qa_splits:
            hint = " or eval.groups.lm_eval.benchmark_tasks=false" if name == "lm_eval" else ""
            raise ConfigError(f"eval.groups.{name} reads a question-answer benchmark, which protocol=text "
                              f"does not have: set eval.groups.{name}=null{hint}")
    return [group for name, group in groups.items() if name != "tofu"]


def run_text(cfg: DictConfig, n_prompts: int = 200, context_words: int = 40, n_forget_blocks: int = 50,
             batch_size: int = 32) -> float:
    """Run the stages, print the table, write results.json; returns the unlearned model's term_prob."""
    if not cfg.data.get("anchored_terms"):
        raise ConfigError("data.anchored_terms is required by the text protocol (a dictionary file or shipped name)")
    protocol = build_protocol(cfg)
    corpus = protocol.benchmark
    groups = text_metric_groups(protocol.metric_groups)  # before training: a group that cannot score text fails now
    terms = load_dictionary(cfg.data.anchored_terms)
    texts = [r["text"] for r in corpus.forget]
    prompts = term_prompts(texts, terms, context_words, n_prompts)
    target = protocol.finetune("target", corpus.forget)
    reinforced = protocol.reinforced(target)
    policy, tokenizer = protocol.unlearn(target)
    if not end_processes():  # rank 0 evaluates and reports alone
        return float("nan")
    template, max_length = protocol.spec.template, cfg.max_length

    def measure(model) -> dict[str, float]:
        return {**probability_familiarity(model, tokenizer, template, prompts, batch_size, max_length),
                "heldout_ppl": perplexity(model, tokenizer, template, [r["text"] for r in corpus.heldout],
                                          batch_size, max_length),
                "forget_ppl": perplexity(model, tokenizer, template, texts[:n_forget_blocks], batch_size, max_length)}

    folders = {"base": protocol.base_model(), "target": str(target), "reinforced": str(reinforced),
               "unlearned": str(protocol.run_dir / "unlearned")}
    models = {}
    for name, folder in folders.items():  # each model loaded once, for the table and the metric groups
        model = policy if name == "unlearned" else protocol.spec.load(folder)[0]
        models[name] = measure(model)
        for group in groups if name != "reinforced" else ():
            models[name].update(group.evaluate(model, tokenizer, template, corpus).aggregates)
    alpha = cfg.method.get("alpha", 5.0)
    models["whp_inference"] = measure(WHPInference(protocol.spec.load(target)[0], protocol.spec.load(reinforced)[0], alpha))
    write_json_atomic(protocol.run_dir / "results.json", {
        "models": models, "paths": folders, "n_prompts": len(prompts), "anchored_terms": terms,
        "config": OmegaConf.to_container(cfg, resolve=True)})
    print(format_table(models, COLUMNS))
    extra = sorted({key for row in models.values() for key in row} - set(COLUMNS))
    if extra:
        print(format_table(models, [key for key in extra if not key.endswith("_stderr")]))
    print(f"results: {Path(protocol.run_dir) / 'results.json'}")
    return float(models["unlearned"]["term_prob"])
