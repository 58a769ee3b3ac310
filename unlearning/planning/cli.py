"""`unlearn-plan`: will a run fit in memory? The memory per rank of each training stage, before launch.

    unlearn-plan experiment=tofu_paper trainer.devices=8 --gpu-memory 80

Takes the overrides `unlearn` takes (composed with Hydra's compose API and checked as `unlearn` checks
them) and prints one table: per training stage, each memory term per rank (unlearning/planning/memory.py),
the total, and the activations with gradient checkpointing switched the other way. With `--gpu-memory`,
it says which stages fit and, for one that does not, its largest term and the switches that make it fit
(checkpointing, ZeRO-3, ZeRO-3 with offload, LoRA, a smaller per-device batch), each with its new total,
worked out by planning the config again with the switch; then it exits 1 with one line on stderr.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
from dataclasses import replace
from typing import Sequence

from hydra import compose, initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig

from unlearning.cli import OneLineParser, console_script
from unlearning.command_line import check_command_line
from unlearning.config import CONFIG_DIR
from unlearning.errors import ConfigError, UnlearningError
from unlearning.planning.memory import BACKWARD, training_terms
from unlearning.planning.stages import FINETUNE_STAGES, RunPlan, StagePlan, plan_run

GIB = 2**30
LORA = "model.lora={r:8,alpha:16,target_modules:all-linear,dropout:0.0}"
BATCH_KEYS = {"unlearn": "data.batch_size", "relearn": "protocol.batch_size",
              **{stage: f"{node}.batch_size" for stage, (node, _) in FINETUNE_STAGES.items()}}


def compose_run(overrides: Sequence[str]) -> DictConfig:
    """The config `unlearn <overrides>` runs with (its run folder aside: nothing is written)."""
    keys = {override_key(override) for override in overrides}
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="config",
                       overrides=[*overrides, *([] if "paths.run_dir" in keys else ["paths.run_dir=unlearn-plan"])])


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def switched(overrides: Sequence[str], switch: Sequence[str]) -> list[str]:
    """`overrides` with the `switch` overrides in place of any of the same keys."""
    keys = {override_key(override) for override in switch}
    return [override for override in overrides if override_key(override) not in keys] + list(switch)


def gib(count: float) -> str:
    return f"{count / GIB:.2f}"


def describe_hardware(plan: RunPlan, cfg: DictConfig) -> str:
    hardware = plan.hardware
    if hardware.zero_stage is None:
        kind = "DDP" if hardware.ranks > 1 else "one process"
    else:
        offload = [name for name, on in (("optimizer", hardware.offload_optimizer),
                                         ("parameters", hardware.offload_parameters)) if on]
        kind = f"DeepSpeed ZeRO-{hardware.zero_stage}" + (f", {' and '.join(offload)} offloaded" if offload else "")
    attention = cfg.model.get("attn_implementation") or "sdpa (transformers' default)"
    ranks = f"{hardware.ranks} rank{'s' if hardware.ranks > 1 else ''}"
    return (f"{ranks} (trainer.devices x trainer.num_nodes) on {hardware.accelerator}, {kind}, "
            f"precision {hardware.precision}: weights {hardware.weight_bytes} bytes, activations "
            f"{hardware.activation_bytes} bytes; gradient checkpointing "
            f"{'on' if cfg.model.get('gradient_checkpointing') else 'off'}, attention {attention}; sequences of "
            f"{plan.sequence} tokens (max_length {cfg.max_length})")


def table(plan: RunPlan, cfg: DictConfig) -> str:
    from unlearning.report.tables import markdown_table

    stages = plan.stages
    fullest_first = sorted(stages, key=lambda stage: -len(stage.terms))
    phases = {term.name: term.phase for stage in fullest_first for term in stage.terms}
    total = "total per rank (CPU memory)" if plan.hardware.accelerator == "cpu" else "total per rank on the GPU"

    def row(label: str, cell) -> list[str]:
        return [label, *(cell(stage) for stage in stages)]

    def term_cell(name: str):
        def cell(stage: StagePlan) -> str:
            term = next((term for term in stage.terms if term.name == name), None)
            return "-" if term is None else gib(term.bytes) + (" (host)" if term.host else "")
        return cell

    grid = [["GiB per rank", *(stage.name for stage in stages)],
            row("batch per rank x sub-batches", lambda s: f"{s.work.batch_size} x {s.work.sub_batches}"),
            row("trainable parameters", lambda s: f"{s.work.trainable:,}"),
            *(row(name + (" †" if phase == BACKWARD else ""), term_cell(name)) for name, phase in phases.items()),
            row(f"**{total}**", lambda s: f"**{gib(s.device_bytes)}**")]
    if any(stage.host_bytes for stage in stages):
        grid.append(row("host memory (offloaded)", lambda s: gib(s.host_bytes)))
    other = "false" if cfg.model.get("gradient_checkpointing") else "true"
    grid.append(row(f"activations with model.gradient_checkpointing={other} (not counted)",
                    lambda s: gib(s.other_activations)))
    after = ("\n\n† from the backward pass to the optimizer step only (DeepSpeed), when activations and logits are "
             "freed: a total counts the larger of the two groups" if BACKWARD in phases.values() else "")
    return markdown_table(grid) + after


def candidate_switches(cfg: DictConfig, plan: RunPlan) -> list[tuple[str, ...]]:
    """The switches that may save memory and are not on yet (a hardware switch keeps the device count)."""
    hardware, devices = plan.hardware, cfg.trainer.get("devices")
    keep = () if str(devices) in ("auto", "-1", "None") else (f"trainer.devices={devices}",)
    switches = [] if cfg.model.get("gradient_checkpointing") else [("model.gradient_checkpointing=true",)]
    if hardware.zero_stage != 3:
        switches.append(("hardware=deepspeed_zero3", *keep))
    if not (hardware.zero_stage == 3 and hardware.offload_optimizer and hardware.offload_parameters):
        switches.append(("hardware=deepspeed_zero3_offload", *keep))
    if cfg.model.get("lora") is None:
        switches.append((LORA,))
    return switches


def fitting_switches(overrides: Sequence[str], cfg: DictConfig, plan: RunPlan, stage: StagePlan,
                     limit: float) -> list[tuple[str, float]]:
    """The smallest combinations of switches that bring `stage` within `limit` bytes, and the largest
    per-device batch that does alone, each with the stage's new total."""
    found: list[tuple[str, float]] = []
    switches = candidate_switches(cfg, plan)
    for size in range(1, len(switches) + 1):
        for combination in itertools.combinations(switches, size):
            if sum(any("hardware=" in part for part in switch) for switch in combination) > 1:
                continue
            change = [part for switch in combination for part in switch]
            replanned = plan_run(compose_run(switched(overrides, change)))
            total = next(s.device_bytes for s in replanned.stages if s.name == stage.name)
            if total <= limit:
                found.append((" ".join(change), total))
        if found:
            break
    for batch in range(stage.work.batch_size - 1, 0, -1):
        work = replace(stage.work, batch_size=batch)
        total = replace(stage, work=work, terms=training_terms(plan.shape, plan.hardware, work)).device_bytes
        if total <= limit:
            found.append((f"{BATCH_KEYS[stage.name]}={batch}", total))
            break
    return found


