"""LoRA unlearning: only adapters train under every method, the reference is the policy with its adapters
off (no second copy), and the saved adapter / merged model round-trip through `unlearn-eval`."""

from __future__ import annotations

import json
from functools import partial

import pytest
import torch

from tests.conftest import PAIRS_FOR_STEP, compose_config, make_tiny_llama
from tests.test_methods import METHODS, one_step, qa_batch
from unlearning.errors import ConfigError
from unlearning.lora import MERGED_FOLDER, LoraSettings, add_adapters, base_weight_name
from unlearning.methods.base import decoder_layer_output, forward_logits
from unlearning.methods.npo import NPO
from unlearning.methods.task_vector import TaskVector
from unlearning.models import frozen_copy
from unlearning.module import UnlearningModule, select_trainable
from unlearning.stages.inputs import reference_model

LORA = LoraSettings(r=4, alpha=8.0)


def adapted(tokenizer):
    return add_adapters(make_tiny_llama(tokenizer), LORA)


def is_adapter(name: str) -> bool:
    return ".lora_" in name


@pytest.mark.parametrize("method", sorted(set(METHODS) - {"task_vector"}))
def test_every_method_trains_adapters_only(method, tokenizer, tmp_path):
    policy = adapted(tokenizer)
    before = {name: p.detach().clone() for name, p in policy.named_parameters()}
    loss = one_step(method, "nll", policy, tokenizer, tmp_path)
    assert torch.isfinite(loss), f"{method}: loss {loss}"
    changed = {name for name, p in policy.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(is_adapter(name) for name in changed), f"{method}: changed {sorted(changed)[:3]}"


def test_task_vector_refuses_lora(tokenizer):
    """The task-vector edit is to base weights, which LoRA freezes and its adapter would not save."""
    with pytest.raises(ConfigError, match="model.lora=null"):
        TaskVector().prepare(adapted(tokenizer), reinforced=frozen_copy(make_tiny_llama(tokenizer, seed=1)))


def test_npo_reference_is_the_base_model_without_a_copy(tokenizer):
    base = make_tiny_llama(tokenizer).eval()
    batch = qa_batch(tokenizer, PAIRS_FOR_STEP[:2])
    with torch.no_grad():
        base_logits = forward_logits(base, batch)
        base_hidden = decoder_layer_output(base, batch, 1)
    policy = add_adapters(base.train(), LORA)
    module = UnlearningModule(policy, NPO(), partial(torch.optim.SGD, lr=1.0), frozen={"ref": reference_model(policy)})
    optimizer = module.configure_optimizers()
    for _ in range(2):  # B starts at 0: the second step makes the adapters change the output
        module.objective(policy, {"forget": batch}, ref=module.frozen["ref"]).backward()
        optimizer.step()
        optimizer.zero_grad()
    ref = module.frozen["ref"]
    assert not torch.allclose(forward_logits(policy, batch), base_logits, atol=1e-4)
    assert torch.allclose(forward_logits(ref, batch), base_logits, atol=1e-6)
    assert torch.allclose(decoder_layer_output(ref, batch, 1), base_hidden, atol=1e-6)
    assert policy.training and not forward_logits(ref, batch).requires_grad
    # One set of weights: the module holds no parameter the policy does not.
    policy_storage = {p.data_ptr() for p in policy.parameters()}
    assert {p.data_ptr() for p in module.parameters()} == policy_storage
    assert sum(p.numel() for p in module.parameters()) == sum(p.numel() for p in policy.parameters())


def test_trainable_params_picks_adapters_by_the_weight_they_adapt(tokenizer):
    """RMU's regex names base weights (`...mlp.down_proj.weight$`); under LoRA it selects their adapters."""
    policy = adapted(tokenizer)
    assert base_weight_name("base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight") == \
        "model.layers.1.mlp.down_proj.weight"
    select_trainable(policy, r"(^|\.)layers\.1\.mlp\.down_proj\.weight$")
    trained = sorted(name for name, p in policy.named_parameters() if p.requires_grad)
    assert trained == ["base_model.model.model.layers.1.mlp.down_proj.lora_A.default.weight",
                       "base_model.model.model.layers.1.mlp.down_proj.lora_B.default.weight"]
    with pytest.raises(ConfigError, match="no adapted weight"):
        select_trainable(adapted(tokenizer), r"embed_tokens")


def test_lora_settings_name_the_bad_key():
    with pytest.raises(ConfigError, match="model.lora.rank"):
        LoraSettings.from_config({"rank": 8})
    with pytest.raises(ConfigError, match="model.lora.r=0"):
        LoraSettings.from_config({"r": 0})


@pytest.mark.ci
@pytest.mark.slow
def test_lora_run_saves_adapter_and_merged_model_that_unlearn_eval_scores(shared_cache, tmp_path):
    """The whole protocol with `model.lora` (merge_on_save): the adapter and the merged model are saved,
    the run's numbers for the unlearned model are those `unlearn-eval` gives the merged folder."""
    from unlearning.pipeline import run, run_evaluation

    run_dir, quick = tmp_path / "run", ["eval.groups.tofu.max_examples=8", "eval.groups.tofu.max_new_tokens=8"]
    run(compose_config([*shared_cache, *quick, "model.lora={r: 4, alpha: 8, merge_on_save: true}",
                        "trainer.max_steps=3"], run_dir=run_dir))
    saved = run_dir / "unlearned"
    assert (saved / "adapter_config.json").exists() and (saved / "adapter_model.safetensors").exists()
    assert not (saved / "model.safetensors").exists()
    assert (saved / MERGED_FOLDER / "model.safetensors").exists()
    results = json.loads((run_dir / "results.json").read_text())
    eval_cfg = compose_config([*quick, f"checkpoint={saved / MERGED_FOLDER}",
                               f"retain_checkpoint={results['paths']['retain']}"],
                              config_name="evaluate", run_dir=tmp_path / "eval")
    scored = run_evaluation(eval_cfg)["checkpoint"]
    for metric in ("forget_quality", "forget_prob", "retain_prob", "forget_rouge"):
        assert scored[metric] == pytest.approx(results["models"]["unlearned"][metric], rel=1e-5), metric
