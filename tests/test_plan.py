"""`unlearn-plan` (unlearning/planning/): parameter counts from configs, the memory terms of a small case
worked out by hand, the hardware switches, `--gpu-memory`, and every shipped paper-scale experiment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from tests.conftest import DATA_DIR, REPO, compose_config
from unlearning.config import build
from unlearning.errors import ConfigError
from unlearning.lora import LoraSettings
from unlearning.planning.cli import main
from unlearning.planning.memory import BACKWARD, Hardware, Workload, peak_bytes, training_terms
from unlearning.planning.shapes import SHAPES_DIR, ModelShape, model_shape
from unlearning.planning.stages import plan_run, predicted_peak_bytes

GIB = 2**30
# The small case of test_memory_terms_of_a_small_case: hidden 8, MLP 16, 2 layers, 2 heads, vocabulary 10, tied.
SMALL = {"hidden_size": 8, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
         "vocab_size": 10, "tie_word_embeddings": True, "max_position_embeddings": 64}
SMALL_WORK = Workload(batch_size=2, sub_batches=2, sequence=4, parameters=1400, trainable=1400,
                      frozen_copies=("ref",), checkpointing=False, eager_attention=False)


def hardware(**changes) -> Hardware:
    single = Hardware(ranks=1, zero_stage=None, offload_optimizer=False, offload_parameters=False,
                      precision="32-true", accelerator="cpu", reduce_bucket_size=200_000_000, overlap_comm=True,
                      max_live_parameters=1_000_000_000, weight_bytes=4)
    return replace(single, **changes)


def terms(work: Workload = SMALL_WORK, device: str = "gpu", **changes) -> dict[str, tuple[float, bool]]:
    shape = ModelShape.from_config_json(SMALL, "test")
    return {term.name: (term.bytes, term.host) for term in training_terms(shape, hardware(**changes), work, device)}


def plan(*overrides: str):
    return plan_run(compose_config(list(overrides)))


def numel(model: torch.nn.Module) -> dict[str, int]:
    return {name: param.numel() for name, param in model.named_parameters()}


def test_parameters_of_stories260k_are_exact(data_dir):
    """stories260K: GQA (8 heads, 4 key/value), head_dim 8, tied; every name and size as instantiated."""
    folder = data_dir / "models" / "stories260K"
    shape = model_shape(build(compose_config(["model=local", f"model.name_or_path={folder}"]).model))
    assert dict(shape.named_parameters()) == numel(LlamaForCausalLM(AutoConfig.from_pretrained(folder)))


@pytest.mark.parametrize("tied", [True, False])
def test_parameters_of_a_llama_config_are_exact(tmp_path, tied):
    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=3,
                         num_attention_heads=6, num_key_value_heads=2, head_dim=16, tie_word_embeddings=tied)
    config.save_pretrained(tmp_path)  # a config.json alone: no weights
    shape = model_shape(build(compose_config(["model=local", f"model.name_or_path={tmp_path}"]).model))
    assert dict(shape.named_parameters()) == numel(LlamaForCausalLM(config))


def test_the_scratch_model_is_counted_from_its_config():
    spec = build(compose_config([]).model)  # tiny_llama: README's 0.46M parameters
    config = LlamaConfig(vocab_size=1024, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, tie_word_embeddings=True)
    assert model_shape(spec).parameters() == sum(numel(LlamaForCausalLM(config)).values()) == 459_392


# Parameter counts the model cards and papers publish.
PUBLISHED = {"meta-llama__Llama-2-7b-chat-hf": 6_738_415_616, "muse-bench__MUSE-news_target": 6_738_415_616,
             "HuggingFaceH4__zephyr-7b-beta": 7_241_732_096, "meta-llama__Llama-3.2-1B-Instruct": 1_235_814_400,
             "microsoft__phi-1_5": 1_418_270_720}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_shipped_shapes_count_the_published_parameters(name):
    fields = json.loads((SHAPES_DIR / f"{name}.json").read_text())
    shape = ModelShape.from_config_json(fields, name)
    assert shape.parameters() == PUBLISHED[name]
    config = AutoConfig.for_model(**fields)
    with torch.device("meta"):  # shapes only, no memory
        assert dict(shape.named_parameters()) == numel(AutoModelForCausalLM.from_config(config))
    assert sorted(path.stem for path in SHAPES_DIR.glob("*.json")) == sorted(PUBLISHED)


@pytest.mark.parametrize("targets", ["all-linear", ["q_proj", "v_proj"], ["down_proj"]])
def test_adapter_parameters_match_peft(tokenizer, targets):
    from peft import LoraConfig, get_peft_model

    config = LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2)
    model = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=4, target_modules=targets, task_type="CAUSAL_LM"))
    shape = ModelShape.from_config_json(config.to_dict(), "test")
    adapters = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert shape.adapter_parameters(LoraSettings(r=4, target_modules=targets)) == adapters
    with pytest.raises(ConfigError, match=r"^model.lora.target_modules=\['fc1'\] adapts no linear module"):
        shape.adapter_parameters(LoraSettings(target_modules=["fc1"]))


def test_memory_terms_of_a_small_case():
    """Hidden 8, MLP 16, 2 layers, 2 heads, vocabulary 10, tied: 80 (embedding) + 2 x (4 x 64 attention +
    3 x 128 MLP + 2 x 8 norms = 656) + 8 (final norm) = 1400 parameters. One process, 32-bit, NPO + a retain
    term (2 sub-batches of 2 sequences of 4 tokens = 8 tokens each), a reference copy:
    weights = gradients = reference = 1400 x 4 = 5600; AdamW's two moments 11200;
    activations: per token and layer 3 x 8 x 2 norms + 3 x 8 (q, attention output, output projection input)
    + 2 x 8 (k, v) + 4 x 16 (MLP) = 152 floats = 608 bytes, x 8 tokens x 2 layers x 2 sub-batches = 19456;
    logits: 8 tokens x 10 x (4 x 2 log-probability sets + 4, the last logits) = 960. Total 48416.
    Checkpointed: 2 sub-batches x 2 layers x 8 tokens x 8 x 4 = 1024, + one layer's 4864 = 5888.
    Eager attention adds the 2 heads x 4 x 4 scores x 2 sequences x 4 bytes = 256 per layer and sub-batch."""
    plain = terms()
    assert plain == {"weights": (5600, False), "gradients": (5600, False),
                     "optimizer states (AdamW moments)": (11200, False), "frozen model: ref": (5600, False),
                     "activations": (19456, False), "logits": (960, False)}
    assert sum(value for value, _ in plain.values()) == 48416
    assert terms(replace(SMALL_WORK, checkpointing=True))["activations (checkpointed)"] == (5888, False)
    assert terms(replace(SMALL_WORK, eager_attention=True))["activations"] == (19456 + 4 * 256, False)
    # DDP over 2 ranks adds its gradient buckets; bf16-mixed on 32-bit weights adds autocast's copies.
    assert terms(ranks=2)["DDP gradient buckets"] == (5600, False)
    assert terms(precision="bf16-mixed")["16-bit weight copies (autocast)"] == (2800, False)


def test_zero3_shards_and_offload_moves_to_host():
    """ZeRO-3 over 2 ranks in 16-bit (w = 2): weights and reference 1400 x 2 / 2 = 1400; gradient partitions
    700 x 2 = 1400, held, and their fp32 copy at the step 700 x 4 = 2800; fp32 master + moments 12 x 1400 / 2
    = 8400; one reduce bucket of 2e8 elements, held (on a CPU, only the 2800 bytes of gradients written to
    it); gathered weights: up to 1e9 elements, the whole model, 1400 x 2 = 2800 (more than 2 layers of 656);
    activations and logits in 16-bit: 19456 / 2 = 9728 and 8 x 10 x (8 + 2 + 4 for the fp32 copy) = 1120.
    On a CPU also 1400 x 2 = 2800 of weight-shaped tensors through backward. The peak on a CPU: held 1400 +
    1400 + 8400 + 2800 + 1400 = 15400, plus the larger of forward (9728 + 1120 + 2800 + 2800 = 16448) and
    backward (2800): 31848. With stage3_max_live_parameters = 100, the 2 layers (2 x 656 x 2 = 2624)."""
    zero3 = dict(ranks=2, zero_stage=3, precision="bf16-mixed", weight_bytes=2)
    sharded = terms(**zero3)
    gathered = "ZeRO-3 gathered weights (stage3_max_live_parameters, at least 2 layers)"
    assert sharded == {"weights": (1400, False), "gradient partitions": (1400, False),
                       "fp32 copy of the gradient partitions at the step": (2800, False),
                       "optimizer states (fp32 master + AdamW moments)": (8400, False),
                       "DeepSpeed reduce buckets": (4e8, False), gathered: (2800, False),
                       "frozen model: ref": (1400, False), "activations": (9728, False), "logits": (1120, False)}
    assert terms(max_live_parameters=100, **zero3)[gathered] == (2624, False)
    shape = ModelShape.from_config_json(SMALL, "test")
    on_cpu = training_terms(shape, hardware(**zero3), SMALL_WORK, "cpu")
    assert {term.name: term.bytes for term in on_cpu}["DeepSpeed reduce buckets"] == 2800
    assert {term.name: term.bytes for term in on_cpu}[
        "ZeRO-3 full-size weight-shaped tensors in backward (owner not found)"] == 2800
    assert {term.name for term in on_cpu if term.phase == BACKWARD} == {
        "fp32 copy of the gradient partitions at the step"}
    assert peak_bytes(on_cpu) == 31848
    assert peak_bytes(training_terms(shape, hardware(), SMALL_WORK)) == 48416  # one process: all at once
    offloaded = terms(offload_optimizer=True, offload_parameters=True, **zero3)
    assert {name for name, (_, host) in offloaded.items() if host} == {
        "weights", "gradients (fp32, offloaded)", "optimizer states (fp32 master + AdamW moments)", "frozen model: ref"}
    assert offloaded["gradients (fp32, offloaded)"] == (2800, True)  # fp32: 1400 x 4 / 2
    zero2 = terms(ranks=2, zero_stage=2, precision="bf16-mixed", weight_bytes=2)
    assert zero2["weights"] == (2800, False) and zero2["gradients + their fp32 copy at the step"] == (4200, False)
    assert zero2["DeepSpeed reduce buckets"] == (8e8, False)  # two buckets with overlap_comm


def test_hardware_configs_read_as_planned():
    zero3 = plan("experiment=tofu_paper")
    assert (zero3.hardware.ranks, zero3.hardware.zero_stage, zero3.hardware.weight_bytes) == (8, 3, 2)
    unlearn = {stage.name: stage for stage in zero3.stages}["unlearn"]
    assert unlearn.work.batch_size == 4 and unlearn.work.sub_batches == 2  # NPO + the NLL retain term
    halved = {s.name: s for s in plan("experiment=tofu_paper", "trainer.devices=4").stages}["unlearn"]
    weights = {t.name: t.bytes for t in unlearn.terms}["weights"]
    assert weights == 6_738_415_616 * 2 / 8 and {t.name: t.bytes for t in halved.terms}["weights"] == 2 * weights
    offload = plan("experiment=tofu_paper", "hardware=deepspeed_zero3_offload", "trainer.devices=8")
    unlearn_offload = {s.name: s for s in offload.stages}["unlearn"]
    assert unlearn_offload.device_bytes < unlearn.device_bytes - 10 * GIB and unlearn_offload.host_bytes > 10 * GIB
    auto = plan("hardware=deepspeed_zero3")
    assert auto.hardware.ranks == 1 and auto.notes[0].startswith("trainer.devices=auto: planned as 1 device")
    assert plan("hardware=ddp").hardware.ranks == 2
    assert plan("trainer.num_nodes=3", "trainer.devices=2").hardware.ranks == 6


def test_checkpointing_shrinks_activations_and_lora_drops_the_reference_copy():
    """Llama-2-7b, 2 sub-batches of 4 x 512 tokens in 16-bit. Per token and layer 9 x 4096 + 2 x 4096 + 4 x 11008
    = 89088 values, 178176 bytes; x 2048 tokens x 32 layers x 2 = 23,353,884,672 bytes. Checkpointed: each
    layer's input, 2 x 32 x 2048 x 4096 x 2 = 1,073,741,824, + one layer's 178176 x 2048 = 1,438,646,272."""
    plain = {s.name: s for s in plan("experiment=tofu_paper", "model.gradient_checkpointing=false").stages}["unlearn"]
    checkpointed = {s.name: s for s in plan("experiment=tofu_paper").stages}["unlearn"]
    assert {t.name: t.bytes for t in plain.terms}["activations"] == checkpointed.other_activations == 23_353_884_672
    assert {t.name: t.bytes for t in checkpointed.terms}["activations (checkpointed)"] == plain.other_activations \
        == 1_438_646_272
    lora = {s.name: s for s in plan("experiment=tofu_paper", "model.lora={r:8,target_modules:[q_proj,v_proj]}").stages}
    # adapters on q and v of 32 layers: 8 x (4096 + 4096) x 2 x 32 = 4,194,304 trainable; no reference copy
    assert lora["unlearn"].work.trainable == 4_194_304 and lora["unlearn"].work.frozen_copies == ()
    assert lora["finetune_target"].work.trainable == 6_738_415_616  # LoRA is for unlearning only
    rmu = plan("experiment=wmdp_rmu_paper").stages[0]  # the down projections of layers 5-7: 3 x 4096 x 14336
    assert rmu.work.trainable == 176_160_768


def test_cpu_prediction_adds_offloaded_terms_and_the_baseline():
    cfg = compose_config(["experiment=tofu_paper", "hardware=deepspeed_zero3_offload", "trainer.devices=8"])
    unlearn = {s.name: s for s in plan_run(cfg, "cpu").stages}["unlearn"]
    assert predicted_peak_bytes(cfg, "cpu", baseline_bytes=100) == 100 + unlearn.process_bytes
    assert unlearn.process_bytes > unlearn.device_bytes + 10 * GIB  # the offloaded terms are in host memory


def test_an_unknown_hub_id_is_one_line():
    with pytest.raises(ConfigError, match=r"^model.name_or_path=org/unknown-7b: no folder org/unknown-7b here, "
                                          r"and no shape shipped for that hub id .*give a local folder"):
        plan("model=local", "model.name_or_path=org/unknown-7b")


@pytest.mark.parametrize(("arguments", "message"), [
    (["--gpu-memory", "0"], "error: --gpu-memory=0 is not allowed; valid: a positive, finite number of GiB"),
    (["--gpu-memory", "lots"], "error: unlearn-plan: argument --gpu-memory: invalid float value: 'lots'"),
    (["+trainer.strategy=fsdp"], "error: trainer.strategy=fsdp: unlearn-plan plans one process, DDP and DeepSpeed "
                                "ZeRO (conf/hardware/)"),
    (["trainer.precision=transformer-engine"], "error: trainer.precision='transformer-engine' is not one of "
                                               "32-true, bf16-mixed, 16-mixed, bf16-true, 16-true, 64-true"),
    (["data.batch_size=0"], "error: data.batch_size=0 is out of range; valid: >= 1"),
    (["nosuchkey=1"], "error: Could not override 'nosuchkey'."),
])
def test_bad_input_is_one_line(arguments, message):
    with pytest.raises(SystemExit) as exit_:
        main(arguments)
    assert exit_.value.code == message


# Every shipped paper-scale experiment: the stages in its table, and those skipped (a model given).
PAPER_STAGES = {
    "tofu_paper": ("finetune_target finetune_retain unlearn", ""),
    "paper_scale_tofu": ("finetune_target finetune_retain unlearn", ""),
    "chen2024_paper": ("finetune_target finetune_retain unlearn", ""),
    "undial_sequential_paper": ("finetune_target finetune_retain unlearn", ""),
    "undial_stability_paper": ("finetune_target finetune_retain unlearn", ""),
    "undial_strength_paper": ("finetune_target finetune_retain unlearn", ""),
    "relearning_paper": ("finetune_target finetune_retain unlearn relearn", ""),
    "muse_paper": ("unlearn", "finetune_target finetune_retain"),
    "wmdp_rmu_paper": ("unlearn", "finetune_target finetune_retain"),
    "whp_paper": ("finetune_reinforced unlearn", "finetune_target"),
}


@pytest.mark.parametrize("experiment", sorted(PAPER_STAGES))
def test_every_paper_experiment_is_planned(experiment, capsys):
    main([f"experiment={experiment}", "--gpu-memory", "80"])  # all fit on 80 GB GPUs: no exit
    out = capsys.readouterr().out
    trained, skipped = (names.split() for names in PAPER_STAGES[experiment])
    assert next(line for line in out.splitlines() if line.startswith("| GiB per rank")) == \
        "| " + " | ".join(["GiB per rank", *trained]) + " |"
    assert [line.split()[1] for line in out.splitlines() if line.startswith("skipped:")] == skipped
    assert [line.split(":")[0] for line in out.splitlines() if line.endswith("GiB)")] == [f"- {s}" for s in trained]
    assert sorted(path.stem for path in (REPO / "conf" / "experiment").glob("*paper*.yaml")) == sorted(PAPER_STAGES)


def test_a_config_that_cannot_fit_exits_1_with_one_line():
    """Llama-2-7b over 8 ZeRO-3 ranks without checkpointing, batch 16 x 2 sub-batches of 512 tokens: held
    weights 1,684,603,904 + gradient partitions 1,684,603,904 + optimizer 10,107,623,424 + reduce bucket
    400,000,000 + reference 1,684,603,904 = 15,561,435,136; forward: activations 178176 bytes x 8192 tokens
    x 32 layers x 2 = 93,415,538,688 (87.00 GiB) + logits 8192 x 32000 x (8 + 2 + 4) = 3,670,016,000 +
    gathered weights 1e9 x 2 = 2,000,000,000; together 114,646,989,824 bytes = 106.77 GiB. Checkpointed,
    the activations are 4,294,967,296 + 1,459,617,792: 25.13 GiB in all; a batch of 4 gives 38.96 GiB."""
    command = [sys.executable, "-c", "from unlearning.planning.cli import main; main()", "experiment=tofu_paper",
               "model.gradient_checkpointing=false", "data.batch_size=16", "--gpu-memory", "40"]
    environment = {**os.environ, "PYTHONPATH": str(REPO), "UNLEARNING_DATA_DIR": str(DATA_DIR)}
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, env=environment)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line == ("error: stage unlearn needs 106.77 GiB per rank, more than --gpu-memory 40: largest term "
                    "activations: 87.00 GiB; fits with model.gradient_checkpointing=true (25.13 GiB) or "
                    "data.batch_size=4 (38.96 GiB)")
    assert "| **total per rank on the GPU** | **26.27** | **26.27** | **106.77** |" in done.stdout
    assert "- finetune_target: fits (26.27 GiB)" in done.stdout