def verdicts(overrides: Sequence[str], cfg: DictConfig, plan: RunPlan, gpu_memory: float) -> str | None:
    """Print whether each stage fits in `gpu_memory` GiB; the error line of the biggest misfit, if any."""
    limit, errors = gpu_memory * GIB, {}
    print(f"\n--gpu-memory {gpu_memory:g} GiB per rank:")
    for stage in plan.stages:
        if stage.device_bytes <= limit:
            print(f"- {stage.name}: fits ({gib(stage.device_bytes)} GiB)")
            continue
        largest, fixes = stage.largest, fitting_switches(overrides, cfg, plan, stage, limit)
        remedy = (f"fits with {' or '.join(f'{change} ({gib(total)} GiB)' for change, total in fixes)}" if fixes else
                  "no switch of checkpointing, ZeRO-3 (with offload), LoRA or batch size makes it fit: more ranks "
                  "(trainer.devices, trainer.num_nodes) or a bigger GPU")
        why = f"largest term {largest.name}: {gib(largest.bytes)} GiB; {remedy}"
        print(f"- {stage.name}: does not fit ({gib(stage.device_bytes)} GiB): {why}")
        errors[f"stage {stage.name} needs {gib(stage.device_bytes)} GiB per rank, more than --gpu-memory "
               f"{gpu_memory:g}: {why}"] = stage.device_bytes
    return max(errors, key=errors.get) if errors else None


@console_script
def main(argv: Sequence[str] | None = None) -> None:
    parser = OneLineParser(prog="unlearn-plan", description=__doc__,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gpu-memory", type=float, metavar="GiB",
                        help="memory of one GPU: say which stages fit, and what would make the others fit")
    args, overrides = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
    if args.gpu_memory is not None and not (math.isfinite(args.gpu_memory) and args.gpu_memory > 0):
        raise ConfigError(f"--gpu-memory={args.gpu_memory:g} is not allowed; valid: a positive, finite number of GiB")
    check_command_line(overrides, CONFIG_DIR)
    from unlearning.schema import prepare_config
    from unlearning.settings import RunSettings

    try:
        cfg = compose_run(overrides)
        prepare_config(cfg, RunSettings)
        plan = plan_run(cfg)
        print("unlearn-plan: memory per rank of each training stage")
        print(f"model: {cfg.model.name}, {plan.shape.describe()}\nhardware: {describe_hardware(plan, cfg)}")
        print("".join(f"skipped: {stage} ({why})\n" for stage, why in plan.skipped.items())
              + "".join(f"note: {note}\n" for note in plan.notes))
        print(table(plan, cfg) if plan.stages else "no training stage: nothing to plan")
        error = verdicts(overrides, cfg, plan, args.gpu_memory) if args.gpu_memory is not None else None
    except UnlearningError as failure:
        sys.exit(f"error: {failure}")
    except HydraException as failure:
        sys.exit(f"error: {str(failure).splitlines()[0]}")
    if error:
        sys.stdout.flush()
        sys.exit(f"error: {error}")
