"""A composed run config -> the memory plan of each training stage it runs, per rank.

The stages are those the configured protocol declares (`TRAINING_STAGES` in its module, next to the
script that trains them), plus the reinforced model when the method or retain term declares it as a
frozen model. A stage whose model is given (`finetune.target_path`, ...) trains nothing and is listed
as skipped. Each stage's batch comes from where a run reads it: `finetune.batch_size`,
`reinforce.batch_size`, `data.batch_size` (unlearning), `protocol.batch_size` (the relearning attack);
the objective's declarations (`batch_keys`, `frozen_models`, `trainable_params`) are read from the built
method and retain nodes, as the unlearning stage builds them (cheap: no model is loaded).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, replace
from pkgutil import resolve_name

from omegaconf import DictConfig, ListConfig

from unlearning.config import build
from unlearning.errors import ConfigError
from unlearning.models import DTYPES
from unlearning.planning.memory import Hardware, Term, Workload, activation_bytes, peak_bytes, training_terms
from unlearning.planning.shapes import ModelShape, model_shape

# finetune stages: (the settings node, its key naming an already trained model)
FINETUNE_STAGES = {"finetune_target": ("finetune", "target_path"), "finetune_retain": ("finetune", "retain_path"),
                   "finetune_reinforced": ("reinforce", "reinforced_path")}
PRECISION_BYTES = {"64": 8, "32": 4, "16": 2, "bf16": 2}
LIGHTNING_BUCKET_SIZE = 200_000_000  # Lightning's DeepSpeedStrategy default reduce_bucket_size
DEEPSPEED_MAX_LIVE_PARAMETERS = 1_000_000_000  # DeepSpeed's default stage3_max_live_parameters


@dataclass(frozen=True)
class StagePlan:
    name: str
    work: Workload
    terms: list[Term]
    other_activations: float  # the activations with gradient checkpointing switched the other way

    @property
    def device_bytes(self) -> float:
        return peak_bytes([term for term in self.terms if not term.host])

    @property
    def host_bytes(self) -> float:
        """What DeepSpeed's offload puts in host memory."""
        return peak_bytes([term for term in self.terms if term.host])

    @property
    def process_bytes(self) -> float:
        """Device and host terms together: what one CPU process holds."""
        return peak_bytes(self.terms)

    @property
    def largest(self) -> Term:
        """The biggest term on the device (what an offloaded term costs is host memory)."""
        return max((term for term in self.terms if not term.host), key=lambda term: term.bytes)


@dataclass(frozen=True)
class RunPlan:
    shape: ModelShape
    hardware: Hardware
    sequence: int  # tokens per sequence: max_length, or the model's context when shorter
    stages: list[StagePlan]
    skipped: dict[str, str]  # stage -> why it trains nothing
    notes: list[str]


def ranks(trainer: DictConfig, notes: list[str]) -> int:
    """trainer.devices x trainer.num_nodes; `auto` is planned as one device per node, and said so."""
    devices = trainer.get("devices", 1)
    if isinstance(devices, (list, ListConfig)):
        count = len(devices)
    elif str(devices) in ("auto", "-1"):
        notes.append(f"trainer.devices={devices}: planned as 1 device per node (give trainer.devices=N for N ranks)")
        count = 1
    elif str(devices).isdigit() and int(devices) > 0:
        count = int(devices)
    else:
        raise ConfigError(f"trainer.devices={devices!r} is not a number of devices, a list of them or auto")
    nodes = trainer.get("num_nodes", 1)
    if not str(nodes).isdigit() or int(nodes) < 1:
        raise ConfigError(f"trainer.num_nodes={nodes!r} must be a positive integer")
    return count * int(nodes)


def deepspeed_settings(strategy) -> dict | None:
    """DeepSpeed's settings of `trainer.strategy` (None: plain PyTorch, one process or DDP)."""
    if strategy is None or (isinstance(strategy, str) and (strategy in ("auto", "single_device")
                                                           or strategy.startswith("ddp"))):
        return None
    if isinstance(strategy, str) and strategy.startswith("deepspeed"):  # Lightning's registered names
        stage = int(strategy.split("_")[2]) if strategy.startswith("deepspeed_stage_") else 2
        offload = "offload" in strategy
        return {"stage": stage, "offload_optimizer": offload, "offload_parameters": offload and stage == 3}
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy

    target = strategy.get("_target_") if isinstance(strategy, DictConfig) else None
    try:
        kind = resolve_name(target) if target else None
    except (ImportError, AttributeError, ValueError):
        kind = None
    if isinstance(kind, type) and issubclass(kind, DeepSpeedStrategy):
        return {key: value for key, value in strategy.items() if key != "_target_"}
    if isinstance(kind, type) and issubclass(kind, DDPStrategy):
        return None
    raise ConfigError(f"trainer.strategy={target or strategy}: unlearn-plan plans one process, DDP and DeepSpeed "
                      "ZeRO (conf/hardware/)")


