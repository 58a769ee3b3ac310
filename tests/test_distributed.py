"""Multi-process training on 2 CPU processes (gloo): DDP, DeepSpeed ZeRO-2 and ZeRO-3 (unlearning/strategies.py).

Loss curves. Every run logs the per-step `train/forget_loss` (under 2 processes the mean over the ranks) to
logs/unlearn/*/metrics.csv. The 2-process runs train with data.batch_size=4 per rank, the single-process
reference with 8: the sampler gives rank r every 2nd example of the same permutation, so step k's two
batches together are the reference's batch k. retain=none, because retain samples are drawn per rank on
purpose and cannot match. Relative tolerance per step:
- NPO 1e-4: its loss is a mean over sequences, so the mean of the two 4-sequence means is the 8-sequence
  mean and the averaged gradient is the full-batch gradient; only float summation order differs (~1e-7).
- GradAscent 5e-3: its loss is a mean over the answer tokens of the batch; two ranks average two
  half-batch token means, weighting a token by 1/(2 n_r) instead of 1/(n_0 + n_1) when the halves hold
  different numbers of answer tokens (measured: at most 8e-4 over 4 steps).
The same tolerances hold for the unlearned model's evaluation (`forget_prob`): what rank 0 saved under
ZeRO-3 is the full trained model. The first DeepSpeed run builds DeepSpeed's CPU communication op once
(~1-2 min, cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.conftest import REPO, compose_config
from unlearning.data.datamodule import EpochPermutation, PairedDataset
from unlearning.experiment import Experiment
from unlearning.pipeline import run
from unlearning.stages.finetune import base_model

TOLERANCE = {"npo": 1e-4, "grad_ascent": 5e-3}
HARDWARE = {"ddp": ["hardware=ddp", "trainer.accelerator=cpu"],
            "zero2": ["hardware=deepspeed_zero2", "trainer.accelerator=cpu", "trainer.devices=2",
                      "trainer.precision=32-true"],
            "zero3": ["hardware=deepspeed_zero3", "trainer.accelerator=cpu", "trainer.devices=2",
                      "trainer.precision=32-true"]}
EVAL_DURING_TRAINING = ["eval.during_training.every_n_steps=2", "eval.during_training.max_examples=4",
                        "eval.during_training.monitor=forget_quality"]


@pytest.fixture(scope="module")
def overrides(tmp_path_factory) -> list[str]:
    """A short unlearning run from the untrained tiny Llama (as target and retain model: no finetuning)."""
    cache = tmp_path_factory.mktemp("cache")
    base = base_model(Experiment.from_config(compose_config([f"paths.cache_dir={cache}"], run_dir=cache / "base_run")))
    return ["retain=none", "~lm_eval", "checkpoint_every_n_steps=null", f"paths.cache_dir={cache}",
            f"finetune.target_path={base}", f"finetune.retain_path={base}", "trainer.max_steps=4",
            "trainer.log_every_n_steps=1", "eval.groups.tofu.max_examples=4", "eval.groups.tofu.max_new_tokens=4"]


@pytest.fixture(scope="module")
def single_process(overrides, tmp_path_factory):
    """The single-process reference run of a method (batch 8), made once."""
    runs = {}

    def reference(method: str) -> Path:
        if method not in runs:
            runs[method] = tmp_path_factory.mktemp(f"single_{method}")
            run(compose_config([f"method={method}", "data.batch_size=8", *overrides], run_dir=runs[method]))
        return runs[method]

    return reference


def forget_losses(run_dir: Path) -> list[float]:
    (metrics,) = (run_dir / "logs" / "unlearn").glob("*/metrics.csv")
    header, *rows = [line.split(",") for line in metrics.read_text().splitlines()]
    column = header.index("train/forget_loss")
    return [float(row[column]) for row in rows if row[column]]


def unlearned(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())["models"]["unlearned"]


def test_ranks_split_the_single_process_batches():
    """11 examples, 2 ranks with batches of 2: the permutation is padded with its first example to 12,
    rank r takes positions r, r+2, ...; step k's two batches are the single-process batch k of 4."""
    data = PairedDataset("forget", list(range(11)), {}, seed=0, rank=0)
    single = list(EpochPermutation(data, seed=0, batch_size=4))
    ranks = [list(EpochPermutation(data, seed=0, batch_size=2, rank=r, world=2)) for r in range(2)]
    assert [len(r) for r in ranks] == [6, 6]
    for step in range(3):
        halves = ranks[0][2 * step:2 * step + 2] + ranks[1][2 * step:2 * step + 2]
        assert sorted(halves) == sorted((single + single[:1])[4 * step:4 * step + 4])


@pytest.mark.slow
@pytest.mark.parametrize(("strategy", "method"), [
    ("ddp", "npo"), ("ddp", "grad_ascent"), ("zero2", "npo"), ("zero2", "grad_ascent"),
    pytest.param("zero3", "npo", marks=pytest.mark.ci), ("zero3", "grad_ascent")])
