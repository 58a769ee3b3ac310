"""The memory and speed switches of every model config: `model.gradient_checkpointing` and
`model.attn_implementation` change how a model computes, not what."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import DATA_DIR, compose_config
from unlearning.config import build
from unlearning.errors import ConfigError
from unlearning.experiment import Experiment
from unlearning.methods.base import forward_logits
from unlearning.ops import mean_token_nll

STORIES = DATA_DIR / "models" / "stories260K"
BATCH_TEXT = ["Once upon a time there was a little girl.", "The dog ran to the park and played."]


def loss_and_grads(spec) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model, tokenizer = spec.load(STORIES)
    batch = tokenizer(BATCH_TEXT, return_tensors="pt", padding=True)
    batch["labels"] = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    loss = mean_token_nll(forward_logits(model, batch), batch["labels"])
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


def spec_for(*overrides: str):
    return build(compose_config(["model=local", f"model.name_or_path={STORIES}", *overrides]).model)


def test_gradient_checkpointing_gives_the_same_loss_and_gradients():
    plain, checkpointed = spec_for(), spec_for("model.gradient_checkpointing=true")
    assert checkpointed.load(STORIES)[0].is_gradient_checkpointing
    assert not plain.load(STORIES)[0].is_gradient_checkpointing
    (loss, grads), (loss_ckpt, grads_ckpt) = loss_and_grads(plain), loss_and_grads(checkpointed)
    assert loss_ckpt.item() == pytest.approx(loss.item(), abs=1e-5)
    assert grads.keys() == grads_ckpt.keys()
    for name in grads:
        torch.testing.assert_close(grads_ckpt[name], grads[name], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_attention_implementations_agree(implementation):
    def logits(spec):
        model, tokenizer = spec.load(STORIES)
        batch = tokenizer(BATCH_TEXT, return_tensors="pt", padding=True)
        with torch.no_grad():
            return forward_logits(model.eval(), batch)[batch["attention_mask"].bool()], model

    chosen, model = logits(spec_for(f"model.attn_implementation={implementation}"))
    assert model.config._attn_implementation == implementation
    torch.testing.assert_close(chosen, logits(spec_for("model.attn_implementation=eager"))[0], atol=1e-4, rtol=0)


def test_flash_attention_without_the_package_is_one_line():
    with pytest.raises(ConfigError, match=r"^model.attn_implementation=flash_attention_2 needs the flash-attn package"):
        spec_for("model.attn_implementation=flash_attention_2")
    with pytest.raises(ConfigError, match=r"^model.attn_implementation='fast' is not one of \['eager', 'sdpa', "):
        spec_for("model.attn_implementation=fast")


def test_the_switches_leave_the_stage_cache_keys_alone(tmp_path):
    def key(*overrides):
        return Experiment.from_config(compose_config(list(overrides), run_dir=tmp_path)).model_key

    assert key() == key("model.gradient_checkpointing=true", "model.attn_implementation=eager")
    assert key() != key("model.hidden_size=64")
