"""Sequential unlearning requests (UnDIAL, arXiv 2402.10052, Sec. "sequential unlearning"): the forget set
arrives as `requests` consecutive deletion requests, each unlearned from the model the previous one left.

The forget set is cut into contiguous parts (whole authors, as TOFU lists an author's questions
consecutively); request i unlearns part i starting from the model after request i-1 and is saved in
`<run>/request<i>/unlearned`. After every request the model is scored on the whole forget set against the
retain model, which never saw any of it: forget quality should climb request by request, and a method
that is unstable shows utility draining away as requests accumulate.
"""

from __future__ import annotations

from dataclasses import replace

from omegaconf import DictConfig

from unlearning.errors import ConfigError
from unlearning.evaluation.evaluator import ModelSource
from unlearning.experiment import Experiment
from unlearning.protocols.tofu import reported_metrics  # noqa: F401 (scored as protocol=tofu scores)
from unlearning.stages.finetune import target_and_retain
from unlearning.stages.unlearn import unlearn, unlearned_folder
from unlearning.strategies import require_one_process


# What this script trains, for unlearn-plan (unlearning/planning/stages.py).
TRAINING_STAGES = ("finetune_target", "finetune_retain", "unlearn")  # each request: an unlearn stage


def request_slices(n_records: int, requests: int) -> list[slice]:
    """`requests` contiguous, nearly equal parts of `n_records` (the first ones one longer if uneven)."""
    if not 1 <= requests <= n_records:
        raise ConfigError(f"protocol.requests={requests} must be between 1 and the forget set's size ({n_records})")
    size, extra = divmod(n_records, requests)
    bounds = [0]
    for i in range(requests):
        bounds.append(bounds[-1] + size + (i < extra))
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def request_benchmark(benchmark, forget: list[dict]):
    """`benchmark` with one request's share of the forget set, and the perturbed records of the same
    questions: a benchmark's perturbed file must match its forget set (Benchmark checks it)."""
    asked = {record["question"] for record in forget}
    perturbed = [record for record in benchmark.forget_perturbed if record["question"] in asked]
    return replace(benchmark, forget=forget, forget_perturbed=perturbed)


def run_sequential(cfg: DictConfig, requests: int = 4) -> float | list[float]:
    """TOFU stages with the unlearning split into requests; returns the final model's `cfg.objective_metric`."""
    require_one_process(cfg, "tofu_sequential")
    if isinstance(cfg.get("resume"), str):
        raise ConfigError(f"resume={cfg.resume}: protocol=tofu_sequential resumes its run folder (resume=true), "
                          "not one checkpoint file, which every request would start from")
    experiment = Experiment.from_config(cfg)
    lora = experiment.spec.lora
    if lora is not None and not lora.merge_on_save:
        raise ConfigError("protocol=tofu_sequential with LoRA needs model.lora.merge_on_save=true: "
                          "each request starts from the previous request's merged model")
    target, retain_model = target_and_retain(experiment)
    sources = [ModelSource("target", target, cached=True), ModelSource("retain", retain_model, cached=True)]
    scored = experiment.evaluator.score(sources)
    start, forget = target, experiment.benchmark.forget
    for i, part in enumerate(request_slices(len(forget), requests), start=1):
        request = replace(experiment, benchmark=request_benchmark(experiment.benchmark, forget[part]),
                          run_dir=experiment.run_dir / f"request{i}", unlearn_stage=f"request{i}/unlearn")
        loaded = unlearn(request, start, reference_model=retain_model)
        start = unlearned_folder(request)
        sources.append(ModelSource(f"after_request{i}", start, loaded=loaded))
        scored.update(experiment.evaluator.score(sources[-1:]))
    results = experiment.evaluator.results(scored, "retain", sources)
    return experiment.conclude(results, model=f"after_request{requests}")