def test_two_processes_follow_the_single_process_loss_curve(strategy, method, overrides, single_process, tmp_path):
    during = EVAL_DURING_TRAINING if method == "npo" else []
    command = [sys.executable, str(Path(sys.executable).parent / "unlearn"), f"hydra.run.dir={tmp_path}",
               f"method={method}", "data.batch_size=4", "hydra.verbose=true", *overrides, *HARDWARE[strategy], *during]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Starting with 2 processes" in done.stdout + done.stderr
    reference = single_process(method)
    losses = forget_losses(tmp_path)
    assert len(losses) == 4
    assert losses == pytest.approx(forget_losses(reference), rel=TOLERANCE[method])
    assert unlearned(tmp_path)["forget_prob"] == pytest.approx(unlearned(reference)["forget_prob"],
                                                               rel=TOLERANCE[method])
    saved = load_file(tmp_path / "unlearned" / "model.safetensors")
    assert saved.keys() == load_file(reference / "unlearned" / "model.safetensors").keys()
    assert all(tensor.numel() > 0 for tensor in saved.values())
    if during:  # every rank evaluated (ZeRO-3 forward passes need all of them), rank 0 logged and saved
        history = json.loads((tmp_path / "eval_during_training.json").read_text())
        assert [entry["step"] for entry in history] == [0, 2, 4]
        best = load_file(tmp_path / "best" / "model.safetensors")
        assert {k: v.shape for k, v in best.items()} == {k: v.shape for k, v in saved.items()}


@pytest.mark.ci
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["ddp", "zero3"])
def test_ranks_draw_their_own_retain_samples_and_zero3_shards_frozen_models(strategy, tmp_path):
    """tests/distributed_probe.py: NPO + retain NLL for 2 steps on 2 processes, each rank's batches and
    frozen reference parameters recorded. The ranks train on different retain samples; under ZeRO-3
    the reference model is partitioned (each rank holds an empty placeholder of every parameter, its
    shard living in DeepSpeed's ds_tensor), under DDP each rank holds a full frozen copy. After `fit` no
    ZeRO optimizer is alive: DeepSpeed's globals would otherwise keep the whole training state in memory
    while the rank loads the model it evaluates (strategies.release_engine)."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "distributed_probe.py"), strategy, str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(rank["world_size"] == 2 for rank in ranks)
    assert ranks[0]["retain"] != ranks[1]["retain"]
    assert all(rank["zero_optimizers_alive"] == 0 for rank in ranks)
    for rank in ranks:
        sizes = rank["frozen"].values()
        assert sizes and all(full > 0 for _, full in sizes)
        if strategy == "zero3":
            assert all(held == 0 for held, _ in sizes)
        else:
            assert all(held == full for held, full in sizes)


@pytest.mark.ci
@pytest.mark.slow
def test_zero3_loads_every_model_partitioned(data_dir, tmp_path):
    """tests/partitioned_load_probe.py: under ZeRO-3 on 2 processes the policy and the reference are
    partitioned as they are loaded: each rank holds empty placeholders and about half of the elements
    in its shards, the reference is loaded (frozen), not copied from the policy."""
    done = subprocess.run([sys.executable, str(REPO / "tests" / "partitioned_load_probe.py"),
                           str(data_dir / "models" / "stories260K"), str(tmp_path)],
                          capture_output=True, text=True, timeout=600, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for rank in ranks:
        assert not rank["ref_is_policy"]
        for model in ("policy", "ref"):
            held, shards, full = rank[model]["held"], rank[model]["shards"], rank[model]["full"]
            assert held == 0 and full > 250_000
            assert full / 2 <= shards <= full / 2 + 64 * 100  # half of every parameter, padded per parameter
        assert rank["policy"]["requires_grad"] and not rank["ref"]["requires_grad"]
    assert ranks[0]["policy"]["full"] == ranks[1]["policy"]["full"]


def test_zero_settings_reach_deepspeed_config():
    """`trainer.strategy.zero_settings` adds `zero_optimization` keys Lightning's arguments do not reach."""
    from unlearning.strategies import DeepSpeedOnAnyDevice

    strategy = DeepSpeedOnAnyDevice(stage=3, zero_settings={"stage3_max_live_parameters": 10_000_000})
    zero = strategy.config["zero_optimization"]
    assert zero["stage"] == 3 and zero["stage3_max_live_parameters"] == 10_000_000
    assert "stage3_max_live_parameters" not in DeepSpeedOnAnyDevice(stage=3).config["zero_optimization"]


def test_a_model_zero3_did_not_partition_is_refused_in_one_line(data_dir, monkeypatch):
    """A model class that builds its parameters outside `deepspeed.zero.Init` loads whole on every rank:
    refused by name instead of training unpartitioned."""
    from contextlib import contextmanager

    from unlearning.config import build
    from unlearning.errors import ConfigError
    from unlearning.stages import training
    from unlearning.stages.training import StageTrainer

    @contextmanager
    def zero3_that_does_not_partition(trainer):
        yield True

    monkeypatch.setattr(training, "partitioned_loading", zero3_that_does_not_partition)
    folder = data_dir / "models" / "stories260K"
    spec = build({"_target_": "unlearning.models.PretrainedModel", "name": "probe", "name_or_path": str(folder)})
    trainer = StageTrainer(trainer={}, optimizer=None, template=spec.template, max_length=64, seed=0, logger=None)
    with pytest.raises(ConfigError, match=rf"^hardware runs DeepSpeed ZeRO-3, but LlamaForCausalLM from {folder} "
                                          r"was not partitioned at load .*: use hardware=deepspeed_zero2 or ddp"):
        trainer.load(spec, folder)
