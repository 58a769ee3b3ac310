"""Several processes (DDP, DeepSpeed ZeRO-2/3) for every stage of a run, on GPUs or on CPU.

How a multi-process run goes (`unlearn hardware=ddp`, `hardware=deepspeed_zero3`, ...):
- `start_processes` starts every rank's process before the pipeline (Lightning would start them at the
  first `fit`, after rank 0 already took the stage cache's lock: a deadlock). Each process runs the same
  pipeline; under torchrun / SLURM the processes exist already and only the process group is set up.
- Stages: rank 0 takes the cache lock and decides build-or-reuse for all (`broadcast`); every rank
  trains (one collective fit) and `save_full_weights` gathers ZeRO-3 shards, rank 0 alone writes.
- Under ZeRO-3 every model a training stage loads (policy, reference, reinforced, any teacher) is
  partitioned as it is constructed (`partitioned_loading`: transformers' DeepSpeed integration runs
  `from_pretrained` inside `deepspeed.zero.Init`): no rank ever holds a full copy, and the reference is
  loaded from the target's folder, never a deep copy of the policy. Frozen models live inside the
  LightningModule (`module.frozen`), so DeepSpeed gathers their shards for each forward like the policy's;
  under DDP and ZeRO-2 every rank holds a full frozen copy.
- After the last training stage every rank evaluates a full replica loaded from the saved weights (each
  scores its share, unlearning/sharding.py), then `end_processes` ends the process group; rank 0 writes
  the results, the other ranks return.
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
from omegaconf import DictConfig
from torch import nn

from unlearning.errors import ConfigError


class DeepSpeedOnAnyDevice(DeepSpeedStrategy):
    """Lightning's DeepSpeed strategy, also on CPU (gloo): Lightning refuses any accelerator but CUDA and
    gives DeepSpeed the CUDA device index, which a CPU device lacks. Takes every DeepSpeedStrategy
    argument; a torch optimizer runs with the default `zero_allow_untested_optimizer=True`.
    `zero_settings`: further `zero_optimization` keys by DeepSpeed's names, e.g. ZeRO-3's
    `stage3_max_live_parameters` (how many gathered elements stay resident between uses), which
    Lightning's arguments do not reach."""

    def __init__(self, *args: Any, zero_settings: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config["zero_optimization"].update(zero_settings or {})

    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # DeepSpeedStrategy's own only adds the CUDA-only check

    def setup_distributed(self) -> None:
        if self.root_device.type != "cpu":
            return super().setup_distributed()
        # as Lightning's, less its check of CUDA device indices against the local ranks
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def teardown(self) -> None:
        """After a fit, also let the engine go: DeepSpeed's own globals keep it (and with it the optimizer's
        fp32 master weights, moments and gradient partitions) alive for as long as the process runs.
        What stays is each ZeRO-3 parameter's shard, enough to gather the weights for saving."""
        engine = self.model if hasattr(self.model, "optimizer") and hasattr(self.model, "destroy") else None
        super().teardown()
        if engine is not None:
            release_engine(engine)

    def _setup_model_and_optimizer(self, model: nn.Module, optimizer, lr_scheduler=None):
        import deepspeed

        engine, deepspeed_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank),
            config=self.config,
            model=model,
            model_parameters=[p for p in model.parameters() if p.requires_grad],
            optimizer=optimizer,
            lr_scheduler=lr_scheduler,
            dist_init_required=False,
        )
        return engine, deepspeed_optimizer


def release_engine(engine) -> None:
    """Drop what DeepSpeed's module-level state holds of a finished `engine` (DeepSpeed 0.19; see
    deepspeedai/DeepSpeed#4856): `destroy` removes its hooks; the ZeRO-3 parameter coordinator's
    `__params_to_release` is an `lru_cache` on the class, keyed by coordinator and module;
    `FWD_MODULE_STACK` keeps the wrapped module from the engine's creation on; each parameter's
    `_z3_optimizer` points at the optimizer. Measured on CPU ranks: without this a rank still holds the
    whole training state when it loads the model it evaluates (benchmarks/RESULTS.md item 7)."""
    from deepspeed.runtime.zero import parameter_offload
    from deepspeed.runtime.zero.partitioned_param_coordinator import PartitionedParameterCoordinator

    engine.destroy()
    module = engine.module
    parameter_offload.FWD_MODULE_STACK[:] = [m for m in parameter_offload.FWD_MODULE_STACK if m is not module]
    release_cache = PartitionedParameterCoordinator.__dict__.get("_PartitionedParameterCoordinator__params_to_release")
    for cell in getattr(release_cache, "__closure__", None) or ():  # the lru_cache under DeepSpeed's nvtx wrapper
        if hasattr(cell.cell_contents, "cache_clear"):
            cell.cell_contents.cache_clear()
    for param in module.parameters():
        if hasattr(param, "_z3_optimizer"):
            del param._z3_optimizer


