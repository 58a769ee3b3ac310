"""Utility and forgetting through EleutherAI's lm-evaluation-harness (`lm_eval` 0.4.13).

The in-memory model is wrapped in the harness's `HFLM` and scored by its `evaluate` on the harness's
own task definitions, set up as `simple_evaluate` sets them up (`HarnessMetrics.run`): prompts, choices
and metrics stay the harness's; only where the data comes from may change (local files in each task's
own field names, for machines without the hub). The TOFU-style tasks shipped in
`unlearning/evaluation/tasks/` (also usable from the harness CLI with `--include_path`) score forgetting
the same way, on the run's own benchmark when `benchmark_tasks`.
"""

from __future__ import annotations

import functools
import json
import logging
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import yaml
from lm_eval import evaluate as evaluate_requests
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

from unlearning.data.collate import PromptTemplate
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.results import write_text_atomic
from unlearning.scoring import eval_mode
from unlearning.sharding import evaluation_ranks
from unlearning.strategies import broadcast

log = logging.getLogger(__name__)

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
DEFAULT_TASKS = ("winogrande", "hellaswag", "arc_easy", "arc_challenge", "boolq", "piqa")
# The samples in ../shared/data/lm_eval and ../shared/data/wmdp; wmdp_bio, openbookqa and mmlu have none.
LOCAL_FILES = {
    "piqa": "piqa_validation_500.jsonl",
    "boolq": "boolq_validation_500.jsonl",
    "hellaswag": "hellaswag_validation_500.jsonl",
    "winogrande": "winogrande_xl_validation_500.jsonl",
    "arc_easy": "arc_easy_test_500.jsonl",
    "arc_challenge": "arc_challenge_test_500.jsonl",
}
WMDP_FILES = {"wmdp_cyber": "wmdp_cyber_test_200.jsonl", "wmdp_chem": "wmdp_chem_test_200.jsonl"}
# Our task -> the QABenchmark.eval_sets() set it scores, with the fields the task reads.
BENCHMARK_TASKS = {
    "tofu_forget_mc": "forget",
    "tofu_forget_loglik": "forget",
    "tofu_retain_mc": "retain",
    "synthetic_world_facts_mc": "world_facts",
}
BENCHMARK_FIELDS = ("question", "answer", "perturbed_answer")
FEWSHOT_SEED = 1234  # simple_evaluate's default fewshot_random_seed


@functools.cache
def task_manager(include_defaults: bool = True) -> TaskManager:
    """Our task index, plus the harness's own when `include_defaults`: building that one reads every
    harness YAML (~15-25 s), so it happens once per process and only when a harness task is asked for."""
    return TaskManager(include_path=str(TASKS_DIR), include_defaults=include_defaults)


def registered_entry(task: str, include_defaults: bool = True):
    """The task's entry in the harness's index: `yaml_path`, the YAML it was registered from, and `cfg`,
    its config with includes merged and `!function`s left unresolved (read here for plain keys only)."""
    entry = task_manager(include_defaults).task_index.get(task)
    if entry is None or entry.yaml_path is None:
        raise ConfigError(f"lm_eval.tasks: {task!r} is not a task the harness (or {TASKS_DIR}) defines in YAML")
    return entry


def data_file_overrides(config: Mapping[str, Any], data_file: Path, **dataset_kwargs: Any) -> dict[str, Any]:
    """The keys that make `config` read its evaluated split (test if it has one, else validation) from a
    local JSONL file.

    Only the data source changes; every other split is dropped (few-shot examples then come from the
    evaluated split, the harness's own fallback, minus the document being asked).
    """
    if not data_file.is_file():
        raise ConfigError(f"lm_eval: task {config['task']} reads {data_file}, which does not exist")
    split_key = "test_split" if config.get("test_split") else "validation_split"
    split = config[split_key]
    return {"dataset_path": "json", "dataset_name": None,
            "dataset_kwargs": {"data_files": {split: str(data_file)}, **dataset_kwargs},
            "training_split": None, "validation_split": None, "test_split": None, "fewshot_split": None,
            split_key: split}


