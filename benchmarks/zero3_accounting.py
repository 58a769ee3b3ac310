"""Where a rank's memory goes: resident memory at each phase of the first training steps, and the live
tensors behind it, named where DeepSpeed's ZeRO optimizer or a model owns them.

One run of the unlearning stage (as benchmarks/plan_vs_reality.py runs it: `unlearning.stages.unlearn`
on a saved randomly initialised Llama, NPO + retain NLL) with a callback that, on every rank, records
VmRSS and the peak since the previous mark (VmHWM, reset at each mark through /proc/self/clear_refs) after
loading (`setup`), after the strategy wrapped the models (`fit_start`), and per step before the forward,
after the forward, after backward and after the optimizer step. At the marks of the first step it also
sums every live tensor's storage (once per storage) by owner: the ZeRO optimizer's flat buffers, the
policy's and the frozen models' parameters (their ZeRO-3 shards), the optimizer's moments, the rest.

    python -m benchmarks.zero3_accounting --layers 4 -- hardware=deepspeed_zero3 trainer.accelerator=cpu \
        trainer.devices=2 trainer.precision=bf16-mixed

A sampling thread also keeps, per phase, the Python stack and the tensors at the largest RSS sample.
`--trim`: RSS after malloc_trim at each mark (what glibc holds freed). ACCOUNTING_DETAIL=1 in the
environment: unnamed large tensors by shape and referrer, and what autograd saves for backward at step 1.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import defaultdict
from pathlib import Path

import lightning as L
import torch

from benchmarks.memory import EXACT_ALLOCATOR, MIB
from benchmarks.plan_vs_reality import run_rank
from benchmarks.workload import REPO, Settings

DETAIL = os.environ.get("ACCOUNTING_DETAIL") == "1"  # slow: referrers of every unnamed large tensor
FIRST_STEP_MARKS = ("fit_start", "forward", "backward", "step")


def status() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {key: int(fields[key].split()[0]) * 1024 for key in ("VmRSS", "VmHWM")}


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


def owners(pl_module: L.LightningModule, engine) -> dict[int, str]:
    """Storage address -> owner, for what the ZeRO optimizer and the models hold."""
    named: dict[int, str] = {}

    def name(tensor, owner: str) -> None:
        if isinstance(tensor, torch.Tensor) and tensor.numel():
            named.setdefault(tensor.untyped_storage().data_ptr(), owner)

    optimizer = getattr(engine, "optimizer", None)
    for attribute in ("fp16_partitioned_groups_flat", "fp32_partitioned_groups_flat", "averaged_gradients",
                      "grad_partitions_flat_buffer", "lp_param_buffer", "single_partition_of_fp32_groups",
                      "bit16_groups_flat", "averaged_gradients"):
        value = getattr(optimizer, attribute, None)
        values = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
        for tensor in values:
            for item in tensor if isinstance(tensor, list) else [tensor]:
                name(item, f"zero: {attribute}")
                name(getattr(item, "grad", None), f"zero: {attribute}.grad")
    for dtype, bucket in getattr(optimizer, "ipg_buckets", {}).items():
        name(getattr(bucket, "buffer", None), f"zero: ipg bucket {dtype}")
    inner = getattr(optimizer, "optimizer", None)
    for state in getattr(inner, "state", {}).values():
        for key, tensor in state.items():
            name(tensor, f"optimizer state {key}")
    frozen = getattr(pl_module, "frozen", None)
    frozen_ids = set()
    for model_name, model in (frozen.items() if hasattr(frozen, "items") else []):
        for param in model.parameters():
            frozen_ids.add(id(param))
            name(getattr(param, "ds_tensor", None), f"frozen {model_name}: ZeRO-3 shard")
            name(param, f"frozen {model_name}: parameter")
    for param in pl_module.parameters():
        if id(param) not in frozen_ids:
            name(getattr(param, "ds_tensor", None), "policy: ZeRO-3 shard")
            name(param, "policy: parameter")
            name(param.grad, "policy: .grad")
    return named


def census(named: dict[int, str]) -> dict[str, int]:
    """Bytes of every live tensor storage reachable from Python, by owner (unnamed: by dtype and shape)."""
    seen, sizes = set(), defaultdict(int)
    for obj in gc.get_objects():
        if not isinstance(obj, torch.Tensor) or obj.device.type != "cpu" or obj.is_meta:
            continue
        storage = obj.untyped_storage()
        if storage.data_ptr() in seen or storage.nbytes() == 0:
            continue
        seen.add(storage.data_ptr())
        owner = named.get(storage.data_ptr())
        if owner is None:
            owner = f"other {str(obj.dtype).removeprefix('torch.')} {'large' if storage.nbytes() > MIB else 'small'}"
            if DETAIL and storage.nbytes() > MIB:
                holders = ",".join(sorted({type(r).__name__ + (f"[{r.__class__.__module__}]" if not isinstance(
                    r, (dict, list, tuple)) else "") for r in gc.get_referrers(obj)} - {"frame[builtins]"}))
                owner = (f"{owner} {tuple(obj.shape)} {type(obj).__name__} rg={obj.requires_grad} "
                         f"fn={type(obj.grad_fn).__name__} ds={hasattr(obj, 'ds_id')} held by {holders}")
        sizes[owner] += storage.nbytes()
    return dict(sizes)


class PeakLocator(threading.Thread):
    """Samples this process's RSS every millisecond and keeps the main thread's Python stack at the
    largest sample since `take` was last called: where a phase's peak happens."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.main, self.page = threading.main_thread().ident, os.sysconf("SC_PAGE_SIZE")
        self.largest, self.where, self.tensors, self.census = 0, [], {}, None  # census: set after setup

    def run(self) -> None:
        statm = open("/proc/self/statm")
        while True:
            statm.seek(0)
            resident = int(statm.read().split()[1]) * self.page
            if resident > self.largest:
                frame = sys._current_frames().get(self.main)
                if self.census is not None and resident > self.largest + 8 * MIB:
                    self.tensors = self.census()  # the tensors behind a new peak (slow: only on big rises)
                self.largest = resident
                self.where = [f"{Path(f.filename).name}:{f.lineno} {f.name}"
                              for f in traceback.extract_stack(frame)[-12:]] if frame else []
            time.sleep(0.001)

    def take(self) -> tuple[int, list[str]]:
        found = self.largest, self.where, self.tensors
        self.largest, self.where, self.tensors = 0, [], {}
        return found


