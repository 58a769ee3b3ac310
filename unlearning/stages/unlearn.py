"""The unlearning stage: the target trained on the configured objective (+ retain term) over the
inputs they declare, saved in the run folder, resumable from its checkpoint.

The model is saved with `build_folder` (a kill while saving leaves nothing taken for a saved model);
a resumed run whose model was saved under this same config (killed while evaluating) reuses it.
"""

from __future__ import annotations

import gc
import logging
from pathlib import Path
from typing import TYPE_CHECKING


import lightning as L

from unlearning.config import build
from unlearning.evaluation.during_training import periodic_evaluation
from unlearning.interrupts import enter_stage
from unlearning.lora import MERGED_FOLDER, add_adapters
from unlearning.stages.cache import build_folder
from unlearning.stages.inputs import StageInputs
from unlearning.strategies import distributed, save_full_weights

if TYPE_CHECKING:
    from unlearning.experiment import Experiment

log = logging.getLogger(__name__)

UNLEARNED_FOLDER = "unlearned"


def unlearned_folder(experiment: "Experiment") -> Path:
    """Where the evaluated model is: `<run>/unlearned`, under LoRA with merge_on_save its `merged/`."""
    folder = experiment.run_dir / UNLEARNED_FOLDER
    lora = experiment.spec.lora
    return folder / MERGED_FOLDER if lora is not None and lora.merge_on_save else folder


def unlearn(experiment: "Experiment", target: Path, reference_model: Path | None = None):
    """Unlearn the forget set from `target`; returns the unlearned (model, tokenizer).
    `reference_model` (the retain model) anchors forget quality when evaluating during training."""
    spec = experiment.spec
    evaluated = unlearned_folder(experiment)
    if experiment.resume.saved_model(experiment.run_dir / UNLEARNED_FOLDER):
        log.info("stage unlearn: reusing %s", experiment.run_dir / UNLEARNED_FOLDER)
        return spec.load(evaluated)
    if not distributed():
        return train_and_save(experiment, target, reference_model)
    # Several processes: each evaluates the saved model (under ZeRO-3 it trained only a shard). The
    # training state (optimizer states, gradient buffers, DeepSpeed's fp32 master weights and partitioned
    # models) is held by reference cycles (Lightning's trainer <-> module, DeepSpeed's hooks, each ZeRO-3
    # parameter's `_z3_optimizer`) that Python's generational collector may leave for long: collected
    # here, before the replica loads, or a rank holds both (benchmarks/RESULTS.md item 7).
    train_and_save(experiment, target, reference_model)
    gc.collect()
    return spec.load(evaluated)


def train_and_save(experiment: "Experiment", target: Path, reference_model: Path | None):
    """The stage's training and saving: the unlearned (model, tokenizer) as trained (under LoRA with
    merge_on_save, the merged model)."""
    spec, cfg, run_dir = experiment.spec, experiment.cfg, experiment.run_dir
    folder, resume = run_dir / UNLEARNED_FOLDER, experiment.resume
    evaluated = unlearned_folder(experiment)
    enter_stage(experiment.unlearn_stage)
    checkpoint = resume.checkpoint(run_dir)  # before `checkpointing` records this run's config there
    objective = build(cfg.method)
    retain = build(cfg.retain) if cfg.get("retain") else None
    policy, tokenizer = experiment.trainer.load(spec, target)
    if spec.lora is not None:
        L.seed_everything(cfg.seed, verbose=False)  # the adapters' initialisation, whatever ran before
        policy = add_adapters(policy, spec.lora)
    inputs = StageInputs(experiment, policy, tokenizer, target).resolve(objective, retain)
    callbacks = [*periodic_evaluation(experiment, tokenizer, reference_model),
                 *resume.checkpointing(run_dir)]
    experiment.trainer.fit(policy, tokenizer, objective, inputs, experiment.settings.unlearn,
                           experiment.unlearn_stage, retain=retain, trainable_params=cfg.get("trainable_params"),
                           combiner=build(cfg.combiner) if cfg.get("combiner") else None,
                           callbacks=callbacks, ckpt_path=checkpoint)

    def save(tmp: Path):
        """Under LoRA the adapter (PeftModel.save_pretrained); with merge_on_save also the merged model,
        in place (no second copy), which is evaluated: the numbers unlearn-eval gives it."""
        save_full_weights(policy, tokenizer, tmp)
        if evaluated == folder:
            return policy
        merged = policy.merge_and_unload()
        save_full_weights(merged, tokenizer, tmp / MERGED_FOLDER)
        return merged

    return build_folder(folder, save, resume.record), tokenizer