def override_task_file(entry, overrides: Mapping[str, Any], folder: Path) -> str:
    """A task YAML in `folder` that is the registered task with `overrides` on top, through the harness's
    own `include:` (its keys first, ours win; its `!function`s resolve beside the original YAML)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{entry.name}.yaml"
    path.write_text(yaml.safe_dump({"include": str(Path(entry.yaml_path).resolve()), **overrides},
                                   sort_keys=False, allow_unicode=True))
    return str(path)


def template_prompt(template: PromptTemplate, tokenizer, output_type: str) -> dict[str, str]:
    """Our tasks ask in the model's own prompt format, the one it was finetuned on. BOS goes in as
    text: HFLM only asks the tokenizer for special tokens, and many tokenizers add no BOS themselves."""
    bos = tokenizer.bos_token if template.add_bos and tokenizer.bos_token else ""
    prompt = {"doc_to_text": bos + template.prompt.format(question="{{question}}")}
    delimiter = template.answer.partition("{answer}")[0]
    # the harness puts target_delimiter before multiple-choice options only; a loglikelihood target is scored as is
    if output_type == "loglikelihood":
        return {**prompt, "doc_to_target": delimiter + "{{answer}}"}
    return {**prompt, "target_delimiter": delimiter}


def write_benchmark_sets(benchmark, folder: Path) -> dict[str, Path]:
    """The eval sets our tasks read, as JSONL in `folder` (same benchmark, same bytes)."""
    folder.mkdir(parents=True, exist_ok=True)
    eval_sets, files = benchmark.eval_sets(), {}
    for name in sorted(set(BENCHMARK_TASKS.values())):
        files[name] = folder / f"{name}.jsonl"
        rows = [json.dumps({key: record[key] for key in BENCHMARK_FIELDS}, sort_keys=True)
                for record in eval_sets[name]]
        write_text_atomic(files[name], "".join(row + "\n" for row in rows))  # ranks may share `folder`
    return files


def flat_aggregates(results: Mapping[str, Any]) -> dict[str, float]:
    """`lm_eval_<task>_<metric>` for every number the harness reports per task and group (a group such
    as mmlu also reports its subtasks): `acc`, `acc_stderr`, `acc_norm`, ...; a filter other than the
    default `none` is appended to the metric."""
    aggregates = {}
    for task, scores in results["results"].items():
        for key, value in scores.items():
            metric, _, filter_name = key.partition(",")
            if filter_name and isinstance(value, (int, float)):
                suffix = metric if filter_name == "none" else f"{metric}_{filter_name}"
                aggregates[result_name(task, suffix)] = float(value)
    return aggregates


def result_name(task: str, metric: str) -> str:
    return f"lm_eval_{task}_{metric}"


class DataParallelHFLM(HFLM):
    """The harness's HFLM over an in-memory model, taking part in the harness's own data parallelism.

    For a model object HFLM reports rank 0 of 1 (it sets up several processes only for a model it loads
    itself, through accelerate), so every rank would score every request. This reports the ranks of
    data-parallel evaluation (unlearning/sharding.py): the harness's evaluator then builds the requests
    of every world_size-th document on each rank, pads the ranks to equal request counts, and gathers
    the per-document metrics on rank 0 (`gather_object`, torch.distributed's in HFLM already). Its other
    collectives, accelerate's in HFLM, are torch.distributed's here (gloo on CPU)."""

    @property
    def rank(self) -> int:
        return evaluation_ranks()[0]

    @property
    def world_size(self) -> int:
        return evaluation_ranks()[1]

    def all_gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Every rank's tensor concatenated along the first dimension (a scalar counts as one element),
        as accelerate's `gather`."""
        if self.world_size == 1:
            return tensor
        tensor = tensor.reshape(1) if tensor.dim() == 0 else tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        torch.distributed.all_gather(parts, tensor)
        return torch.cat(parts)

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


class HarnessMetrics(MetricGroup):
    """lm-evaluation-harness scores of one model (conf/lm_eval/).

    tasks: harness task or group names (default: the six common-sense / QA utility tasks; openbookqa,
    mmlu, wmdp_bio, wmdp_cyber, wmdp_chem are other usual picks). num_fewshot / limit / batch_size /
    bootstrap_iters go to the harness (limit: the first N documents per task; bootstrap_iters: the
    resamples behind non-mean stderrs such as perplexity's).
    local_data_dir / wmdp_data_dir: folders holding `local_files` / `wmdp_files` (task -> file name);
    a listed task reads its file instead of the hub, every other task loads from the hub as usual.
    benchmark_tasks: also run our TOFU-style tasks (BENCHMARK_TASKS) on the run's benchmark, in the
    model's prompt template, written as JSONL to `benchmark_dir` (null: a temporary folder).
    max_length: the harness's context in tokens (null: the model's own). The harness refuses (asserts)
    an answer longer than the context instead of cutting it; a model with a short context and a small
    vocabulary (stories260K: 512 positions, 512 tokens) needs more for the longest PIQA solutions.
    """

    name = "lm_eval"

    def __init__(self, tasks: Sequence[str] = DEFAULT_TASKS, num_fewshot: int | None = None,
                 limit: int | float | None = None, batch_size: int = 32, bootstrap_iters: int = 1000,
                 local_data_dir: str | None = None, local_files: Mapping[str, str] = LOCAL_FILES,
                 wmdp_data_dir: str | None = None, wmdp_files: Mapping[str, str] = WMDP_FILES,
                 benchmark_tasks: bool = True, benchmark_dir: str | None = None,
                 max_length: int | None = None) -> None:
        self.tasks = list(tasks)
        self.max_length = max_length
        self.num_fewshot, self.limit, self.batch_size = num_fewshot, limit, batch_size
        self.bootstrap_iters = bootstrap_iters
        self.data_files = {
            task: Path(folder).expanduser() / file
            for folder, files in ((local_data_dir, local_files), (wmdp_data_dir, wmdp_files)) if folder
            for task, file in files.items()
        }
        self.benchmark_tasks, self.benchmark_dir = benchmark_tasks, benchmark_dir
        self.reads_qa_splits = benchmark_tasks  # the utility tasks alone score any model on any data
        if not self.tasks and not benchmark_tasks:
            raise ConfigError("lm_eval.tasks is empty and lm_eval.benchmark_tasks is false: nothing to evaluate")

    def result_names(self, compared: bool) -> tuple[str, ...]:
        """`lm_eval_<task>_*`: which metrics a task reports (and a group's subtasks) is the harness's."""
        tasks = [*self.tasks, *(BENCHMARK_TASKS if self.benchmark_tasks else ())]
        return tuple(result_name(task, "*") for task in tasks)

    def task_specs(self, benchmark_files: Mapping[str, Path], template: PromptTemplate, tokenizer,
                   folder: Path) -> list:
        """What the harness loads per task: a name (hub data) or the path of a task YAML written to
        `folder` that includes the registered one and changes its data source (local data)."""
        specs: list = []
        for task in self.tasks:
            if task in self.data_files:
                entry = registered_entry(task)
                specs.append(override_task_file(entry, data_file_overrides(entry.cfg, self.data_files[task]), folder))
            else:
                if self.data_files:
                    log.warning("lm_eval: no local file for task %s, loading it from the hub", task)
                specs.append(task)
        for task, eval_set in BENCHMARK_TASKS.items() if benchmark_files else ():
            entry = registered_entry(task, bool(self.tasks))
            data_folder = benchmark_files[eval_set].parent
            # the datasets cache of these files lives beside them, not in ~/.cache for every temp folder
            overrides = data_file_overrides(entry.cfg, benchmark_files[eval_set],
                                            cache_dir=str(data_folder / "datasets_cache"))
            overrides.update(template_prompt(template, tokenizer, entry.cfg["output_type"]))
            specs.append(override_task_file(entry, overrides, folder))
        return specs

    def run(self, lm: HFLM, specs: Sequence) -> dict | None:
        """The harness's `evaluate` of `specs`, with the few-shot settings `simple_evaluate` gives tasks
        (`num_fewshot` unless a task pins 0; 0 where a task sets none; its default few-shot seed), and no
        seeding (loglikelihood tasks draw nothing at random: the caller's RNG streams are left alone).
        Not `simple_evaluate` itself: on the reporting rank it then collects run metadata we discard
        (torch's environment report runs `pip list`; git hashes), ~0.3 s per model while the other ranks
        wait. The results on rank 0, None on the others."""
        loaded = task_manager(bool(self.tasks)).load(list(specs))
        for task in loaded["tasks"].values():
            default = task.get_config("num_fewshot")
            if self.num_fewshot is not None and default != 0:
                task.set_config(key="num_fewshot", value=self.num_fewshot)
            elif default is None:
                task.set_config(key="num_fewshot", value=0)
            task.set_fewshot_seed(seed=FEWSHOT_SEED)
        return evaluate_requests(lm=lm, task_dict=loaded, limit=self.limit, bootstrap_iters=self.bootstrap_iters,
                                 log_samples=False)

    def evaluate(self, model, tokenizer, template, benchmark) -> Evaluation:
        with tempfile.TemporaryDirectory() as scratch:
            folder = Path(self.benchmark_dir).expanduser() if self.benchmark_dir else Path(scratch)
            files = write_benchmark_sets(benchmark, folder) if self.benchmark_tasks else {}
            specs = self.task_specs(files, template, tokenizer, Path(scratch) / "task_yamls")
            with eval_mode(model):
                results = self.run(DataParallelHFLM(pretrained=model, tokenizer=tokenizer, batch_size=self.batch_size,
                                                    max_length=self.max_length), specs)
        # the harness reports on rank 0 alone (None elsewhere); every rank holds every evaluation
        results = broadcast(None if results is None else {key: results[key] for key in ("results", "n-samples")})
        sources = {name: str(self.data_files.get(name, "hub")) for name in self.tasks}
        sources.update({task: f"benchmark:{eval_set}" for task, eval_set in BENCHMARK_TASKS.items() if files})
        return Evaluation(aggregates=flat_aggregates(results),
                          per_example={"n_samples": results["n-samples"], "data_source": sources})
