"""The TOFU protocol as stages: build base -> finetune target | finetune retain -> unlearn -> evaluate.

Finished stages are cached under `paths.cache_dir`, in folders named by a hash of everything that
determines them (model config, the records trained on, training settings, seed), so a sweep of
unlearning runs finetunes its target and retain model once. A stage is built in a temporary folder and
renamed into place when complete; a lock makes concurrent sweep jobs wait for one build, not repeat it.
The unlearned model is saved in the run folder the same way, so a resumed run can reuse it.
"""

from __future__ import annotations

import json
import logging
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
from filelock import FileLock
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import DictConfig, OmegaConf

from unlearning.config import build, config_fingerprint, fingerprint
from unlearning.dashboards import publish_results, stage_logger
from unlearning.data.alternates import alternate_answers
from unlearning.data.anchored_terms import TEXT_FIELDS, anchor_records, load_dictionary, save_dictionary
from unlearning.data.benchmark import QABenchmark
from unlearning.data.datamodule import UnlearningDataModule
from unlearning.errors import ConfigError
from unlearning.evaluation.base import Evaluation, MetricGroup
from unlearning.evaluation.during_training import PeriodicEvaluation
from unlearning.evaluation.tofu import TofuMetrics
from unlearning.lora import MERGED_FOLDER, add_adapters
from unlearning.methods.base import Objective
from unlearning.methods.language_modeling import LanguageModeling
from unlearning.models import ModelSpec, PretrainedModel, ScratchLlama, frozen_copy
from unlearning.module import UnlearningModule, batch_keys
from unlearning.results import format_table, write_json_atomic
from unlearning.retain import RetainRegularizer
from unlearning.schema import EvaluationSettings, RunSettings, prepare_config
from unlearning.selectors import DECISIONS_FILE, SelectionContext
from unlearning.strategies import (barrier, broadcast, distributed, end_processes, global_rank, save_full_weights,
                                   start_processes)
from unlearning.sweeps import in_multirun, sweep_objective
from unlearning.whp_terms import propose_terms

log = logging.getLogger(__name__)

DONE_MARKER = "STAGE_DONE.json"
CHECKPOINT_FOLDER = "checkpoints"
CHECKPOINT_CONFIG = "CONFIG.json"
UNLEARNED_FOLDER = "unlearned"
TABLE_COLUMNS = ("forget_quality", "model_utility", "forget_truth_ratio", "forget_prob", "forget_rouge",
                 "retain_prob", "retain_rouge", "retain_truth_ratio")


def build_folder(folder: Path, make: Callable[[Path], Any], record: Mapping) -> Any:
    """`make(<folder>.partial)`, then `record` written there as the done marker and the folder renamed to
    `folder`: a process killed while building leaves a `.partial` folder, never one taken for finished,
    and the next build starts afresh; a build that raises removes its `.partial` folder. Every rank calls
    it (`make` may be collective); rank 0 alone touches the files. Returns what `make` returns."""
    lead = global_rank() == 0
    tmp = folder.with_name(folder.name + ".partial")
    if lead:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    try:
        made = make(tmp)
        if lead:
            write_json_atomic(tmp / DONE_MARKER, record)
            shutil.rmtree(folder, ignore_errors=True)  # an earlier build being replaced, or an unmarked one
            tmp.rename(folder)
    except BaseException:
        if lead:
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    barrier()
    return made


def finished_record(folder: Path) -> dict | None:
    """The done marker of a folder `build_folder` finished; None if it never finished."""
    marker = folder / DONE_MARKER
    return json.loads(marker.read_text()) if marker.exists() else None


