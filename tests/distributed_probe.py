"""Run by tests/test_distributed.py as `python distributed_probe.py {ddp,zero3} OUT_DIR`: 2 CPU processes
fit NPO + retain NLL for two steps on a tiny Llama; each rank writes OUT_DIR/rank<r>.json with the forget
and retain input ids it trained on and, at train start, the size of every frozen reference parameter
it holds (numel, and DeepSpeed's full size ds_numel when ZeRO-3 partitioned it), and after `fit` the
number of DeepSpeed ZeRO optimizers still alive (the strategy's teardown must release them)."""

from __future__ import annotations

import gc
import json
import sys
from functools import partial
from pathlib import Path

import lightning as L
import torch

from tests.conftest import PAIRS_FOR_STEP, SENTENCES, make_tiny_llama
from unlearning.data.collate import PromptTemplate
from unlearning.data.datamodule import UnlearningDataModule
from unlearning.methods.npo import NPO
from unlearning.models import train_byte_level_tokenizer
from unlearning.module import UnlearningModule
from unlearning.retain import NLLRetain
from unlearning.stages.inputs import reference_model
from unlearning.strategies import DeepSpeedOnAnyDevice


class Probe(L.Callback):
    def __init__(self, out: Path) -> None:
        self.out = out
        self.seen = {"forget": [], "retain": []}
        self.frozen: dict[str, list[int]] = {}

    def on_train_start(self, trainer, pl_module) -> None:
        self.frozen = {name: [param.numel(), getattr(param, "ds_numel", param.numel())]
                       for name, param in pl_module.frozen.named_parameters()}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        for key in self.seen:
            self.seen[key].append(batch[key]["input_ids"].tolist())

    def on_train_end(self, trainer, pl_module) -> None:
        record = {**self.seen, "frozen": self.frozen, "world_size": trainer.world_size}
        (self.out / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def fit(strategy: str, out: Path) -> int:
    """Two steps of NPO + retain NLL; this process's global rank."""
    tokenizer = train_byte_level_tokenizer(SENTENCES * 5, vocab_size=300)
    L.seed_everything(0)
    pairs = [{"question": q, "answer": a} for q, a in PAIRS_FOR_STEP]
    forget = pairs * 4  # 8 forget examples: two steps of 2 per rank
    retain = [{"question": f"{q} ({i})", "answer": a} for i in range(10) for q, a in pairs]
    policy = make_tiny_llama(tokenizer)
    module = UnlearningModule(policy, NPO(), partial(torch.optim.AdamW, lr=1e-3), NLLRetain(),
                              frozen={"ref": reference_model(policy)})
    data = UnlearningDataModule({"forget": forget, "retain": retain}, tokenizer, PromptTemplate(), batch_size=2,
                                max_length=64, seed=0)
    trainer = L.Trainer(accelerator="cpu", devices=2, max_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
                        strategy="ddp" if strategy == "ddp" else DeepSpeedOnAnyDevice(stage=3),
                        callbacks=[Probe(out)])
    trainer.fit(module, datamodule=data)
    return trainer.global_rank


def main(strategy: str, out: Path) -> None:
    rank = fit(strategy, out)
    gc.collect()  # as the unlearning stage does once its trainer is out of scope, before it loads a replica
    record = out / f"rank{rank}.json"
    alive = sum(type(o).__name__.startswith("DeepSpeedZeroOptimizer") for o in gc.get_objects())
    record.write_text(json.dumps({**json.loads(record.read_text()), "zero_optimizers_alive": alive}))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