class PhaseMemory(L.Callback):
    """Writes `<folder>/rank<r>.json`: a list of {mark, step, rss, peak since the previous mark, tensors}."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.records, self.step = folder, [], 0
        self.trim = os.environ.get("ACCOUNTING_TRIM") == "1"
        self.locator = PeakLocator()
        self.locator.start()

    def mark(self, trainer, pl_module, label: str) -> None:
        memory = status()
        sampled, where, at_peak = self.locator.take()
        record = {"mark": label, "step": self.step, "rss": memory["VmRSS"], "peak": memory["VmHWM"],
                  "sampled": sampled, "where": where, "at_peak": at_peak}
        if label == "fit_start":
            engine = getattr(trainer.strategy, "model", None)
            self.locator.census = lambda: census(owners(pl_module, engine))
        if self.step == 0 and label in FIRST_STEP_MARKS:
            record["tensors"] = census(owners(pl_module, getattr(trainer.strategy, "model", None)))
        if self.trim:  # what glibc's heaps hold freed but not returned: RSS after giving it back
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            record["trimmed"] = status()["VmRSS"]
        self.records.append(record)
        (self.folder / f"rank{trainer.global_rank}.json").write_text(json.dumps(self.records))
        reset_peak()

    def setup(self, trainer, pl_module, stage) -> None:
        self.mark(trainer, pl_module, "setup")

    def on_fit_start(self, trainer, pl_module) -> None:
        self.mark(trainer, pl_module, "fit_start")

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.mark(trainer, pl_module, "before forward")
        if DETAIL and self.step == 1:
            self.saved = defaultdict(int)
            seen = set()

            def pack(tensor):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    kind = (f"{type(tensor).__name__} ds={hasattr(tensor, 'ds_id')} {str(tensor.dtype)[6:]} "
                            f"{'weight-shaped' if tuple(tensor.shape) in self.weight_shapes else 'other'}")
                    self.saved[kind] += storage.nbytes()
                return tensor

            self.weight_shapes = {tuple(getattr(p, "ds_shape", p.shape)) for p in pl_module.parameters()}
            self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor)
            self.hooks.__enter__()

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        if DETAIL and self.step == 1:
            self.hooks.__exit__(None, None, None)
            print("saved for backward:", {k: f"{v / MIB:.1f} MiB" for k, v in self.saved.items()}, file=sys.stderr)
        self.mark(trainer, pl_module, "forward")

    def on_after_backward(self, trainer, pl_module) -> None:
        self.mark(trainer, pl_module, "backward")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.mark(trainer, pl_module, "step")
        self.step += 1


def build_model(folder: Path, layers: int) -> int:
    """benchmarks/zero3_memory.py's Llama with `layers` decoder layers; its parameter count."""
    from benchmarks import zero3_memory

    shape = dict(zero3_memory.SHAPE)
    zero3_memory.SHAPE["num_hidden_layers"] = layers
    try:
        return zero3_memory.build_model(folder, Settings().data_dir / "models" / "stories260K")
    finally:
        zero3_memory.SHAPE.update(shape)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["--rank-run"]:
        run_rank(argv[2:], PhaseMemory(Path(argv[1])))
        return
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zero3_accounting", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=4, help="decoder layers (4: 51.6M parameters)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--trim", action="store_true", help="malloc_trim at each mark, RSS after it")
    parser.add_argument("--stacks", action="store_true", help="where each peak happened, every step")
    parser.add_argument("overrides", nargs="*", help="`unlearn` overrides: the hardware")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(scratch)
        (work / "model").mkdir()
        parameters = build_model(work / "model", args.layers)
        model = work / "model"
        overrides = ["model=local", f"model.name_or_path={model}", f"finetune.target_path={model}",
                     f"finetune.retain_path={model}", "method=npo", "retain=nll", "data.batch_size=2",
                     f"max_length={args.max_length}", "trainer.max_steps=3", "logger=none",
                     "checkpoint_every_n_steps=null", f"paths.cache_dir={work / 'cache'}",
                     f"paths.run_dir={work / 'run'}", *args.overrides]
        (work / "marks").mkdir()
        done = subprocess.run([sys.executable, "-m", "benchmarks.zero3_accounting", "--rank-run",
                               str(work / "marks"), *overrides], cwd=REPO, env={**os.environ, **EXACT_ALLOCATOR,
                                                                  "ACCOUNTING_TRIM": str(int(args.trim))},
                              capture_output=True, text=True)
        ranks = {path.stem: json.loads(path.read_text()) for path in sorted((work / "marks").glob("rank*.json"))}
        if done.returncode != 0 and not ranks:
            raise RuntimeError(done.stderr[-3000:])
        if done.returncode != 0:  # the marks were written: a rank failed after training
            print(f"exit {done.returncode} after training: {done.stderr.strip().splitlines()[-1]}")
        print("".join(line + "\n" for line in done.stderr.splitlines() if line.startswith("saved for backward")))
    print(f"{parameters / 1e6:.1f}M parameters; overrides: {' '.join(args.overrides)}")
    for rank, records in ranks.items():
        print(f"## {rank}")
        for record in records:
            print(f"step {record['step']} {record['mark']:>15}: rss {record['rss'] / MIB:7.0f} MiB, "
                  f"peak since previous mark {record['peak'] / MIB:7.0f} MiB (sampled {record['sampled'] / MIB:.0f})"
                  + (f", after malloc_trim {record['trimmed'] / MIB:.0f}" if "trimmed" in record else ""))
            if record["step"] == 1 or args.stacks:
                print("".join(f"{'':30}at {frame}\n" for frame in record["where"]), end="")
                for owner, size in sorted(record["at_peak"].items(), key=lambda item: -item[1]):
                    print(f"{'':30}at peak: {owner:45} {size / MIB:8.1f} MiB  {size / parameters:6.2f} B/param")
            for owner, size in sorted(record.get("tensors", {}).items(), key=lambda item: -item[1]):
                print(f"{'':30}{owner:45} {size / MIB:8.1f} MiB  {size / parameters:6.2f} B/param")


if __name__ == "__main__":
    main()