class StageCache:
    """Stage outputs under `root/<stage>-<hash>/`, complete once `STAGE_DONE.json` exists."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser()

    def folder(self, stage: str, parts: Any) -> Path:
        return self.root / f"{stage}-{fingerprint(parts)}"

    def get_or_build(self, stage: str, parts: Any, make: Callable[[Path], None]) -> Path:
        """Under several processes rank 0 alone holds the lock and decides for all; every rank runs `make`
        (a training stage is one collective fit, written by rank 0) and waits for rank 0's rename."""
        folder = self.folder(stage, parts)
        self.root.mkdir(parents=True, exist_ok=True)
        lead = global_rank() == 0
        with FileLock(str(folder) + ".lock") if lead else nullcontext():
            if broadcast(finished_record(folder) is not None):
                log.info("stage %s: reusing %s", stage, folder)
                return folder
            if lead:
                log.info("stage %s: building %s", stage, folder)
            build_folder(folder, make, {"stage": stage, "parts": parts})
        return folder


@dataclass
class Protocol:
    """Everything a run's stages share: the composed config and the objects built from it."""

    cfg: DictConfig
    benchmark: QABenchmark
    spec: ModelSpec
    cache: StageCache
    run_dir: Path
    unlearn_stage: str = "unlearn"  # the unlearning stage's logger name (logs/<it>; a sequential request's differs)

    @property
    def model_key(self) -> dict:
        # LoRA applies to unlearning only: the cached stages before it do not depend on it.
        model = {k: v for k, v in OmegaConf.to_container(self.cfg.model, resolve=True).items() if k != "lora"}
        return {"model": model, "seed": self.cfg.seed}

    def base_model(self) -> str:
        """The path the protocol starts from: a built scratch model, or a hub id / folder."""
        if isinstance(self.spec, ScratchLlama):
            corpus = self.benchmark.corpus()
            parts = {**self.model_key, "corpus": fingerprint(corpus)}

            def make(folder: Path) -> None:
                if global_rank() == 0:  # nothing to train: one process writes the model
                    self.spec.build(folder, corpus, self.cfg.seed)

            return str(self.cache.get_or_build("base", parts, make))
        if isinstance(self.spec, PretrainedModel):
            return self.spec.base_path()
        raise ConfigError(f"model._target_ builds a {type(self.spec).__name__}, which has no base model")

    def forget_records(self, model=None, tokenizer=None) -> list[dict]:
        """benchmark.forget; with `cfg.selector`, the training pairs (forget + retain) the selector flags,
        judging with `model` (the target before unlearning); its decisions are saved in the run folder."""
        if not self.cfg.get("selector"):
            return self.benchmark.forget
        return build(self.cfg.selector).select(self.benchmark.forget + self.benchmark.retain,
                                               SelectionContext(model, tokenizer, self.spec.template),
                                               self.run_dir / DECISIONS_FILE)

    def sets(self, keys: Sequence[str], model=None, tokenizer=None, frozen: Mapping | None = None) -> dict[str, list[dict]]:
        """The records behind each batch key an objective or regularizer declares (`model`, `tokenizer`:
        the target, for a selector that judges with it; `frozen`: the stage's frozen models)."""
        forget = self.forget_records(model, tokenizer)
        # Selected pairs may come from the retain split: the retain term must not pull them back.
        flagged = {(r["question"], r["answer"]) for r in forget} if self.cfg.get("selector") else set()
        providers = {
            "forget": lambda: forget,
            "retain": lambda: [r for r in self.benchmark.retain
                               if not flagged or (r["question"], r["answer"]) not in flagged],
            "alternate": lambda: alternate_answers(forget, self.cfg.seed, self.cfg.data.get("alternates_path")),
            "anchored": lambda: anchor_records(tokenizer, self.spec.template, forget, self.anchored_terms(
                forget, model, (frozen or {}).get("reinforced"), tokenizer), self.cfg.max_length),
        }
        unknown = [key for key in keys if key not in providers]
        if unknown:
            raise ConfigError(f"the method reads batch key(s) {unknown}; the pipeline provides {sorted(providers)}")
        return {key: providers[key]() for key in keys}

    def frozen(self, names: Sequence[str], target: Path) -> dict:
        """Frozen models besides "ref" (which the module copies from the policy): the reinforced model."""
        models = {}
        if "reinforced" in names:
            models["reinforced"] = frozen_copy(self.spec.load(self.reinforced(target))[0])
        return models

    def reinforced(self, target: Path) -> Path:
        """The reinforced model (WHP, task vectors): the target further finetuned on the forget set."""
        return self.finetune("reinforced", self.benchmark.forget, start=target, settings=self.cfg.reinforce)

    def anchored_terms(self, forget: list[dict], baseline, reinforced, tokenizer) -> dict[str, str]:
        """WHP's dictionary: `data.anchored_terms` (a file or shipped name), else proposed from the forget
        records by unlearn-whp-terms' ranking (reinforced over baseline log-probs), saved in the run folder."""
        if self.cfg.data.get("anchored_terms"):
            return load_dictionary(self.cfg.data.anchored_terms)
        if baseline is None or reinforced is None:
            raise ConfigError("data.anchored_terms is not set and this stage has no baseline and reinforced "
                              "model to propose a dictionary with")
        texts = [" ".join(r[k] for k in TEXT_FIELDS if k in r) for r in forget]
        terms = propose_terms(baseline, reinforced, tokenizer, texts, max_length=self.cfg.max_length)
        save_dictionary(self.run_dir / "anchored_terms.yaml", terms, "Proposed from the forget set (no data.anchored_terms).")
        return terms

    def train(self, policy, tokenizer, objective: Objective, retain: RetainRegularizer | None,
              sets: Mapping[str, Sequence[dict]], optimizer, batch_size: int, stage: str,
              epochs: int, max_steps: int = -1, frozen: Mapping | None = None, callbacks: Sequence = (),
              ckpt_path: str | None = None) -> None:
        """One Lightning fit of `objective` (+ `retain`) on the named sets (resumed from `ckpt_path`)."""
        L.seed_everything(self.cfg.seed, workers=True, verbose=False)
        module = UnlearningModule(policy, objective, optimizer, retain, frozen=frozen,
                                  warmup_steps=self.cfg.warmup_steps,
                                  trainable_params=self.cfg.get("trainable_params"),
                                  combiner=build(self.cfg.combiner) if self.cfg.get("combiner") else None)
        datamodule = UnlearningDataModule(
            {key: sets[key] for key in module.batch_keys()}, tokenizer, self.spec.template,
            batch_size=batch_size, max_length=self.cfg.max_length, seed=self.cfg.seed,
            aligned_keys=("alternate",),
        )
        logger = stage_logger(self.cfg, stage)
        # The data module splits each global batch over the ranks itself (EpochPermutation).
        trainer = build(self.cfg.trainer, max_epochs=epochs, max_steps=max_steps, logger=logger,
                        callbacks=list(callbacks), use_distributed_sampler=False,
                        enable_checkpointing=any(isinstance(c, ModelCheckpoint) for c in callbacks))
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)

    def finetune(self, stage: str, records: list[dict], start: Path | None = None,
                 settings: DictConfig | None = None) -> Path:
        """Finetune `start` (default: the base model, with the benchmark's general knowledge added to
        `records`) on `records` with `settings` (default: cfg.finetune); cached."""
        ft = settings if settings is not None else self.cfg.finetune
        given = ft.get(f"{stage}_path")
        if given:
            return Path(given)
        if start is None:
            records = self.benchmark.pretrain + records
        base = str(start) if start is not None else self.base_model()
        parts = {**self.model_key, "base": base, "finetune": OmegaConf.to_container(ft, resolve=True),
                 "records": fingerprint(records), "max_length": self.cfg.max_length}

        def make(folder: Path) -> None:
            policy, tokenizer = self.spec.load(base)
            optimizer = build(self.cfg.optimizer, lr=ft.lr)
            self.train(policy, tokenizer, LanguageModeling(), None, {"train": records}, optimizer,
                       ft.batch_size, f"finetune_{stage}", ft.epochs, ft.max_steps)
            save_full_weights(policy, tokenizer, folder)

        return self.cache.get_or_build(f"finetune_{stage}", parts, make)

    def unlearn(self, target: Path, reference_model: Path | None = None):
        """Unlearn the forget set from the target; the result is saved in the run folder (`build_folder`: a
        kill while saving leaves nothing taken for a saved model). A resumed run whose model was saved under
        this same config (killed while evaluating) reuses it instead of training again.
        `reference_model` (the retain model) anchors forget quality when evaluating during training."""
        folder = self.run_dir / UNLEARNED_FOLDER
        merges = self.spec.lora is not None and self.spec.lora.merge_on_save
        evaluated = folder / MERGED_FOLDER if merges else folder
        record = {"stage": "unlearn", "config": config_fingerprint(self.cfg)}
        if self.resumes_run_folder() and broadcast(finished_record(folder) == record):
            log.info("stage unlearn: reusing %s", folder)
            return self.spec.load(evaluated)
        objective = build(self.cfg.method)
        retain = build(self.cfg.retain) if self.cfg.get("retain") else None
        policy, tokenizer = self.spec.load(target)
        frozen = self.frozen(objective.frozen_models, target)
        sets = self.sets(batch_keys(objective, retain), policy, tokenizer, frozen)
        if self.spec.lora is not None:
            policy = add_adapters(policy, self.spec.lora)
        resume_from = self.resume_checkpoint()  # before checkpointing() records this run's config there
        self.train(policy, tokenizer, objective, retain, sets, build(self.cfg.optimizer),
                   self.cfg.data.batch_size, self.unlearn_stage, self.cfg.trainer.max_epochs,
                   self.cfg.trainer.get("max_steps", -1), frozen=frozen,
                   callbacks=[*self.periodic_evaluation(tokenizer, reference_model), *self.checkpointing()],
                   ckpt_path=resume_from)

        def save(tmp: Path):
            """Under LoRA the adapter (PeftModel.save_pretrained); with merge_on_save also the merged model,
            in place (no second copy), which is evaluated: the numbers unlearn-eval gives it."""
            save_full_weights(policy, tokenizer, tmp)
            if not merges:
                return policy
            merged = policy.merge_and_unload()
            save_full_weights(merged, tokenizer, tmp / MERGED_FOLDER)
            return merged

        unlearned = build_folder(folder, save, record)
        if distributed():  # under ZeRO-3 this process holds a shard: what is evaluated is the saved model
            return self.spec.load(evaluated)
        return unlearned, tokenizer

    def checkpointing(self) -> list:
        """`<run>/checkpoints/last.ckpt` every `checkpoint_every_n_steps` unlearning steps (null: none)."""
        every = self.cfg.get("checkpoint_every_n_steps")
        if not every:
            return []
        folder = self.run_dir / CHECKPOINT_FOLDER
        if global_rank() == 0:  # which config the checkpoints belong to: resume_checkpoint checks it
            folder.mkdir(parents=True, exist_ok=True)
            write_json_atomic(folder / CHECKPOINT_CONFIG, {"config": config_fingerprint(self.cfg)})
        return [ModelCheckpoint(dirpath=folder, every_n_train_steps=every, save_last=True, save_top_k=0)]

    def resumes_run_folder(self) -> bool:
        """`resume=true`, or a sweep job with `resume` unset: a relaunched sweep continues each job's folder."""
        resume = self.cfg.get("resume")
        return resume is True or (resume is None and in_multirun())

    def resume_checkpoint(self) -> str | None:
        """`resume=true`: this run folder's last checkpoint; `resume=<file>`: that checkpoint; a sweep job
        (`resume` unset): its folder's last checkpoint when an interrupted launch left one. The run folder's
        checkpoint is taken only if it was written under this config (`resume` aside): a sweep job whose
        config changed since starts afresh (a finished job's checkpoint is at its last step: resuming it
        would train nothing), and `resume=true` refuses it."""
        resume = self.cfg.get("resume")
        if isinstance(resume, str):
            path = Path(resume)
        elif self.resumes_run_folder():
            path = self.run_dir / CHECKPOINT_FOLDER / "last.ckpt"
        else:
            return None
        if not path.is_file():
            if resume is None:  # the job's first launch
                return None
            raise ConfigError(f"resume={resume}: no checkpoint {path} (resume=true needs hydra.run.dir=<the killed run's folder>)")
        if not isinstance(resume, str) and not broadcast(self.checkpoint_is_this_configs(path)):
            if resume is True:
                raise ConfigError(f"resume=true: {path} was written under another config than this run's "
                                  f"(see {path.parent / CHECKPOINT_CONFIG}); resume=<that file> takes it anyway")
            log.warning("stage unlearn: %s was written under another config: starting afresh", path)
            if global_rank() == 0:
                path.unlink()
            return None
        log.info("stage unlearn: resuming from %s", path)
        return str(path)

    def checkpoint_is_this_configs(self, checkpoint: Path) -> bool:
        recorded = checkpoint.parent / CHECKPOINT_CONFIG
        return recorded.is_file() and json.loads(recorded.read_text()) == {"config": config_fingerprint(self.cfg)}

    @cached_property
    def metric_groups(self) -> dict[str, MetricGroup]:
        """The configured metric groups, built once per run (every model is scored by the same objects)."""
        return {name: build(node) for name, node in self.cfg.eval.groups.items() if node}

    @cached_property
    def benchmark_key(self) -> str:
        """Fingerprint of every split (groups read more than the TOFU eval sets: holdout, retain, ...)."""
        return fingerprint(asdict(self.benchmark))

    def evaluate(self, policy, tokenizer) -> dict[str, Evaluation]:
        """Every configured metric group's evaluation of one model."""
        return {name: group.evaluate(policy, tokenizer, self.spec.template, self.benchmark)
                for name, group in self.metric_groups.items()}

    def evaluate_cached(self, folder: Path) -> dict[str, Evaluation]:
        """Evaluate a cached stage's model once per group setting: sweeps reuse the numbers."""
        evaluations, missing = {}, {}
        for name in self.metric_groups:
            node = self.cfg.eval.groups[name]
            parts = {"group": OmegaConf.to_container(node, resolve=True), "data": self.benchmark_key,
                     "template": str(self.spec.template)}
            cached = folder / f"eval-{name}-{fingerprint(parts)}.json"
            if cached.exists():
                evaluations[name] = Evaluation.from_json(json.loads(cached.read_text()))
            else:
                missing[name] = cached
        if missing:
            policy, tokenizer = self.spec.load(folder)
            for name, cached in missing.items():
                evaluations[name] = self.metric_groups[name].evaluate(
                    policy, tokenizer, self.spec.template, self.benchmark)
                write_json_atomic(cached, evaluations[name].to_json())
        return evaluations

    def periodic_evaluation(self, tokenizer, reference_model: Path | None) -> list:
        """The evaluation-during-training callback when `eval.during_training.every_n_steps` is set."""
        settings = self.cfg.eval.during_training
        if not settings.every_n_steps:
            return []
        cheap = TofuMetrics(batch_size=self.cfg.eval.groups.tofu.batch_size, max_length=self.cfg.max_length,
                            max_examples=settings.max_examples, generate=False, progress=False)
        reference = {}
        if reference_model is not None:
            reference["tofu"] = cheap.evaluate(self.spec.load(reference_model)[0], tokenizer, self.spec.template,
                                               self.benchmark)
        return [PeriodicEvaluation([cheap], self.benchmark, tokenizer, self.spec.template, settings.every_n_steps,
                                   reference, settings.monitor, settings.mode, self.run_dir / "best",
                                   self.run_dir / "eval_during_training.json")]


