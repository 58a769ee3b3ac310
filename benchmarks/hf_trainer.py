"""Item 2: our training step vs a plain Hugging Face `transformers.Trainer`, the peer's engine.

The peer pattern (e.g. open-unlearning) is a `Trainer` subclass whose `compute_loss` returns the forget
loss (-NLL for gradient ascent). Both engines here train the same model on the same batches in the
same order with the same loss function, AdamW settings (constant learning rate, no weight decay) and
gradient clipping, without a retain term (the peer's pure gradient ascent); engine setup is inside the
timing on both sides.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from transformers import Trainer, TrainingArguments
from transformers.trainer_callback import PrinterCallback

from benchmarks.report import Section
from benchmarks.runs import FORGET_LOSSES, MethodRun, same_last_loss
from benchmarks.timing import Variant, time_interleaved
from benchmarks.workload import Workload
from unlearning.data.collate import pad_sub_batches

METHODS = ("grad_ascent", "npo")


class ForgetLossTrainer(Trainer):
    """The peer's pattern: `compute_loss` returns the method's forget loss (NPO reads a frozen reference)."""

    def __init__(self, method_run: MethodRun, **kwargs) -> None:
        super().__init__(**kwargs)
        self.method_run = method_run
        self.last_loss = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        run = self.method_run
        loss = run.objective.gamma * FORGET_LOSSES[run.name](model, run.reference, run.objective, inputs)
        self.last_loss = loss.detach()
        return loss


def hf_trainer(run: MethodRun, output_dir: Path) -> Variant:
    """`Trainer.train()` for the run's steps; returns the last loss."""
    optimizer = run.config.optimizer

    def run_trainer(_: None) -> float:
        arguments = TrainingArguments(
            output_dir=str(output_dir), max_steps=run.steps, per_device_train_batch_size=run.batch_size,
            learning_rate=optimizer.lr, weight_decay=optimizer.weight_decay, lr_scheduler_type="constant",
            optim="adamw_torch", max_grad_norm=run.config.trainer.gradient_clip_val,
            train_sampling_strategy="sequential", remove_unused_columns=False, use_cpu=True,
            dataloader_pin_memory=False, logging_strategy="no", save_strategy="no", report_to="none",
            disable_tqdm=True, seed=run.config.seed)
        trainer = ForgetLossTrainer(run, model=run.policy, args=arguments, train_dataset=run.items,
                                    data_collator=lambda items: pad_sub_batches(items, run.pad_id))
        trainer.remove_callback(PrinterCallback)
        trainer.train()
        return float(trainer.last_loss)

    return Variant(run_trainer, run.prepare_baseline)


def measure(workload: Workload, log_dir: Path) -> Section:
    settings = workload.settings
    rows = []
    for method in METHODS:
        run = MethodRun.build(workload, method, retain="none", steps=settings.steps)
        with tempfile.TemporaryDirectory() as output_dir:
            timed = time_interleaved({"hf": hf_trainer(run, Path(output_dir)), "ours": run.framework(log_dir)},
                                     settings.repeats, settings.warmup)
        ours, hf = timed["ours"].median, timed["hf"].median
        tokens = run.tokens_per_step() * settings.steps
        rows.append([method, f"{hf:.2f}", f"{ours:.2f}", f"{tokens / hf:.0f}", f"{tokens / ours:.0f}",
                     f"{ours / hf:.3f}",
                     same_last_loss(timed["hf"].result, timed["ours"].result)])
    return Section(
        title="2. Our training step vs a Hugging Face `transformers.Trainer`",
        summary=(f"{settings.steps} steps of {settings.batch_size} TOFU forget10 examples, no retain term; "
                 f"ours: `lightning.Trainer` fitting `UnlearningModule`; peer: a `Trainer` subclass whose "
                 f"`compute_loss` returns the same pure loss function. Median of {settings.repeats} interleaved "
                 f"repeats after {settings.warmup} warm-up, engine construction included on both sides. "
                 f"Model: {workload.training_model_description}."),
        columns=["method", "HF Trainer s", "ours s", "HF tokens/s", "ours tokens/s", "t_ours / t_hf",
                 "same last loss (HF vs ours)"],
        rows=rows,
        notes=["Both engines start from the same weights each repeat and see the same batches in the same "
               "order (HF: `train_sampling_strategy=sequential` over our ordered items)."],
    )
