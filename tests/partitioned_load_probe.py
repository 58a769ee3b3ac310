"""Run by tests/test_distributed.py as `python partitioned_load_probe.py MODEL_DIR OUT_DIR`: 2 CPU processes
(gloo) load MODEL_DIR the way a ZeRO-3 training stage does (`StageTrainer.load`) and resolve the "ref"
frozen model; each rank writes OUT_DIR/rank<r>.json with, per model, the elements it holds locally, the
elements of its ZeRO-3 shards, and the full model's elements."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import torch
from lightning.fabric import Fabric

from unlearning.config import build
from unlearning.stages.inputs import FROZEN_MODELS, StageInputs
from unlearning.stages.training import StageTrainer

ZERO3 = {"strategy": {"_target_": "unlearning.strategies.DeepSpeedOnAnyDevice", "stage": 3}, "precision": "32-true"}


def sizes(model: torch.nn.Module) -> dict[str, int]:
    params = list(model.parameters())
    return {"held": sum(p.numel() for p in params),
            "shards": sum(p.ds_tensor.numel() for p in params if hasattr(p, "ds_tensor")),
            "full": sum(getattr(p, "ds_numel", p.numel()) for p in params),
            "requires_grad": any(p.requires_grad for p in params)}


def main(model_dir: str, out: Path) -> None:
    Fabric(accelerator="cpu", devices=2, strategy="ddp").launch()
    spec = build({"_target_": "unlearning.models.PretrainedModel", "name": "probe", "name_or_path": model_dir})
    trainer = StageTrainer(trainer=ZERO3, optimizer=None, template=spec.template, max_length=64, seed=0, logger=None)
    policy, _ = trainer.load(spec, model_dir)
    inputs = StageInputs(SimpleNamespace(trainer=trainer, spec=spec), policy, None, Path(model_dir))
    reference = FROZEN_MODELS["ref"](inputs)
    record = {"policy": sizes(policy), "ref": sizes(reference), "ref_is_policy": reference is policy}
    (out / f"rank{torch.distributed.get_rank()}.json").write_text(json.dumps(record))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