def build_protocol(cfg: DictConfig) -> Protocol:
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return Protocol(cfg=cfg, benchmark=build(cfg.data.benchmark), spec=build(cfg.model),
                    cache=StageCache(cfg.paths.cache_dir), run_dir=run_dir)


def report(protocol: Protocol, evaluations: dict[str, dict[str, Evaluation]], reference: str | None,
           paths: dict) -> dict:
    """Merge every group's aggregates and its comparisons against the `reference` model, write
    results.json and per_example.json atomically, print one table per group; returns metrics per model."""
    models: dict[str, dict[str, float]] = {name: {} for name in evaluations}
    groups = protocol.metric_groups
    for group_name, group in groups.items():
        by_model = {name: evaluation[group_name] for name, evaluation in evaluations.items()}
        for name, evaluation in by_model.items():
            models[name].update(evaluation.aggregates)
        for name, extra in group.compare(by_model, reference).items():
            models[name].update(extra)
    run_dir = protocol.run_dir
    write_json_atomic(run_dir / "per_example.json", {
        name: {group: e.per_example for group, e in evaluation.items()} for name, evaluation in evaluations.items()})
    write_json_atomic(run_dir / "results.json", {
        "models": models,
        "paths": paths,
        "per_example": "per_example.json",
        "config": OmegaConf.to_container(protocol.cfg, resolve=True),
    })
    shown = set(TABLE_COLUMNS)
    print(format_table(models, TABLE_COLUMNS))
    for group_name in groups:
        if group_name == "tofu":
            continue
        columns = sorted({key for evaluation in evaluations.values() for key in evaluation[group_name].aggregates
                          if not key.endswith("_stderr")} - shown)
        columns += [k for k in sorted({k for m in models.values() for k in m} - shown - set(columns))
                    if k.startswith(group_name)]
        if columns:
            print(f"\n{group_name}")
            print(format_table(models, columns))
    print(f"results: {run_dir / 'results.json'}")
    return models