def weight_bytes(precision: str, deepspeed: bool, model_dtype: str) -> int:
    """The bytes of a weight as training holds it. DeepSpeed runs its module in 16-bit under mixed
    precision; Lightning's `*-true` plugins convert the module, except 32-true, which (like mixed
    precision without DeepSpeed) leaves the weights in their loaded dtype (`model.dtype`)."""
    bits, _, kind = precision.partition("-")
    if bits not in PRECISION_BYTES or kind not in ("true", "mixed", ""):
        raise ConfigError(f"trainer.precision={precision!r} is not one of 32-true, bf16-mixed, 16-mixed, bf16-true, "
                          "16-true, 64-true")
    if kind == "mixed" or (kind == "" and bits != "32"):
        return 2 if deepspeed else DTYPES[model_dtype].itemsize
    return PRECISION_BYTES[bits] if deepspeed or bits != "32" else DTYPES[model_dtype].itemsize


def hardware(trainer: DictConfig, model_dtype: str, notes: list[str]) -> Hardware:
    deepspeed = deepspeed_settings(trainer.get("strategy"))
    settings = deepspeed or {}
    precision = str(trainer.get("precision", "32-true"))
    return Hardware(ranks=ranks(trainer, notes), zero_stage=settings.get("stage", 2) if deepspeed is not None else None,
                    offload_optimizer=bool(settings.get("offload_optimizer", False)),
                    offload_parameters=bool(settings.get("offload_parameters", False)), precision=precision,
                    accelerator=str(trainer.get("accelerator", "auto")),
                    reduce_bucket_size=int(settings.get("reduce_bucket_size", LIGHTNING_BUCKET_SIZE)),
                    overlap_comm=bool(settings.get("overlap_comm", True)),
                    max_live_parameters=int((settings.get("zero_settings") or {}).get(
                        "stage3_max_live_parameters", DEEPSPEED_MAX_LIVE_PARAMETERS)),
                    weight_bytes=weight_bytes(precision, deepspeed is not None, model_dtype))


def training_stages(cfg: DictConfig, frozen: tuple[str, ...]) -> list[str]:
    """The training stages of the configured protocol, in order, with the reinforced model when declared."""
    target = str(cfg.protocol.get("_target_", ""))
    module = importlib.import_module(target.rpartition(".")[0]) if "." in target else None
    stages = getattr(module, "TRAINING_STAGES", None)
    if stages is None:
        raise ConfigError(f"protocol._target_={target}: its module declares no TRAINING_STAGES, so unlearn-plan "
                          "cannot tell which stages it trains")
    stages = list(stages)
    if "reinforced" in frozen and "finetune_reinforced" not in stages:
        stages.insert(stages.index("unlearn"), "finetune_reinforced")
    return stages


def plan_run(cfg: DictConfig, device: str = "gpu") -> RunPlan:
    """The memory plan of every training stage of `cfg` (a composed `unlearn` config)."""
    from unlearning.stages.inputs import declared

    spec = build(cfg.model)
    shape = model_shape(spec)
    notes: list[str] = []
    run_hardware = hardware(cfg.trainer, spec.dtype, notes)
    objective = build(cfg.method)
    keys, frozen = declared(objective, build(cfg.retain) if cfg.get("retain") else None)
    pattern = cfg.get("trainable_params") or objective.trainable_params
    held, trainable = shape.parameters(), shape.parameters(pattern)
    if not trainable:
        raise ConfigError(f"trainable_params={pattern!r} matches no parameter of the model")
    if spec.lora is not None:  # adapters train; the base weights stay, frozen; the reference is adapters-off
        held, trainable = held + shape.adapter_parameters(spec.lora), shape.adapter_parameters(spec.lora, pattern)
        frozen = tuple(name for name in frozen if name != "ref")
    sequence = min(cfg.max_length, shape.context or cfg.max_length)
    base = Workload(batch_size=0, sub_batches=1, sequence=sequence, parameters=shape.parameters(),
                    trainable=shape.parameters(), frozen_copies=(), checkpointing=spec.gradient_checkpointing,
                    eager_attention=spec.attn_implementation == "eager")
    unlearning = replace(base, batch_size=cfg.data.batch_size, sub_batches=len(keys), parameters=held,
                         trainable=trainable, frozen_copies=frozen)
    plans, skipped = [], {}
    for stage in training_stages(cfg, frozen):
        if stage in FINETUNE_STAGES:
            node, given = FINETUNE_STAGES[stage]
            if cfg[node].get(given):
                skipped[stage] = f"{node}.{given} given"
                continue
            work = replace(base, batch_size=cfg[node].batch_size)
        elif stage == "unlearn":
            work = unlearning
        else:  # relearn: the unlearned policy, trained further on its own language-modeling batches
            work = replace(unlearning, batch_size=cfg.protocol.batch_size, sub_batches=1, frozen_copies=())
        switched = activation_bytes(shape, replace(work, checkpointing=not work.checkpointing),
                                    run_hardware.activation_bytes)
        plans.append(StagePlan(stage, work, training_terms(shape, run_hardware, work, device), switched))
    return RunPlan(shape, run_hardware, sequence, plans, skipped, notes)


def predicted_peak_bytes(cfg: DictConfig, device: str = "gpu", baseline_bytes: float = 0) -> float:
    """The biggest per-rank total over the stages of `cfg`. `device="gpu"`: the device's memory (offloaded
    terms left out); `device="cpu"`: everything a CPU process holds, offloaded terms included, plus
    `baseline_bytes`, the resident memory of the process before it loads a model (measured: python,
    torch, transformers, lightning and this package imported)."""
    stages = plan_run(cfg, device).stages
    return baseline_bytes + max(stage.process_bytes if device == "cpu" else stage.device_bytes for stage in stages)
