"""Item 7: peak memory per rank of a ≥100M-parameter Llama under ZeRO-3 on 2 processes vs 1 process.

Each measurement is one run of the unlearning stage (NPO + retain NLL, `trainer.max_steps` steps, the
target and retain models given as the saved model folder, so no finetuning), every rank writing its peak
RSS when training ends (benchmarks/plan_vs_reality.py's rank run): loading plus the steps, the issue's
measure. `--whole-run` measures instead at exit of a whole `unlearn` run (benchmarks/peak_rss), which
also saves and has every rank evaluate full replicas of its models (a handful of examples). `--code`
runs another checkout's `unlearning` package (e.g. the commit before partitioned loading; its
`benchmarks` must have the rank run, or give `--whole-run`):

    python -m benchmarks.zero3_memory [--whole-run] [--precision 32-true] [--code /path/to/old/checkout]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from benchmarks.report import Section
from benchmarks.workload import REPO, Settings, Workload

GIB = 2**30
HOOK = REPO / "benchmarks" / "peak_rss"
SHAPE = {"hidden_size": 1024, "intermediate_size": 2752, "num_hidden_layers": 20, "num_attention_heads": 16}
RUN = ["method=npo", "retain=nll", "trainer.max_steps=3", "data.batch_size=2", "max_length=64", "~lm_eval",
       "logger=none", "eval.groups.tofu.max_examples=2", "eval.groups.tofu.max_new_tokens=2",
       "checkpoint_every_n_steps=null"]
# ZeRO-3's buffers sized for this model rather than for 7B on GPUs: Lightning's defaults bucket 2e8 elements
# and run the optimizer step on one sub-group of 1e12, DeepSpeed's keep up to 1e9 gathered elements
# resident (`zero_settings`, which a checkout before it existed does not take: `--code` leaves it out).
BUCKETS = ["+trainer.strategy.reduce_bucket_size=10000000", "+trainer.strategy.allgather_bucket_size=10000000",
           "+trainer.strategy.sub_group_size=10000000"]
ZERO_SETTINGS = ["+trainer.strategy.zero_settings={stage3_max_live_parameters: 10000000, stage3_max_reuse_distance: "
                 "10000000, stage3_prefetch_bucket_size: 10000000, stage3_param_persistence_threshold: 10000}"]


def hardware(precision: str, zero_settings: bool) -> dict[str, list[str]]:
    return {"1 process": ["hardware=cpu", f"trainer.precision={precision}"],
            "ZeRO-3, 2 processes": ["hardware=deepspeed_zero3", "trainer.accelerator=cpu", "trainer.devices=2",
                                    f"trainer.precision={precision}", *BUCKETS, *(ZERO_SETTINGS if zero_settings else [])]}


def build_model(folder: Path, tokenizer_dir: Path) -> int:
    """A randomly initialised Llama of SHAPE with stories260K's tokenizer, saved as safetensors; its size."""
    for name in tokenizer_dir.iterdir():
        if name.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(name, folder / name.name)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=512, num_key_value_heads=SHAPE["num_attention_heads"],
                                         max_position_embeddings=256, **SHAPE))
    model.save_pretrained(folder)
    return sum(p.numel() for p in model.parameters())


def peaks(model: Path, hardware: list[str], work: Path, code: Path, whole_run: bool) -> list[int]:
    """Peak RSS of each rank, rank order: at the end of training (loading + the steps, the issue's
    measure: benchmarks/plan_vs_reality.py's rank run of the unlearning stage), or `whole_run`: at exit of
    an `unlearn` run, which also saves and has every rank evaluate full replicas of its models."""
    peak_dir = work / "peaks"
    shutil.rmtree(peak_dir, ignore_errors=True)
    peak_dir.mkdir(parents=True)
    env = {**os.environ, "PEAK_RSS_DIR": str(peak_dir), "PYTHONPATH": f"{code}{os.pathsep}{HOOK}",
           "MALLOC_MMAP_THRESHOLD_": str(64 * 1024)}  # peak RSS follows live tensors (see memory.py)
    overrides = [*RUN, *hardware, "model=local", f"model.name_or_path={model}", f"finetune.target_path={model}",
                 f"finetune.retain_path={model}", f"paths.cache_dir={work / 'cache'}"]
    # The console script or a module, not `python -c`: Lightning starts rank 1 by running the same command line.
    command = ([str(Path(sys.executable).parent / "unlearn"), *overrides, f"hydra.run.dir={work / 'run'}"]
               if whole_run else [sys.executable, "-m", "benchmarks.plan_vs_reality", "--rank-run", str(peak_dir),
                                  *overrides, f"paths.run_dir={work / 'run'}"])
    if not whole_run:
        env["PYTHONPATH"] = f"{code}{os.pathsep}{REPO}"
    done = subprocess.run(command, env=env, cwd=work if whole_run else REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(hardware)} failed:\n{done.stderr[-3000:]}")
    if not whole_run:
        return [json.loads(path.read_text())["peak_rss_bytes"] for path in sorted(peak_dir.glob("rank*.json"))]
    records = [json.loads(path.read_text()) for path in peak_dir.glob("*.json")]
    by_rank: dict[int, int] = {}
    for record in records:  # a rank's helper processes (compilers) are smaller: keep each rank's largest
        by_rank[record["rank"]] = max(by_rank.get(record["rank"], 0), record["peak_rss_bytes"])
    return [by_rank[rank] for rank in sorted(by_rank)]


def measure(workload: Workload, log_dir: Path, code: Path = REPO, precision: str = "bf16-mixed",
            whole_run: bool = False) -> Section:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "model").mkdir()
        n_params = build_model(work / "model", workload.settings.data_dir / "models" / "stories260K")
        runs = hardware(precision, zero_settings=code == REPO)
        measured = {name: peaks(work / "model", overrides, work, code, whole_run) for name, overrides in runs.items()}
    single = measured["1 process"][0]
    rows = [[name, ", ".join(f"{peak / GIB:.2f}" for peak in ranks), f"{max(ranks) / single:.2f}"]
            for name, ranks in measured.items()]
    return Section(
        title="7. Peak memory per rank under ZeRO-3 (2 processes) vs 1 process",
        summary=(f"Peak RSS of every rank of one run ({'`unlearn`' if whole_run else 'the unlearning stage'}): a "
                 f"randomly initialised Llama of {n_params / 1e6:.0f}M parameters (hidden {SHAPE['hidden_size']}, "
                 f"{SHAPE['num_hidden_layers']} layers, float32 weights, `trainer.precision={precision}`) loaded "
                 f"from a folder as target, NPO + retain NLL for 3 steps (batch 2, max_length 64)"
                 f"{', evaluation of 2 examples' if whole_run else ''}. Code: {code}. Peak "
                 + ("at exit (saving and evaluation included)" if whole_run else "when training ends (loading + 3 steps)")
                 + ". Target: the largest ZeRO-3 rank <= 0.6x the single process."),
        columns=["run", "peak RSS per rank (GiB)", "largest rank / 1 process"],
        rows=rows,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--code", type=Path, default=REPO, help="the checkout whose `unlearning` package runs")
    parser.add_argument("--precision", default="bf16-mixed", help="trainer.precision of both runs")
    parser.add_argument("--whole-run", action="store_true", help="the peak at exit of `unlearn` (saving, evaluation)")
    args = parser.parse_args()
    print(measure(Workload(Settings()), Path("."), args.code, args.precision, args.whole_run).markdown())