def zero3_init_config(trainer: Mapping) -> dict | None:
    """The DeepSpeed config `deepspeed.zero.Init` partitions models with, when `trainer` (the hardware's
    Trainer arguments) runs ZeRO-3 in a process group; None otherwise. The strategy's own config, with
    the precision Lightning would add at `fit` (the dtype the shards are kept in)."""
    node = trainer.get("strategy")
    if not isinstance(node, Mapping) or not distributed():  # a name ("ddp") is never ZeRO-3
        return None
    from unlearning.config import build

    strategy = build(node)
    if not isinstance(strategy, DeepSpeedStrategy) or not strategy.zero_stage_3:
        return None
    precision = str(trainer.get("precision", "32-true"))
    dtypes = {"bf16": {"bf16": {"enabled": True}}, "16": {"fp16": {"enabled": True}}}
    return {"train_micro_batch_size_per_gpu": 1, **strategy.config, **dtypes.get(precision.split("-")[0], {})}


@contextmanager
def partitioned_loading(trainer: Mapping) -> Iterator[bool]:
    """Under ZeRO-3 (see `zero3_init_config`), models loaded inside are constructed partitioned: an
    `HfDeepSpeedConfig` alive during `from_pretrained` makes transformers build the model inside
    `deepspeed.zero.Init`, and each rank keeps only its shard. Yields whether it partitions."""
    config = zero3_init_config(trainer)
    if config is None:
        yield False
        return
    from transformers.integrations import HfDeepSpeedConfig
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    alive = HfDeepSpeedConfig(config)  # transformers keeps only a weak reference to it
    try:
        yield True
    finally:
        unset_hf_deepspeed_config()
        del alive


def is_partitioned(model: nn.Module) -> bool:
    """Whether every parameter of `model` is a ZeRO-3 shard."""
    return all(hasattr(p, "ds_id") for p in model.parameters())


def start_processes(trainer: DictConfig) -> None:
    """Start the processes and the process group of a multi-process `trainer` config (a `strategy` over
    more than one device); nothing for a single process."""
    if not trainer.get("strategy"):
        return
    from lightning.fabric import Fabric

    fabric = Fabric(accelerator=trainer.get("accelerator", "auto"), devices=trainer.get("devices", "auto"),
                    num_nodes=trainer.get("num_nodes", 1), strategy="ddp")
    if fabric.world_size > 1:
        fabric.launch()  # re-runs the command line in the other processes (Hydra-aware), then joins the group


def distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def global_rank() -> int:
    return torch.distributed.get_rank() if distributed() else 0


def barrier() -> None:
    if distributed():
        torch.distributed.barrier()


def broadcast(value: Any) -> Any:
    """Rank 0's `value` on every rank."""
    if not distributed():
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def require_one_process(cfg: DictConfig, protocol_name: str) -> None:
    """Protocols that train again after evaluating run in one process: they score between training
    stages and report without `Experiment.evaluate`, which ends the process group and reports on rank 0."""
    if str(cfg.trainer.get("devices", 1)) != "1":
        raise ConfigError(f"protocol={protocol_name} runs in one process: set trainer.devices=1 "
                          f"(got {cfg.trainer.get('devices')})")


def end_processes() -> bool:
    """After the evaluation: wait for every rank and end the process group. True on the process that
    reports (rank 0, or the only one)."""
    if not distributed():
        return True
    rank = global_rank()
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()
    return rank == 0


def zero3_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """Under ZeRO-3, the model's complete weights on rank 0 (None on the others, and without ZeRO-3).
    The shards are gathered one module at a time, so no rank ever holds more than one layer beyond
    its shard. Collective: every rank calls it."""
    if not any(hasattr(p, "ds_id") for p in model.parameters()):  # not even partly partitioned
        return None
    import deepspeed

    lead = global_rank() == 0
    state, copies = {}, {}  # a tied weight (embeddings = LM head) stays one tensor, as save_pretrained expects
    for prefix, module in model.named_modules():
        params = dict(module.named_parameters(recurse=False))
        with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
            if lead:
                for name, param in params.items():
                    if id(param) not in copies:
                        copies[id(param)] = param.detach().cpu().clone()
                    state[f"{prefix}.{name}" if prefix else name] = copies[id(param)]
        if lead:
            state.update({f"{prefix}.{name}" if prefix else name: buffer.detach().cpu().clone()
                          for name, buffer in module.named_buffers(recurse=False)
                          if name not in module._non_persistent_buffers_set})
    return state if lead else None


def save_full_weights(model: nn.Module, tokenizer, folder: str | Path) -> None:
    """`save_pretrained` of the complete model by rank 0; call it on every rank (ZeRO-3 gathers)."""
    state = zero3_state_dict(model)
    if global_rank() == 0:
        model.save_pretrained(folder, **({} if state is None else {"state_dict": state}))
        tokenizer.save_pretrained(folder)
    barrier()