def run(cfg: DictConfig) -> float | list[float]:
    """The entry point's only call: run the configured protocol, return the sweep metric. A multi-process
    trainer (conf/hardware/) starts its processes here; each runs the protocol (unlearning/strategies.py)."""
    prepare_config(cfg, RunSettings)
    start_processes(cfg.trainer)
    return build(cfg.protocol)(cfg)


def run_tofu(cfg: DictConfig) -> float | list[float]:
    """The TOFU protocol; returns the unlearned model's `cfg.objective_metric` (a name or a list) for sweepers."""
    protocol = build_protocol(cfg)
    target = protocol.finetune("target", protocol.benchmark.full)
    retain_model = protocol.finetune("retain", protocol.benchmark.retain)
    policy, tokenizer = protocol.unlearn(target, reference_model=retain_model)
    if not end_processes():  # rank 0 evaluates and reports alone
        return float("nan")
    evaluations = {
        "target": protocol.evaluate_cached(target),
        "retain": protocol.evaluate_cached(retain_model),
        "unlearned": protocol.evaluate(policy, tokenizer),
    }
    paths = {"target": str(target), "retain": str(retain_model), "unlearned": str(protocol.run_dir / "unlearned")}
    models = report(protocol, evaluations, "retain", paths)
    publish_results(cfg, protocol.run_dir / "results.json", models)
    return sweep_objective(models["unlearned"], cfg.objective_metric)


def run_evaluation(cfg: DictConfig) -> dict:
    """`unlearn-eval`: score a saved checkpoint (and, for forget quality, a retain model)."""
    prepare_config(cfg, EvaluationSettings)
    protocol = build_protocol(cfg)
    folders = {"checkpoint": cfg.checkpoint}
    if cfg.get("retain_checkpoint"):
        folders["retain"] = cfg.retain_checkpoint
    for name, folder in folders.items():
        if not Path(folder).is_dir():
            raise ConfigError(f"{name}={folder} is not a model folder")
    evaluations = {name: protocol.evaluate(*protocol.spec.load(folder)) for name, folder in folders.items()}
    return report(protocol, evaluations, "retain" if "retain" in folders else None, folders)
