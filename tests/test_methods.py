"""Every method config takes a real optimizer step on a tiny model: finite loss, weights changed (TRL's habit)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from tests.conftest import PAIRS_FOR_STEP, compose_config, make_tiny_llama
from unlearning.cli import CONFIG_DIR
from unlearning.data.anchored_terms import anchor_records
from unlearning.data.collate import PromptTemplate, encode_qa, pad_batch
from unlearning.models import frozen_copy
from unlearning.module import UnlearningModule
from unlearning.stages.inputs import declared, reference_model

METHODS = sorted(p.stem for p in (Path(CONFIG_DIR) / "method").glob("*.yaml"))
RETAINS = sorted(p.stem for p in (Path(CONFIG_DIR) / "retain").glob("*.yaml"))


def qa_batch(tokenizer, pairs) -> dict[str, torch.Tensor]:
    encoded = [encode_qa(tokenizer, PromptTemplate(), q, a, max_length=64) for q, a in pairs]
    return pad_batch(encoded, tokenizer.pad_token_id)


def one_step(method: str, retain: str, model, tokenizer, tmp_path) -> torch.Tensor:
    cfg = compose_config([f"method={method}", f"retain={retain}"], run_dir=tmp_path)
    objective = instantiate(cfg.method)
    regularizer = instantiate(cfg.retain) if cfg.get("retain") else None
    # The reinforced model (WHP, task vectors) is another tiny Llama: any frozen model of the same shape.
    available = {"ref": lambda: reference_model(model),
                 "reinforced": lambda: frozen_copy(make_tiny_llama(tokenizer, seed=1))}
    frozen = {name: available[name]() for name in declared(objective, regularizer)[1]}
    module = UnlearningModule(model, objective, instantiate(cfg.optimizer, lr=1e-2), regularizer, frozen=frozen)
    forget_records = [{"question": q, "answer": a} for q, a in PAIRS_FOR_STEP[:2]]
    batch = {"forget": qa_batch(tokenizer, PAIRS_FOR_STEP[:2]), "retain": qa_batch(tokenizer, PAIRS_FOR_STEP[2:]),
             "alternate": qa_batch(tokenizer, [(q, "I don't know.") for q, _ in PAIRS_FOR_STEP[:2]]),
             "anchored": pad_batch(anchor_records(tokenizer, PromptTemplate(), forget_records,
                                                  {"Paris": "Lyon", "town": "village"}, 64), tokenizer.pad_token_id)}
    optimizer = module.configure_optimizers()
    module.log = lambda *args, **kwargs: None  # no Trainer here: logging is the Trainer's job
    loss = module.training_step(batch, 0)
    loss.backward()
    optimizer.step()
    return loss


@pytest.mark.parametrize("method", METHODS)
def test_method_step_changes_weights(method, model, tokenizer, tmp_path):
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    loss = one_step(method, "nll", model, tokenizer, tmp_path)
    assert torch.isfinite(loss), f"{method}: loss {loss}"
    changed = [name for name, p in model.named_parameters() if not torch.equal(p, before[name])]
    assert changed, f"{method}: no weight changed"


@pytest.mark.parametrize("retain", RETAINS)
def test_retain_regularizers_combine_with_a_method(retain, model, tokenizer, tmp_path):
    loss = one_step("grad_ascent", retain, model, tokenizer, tmp_path)
    assert torch.isfinite(loss)


def test_reference_model_only_when_declared(model):
    from unlearning.methods.grad_ascent import GradAscent
    from unlearning.methods.npo import NPO
    from unlearning.retain import KLRetain, NLLRetain

    from unlearning.errors import ConfigError

    optimizer = torch.optim.SGD
    assert declared(GradAscent(), NLLRetain()) == (("forget", "retain"), ())
    assert declared(GradAscent(), KLRetain())[1] == ("ref",)
    assert declared(NPO(), KLRetain())[1] == ("ref",)  # each frozen model once
    ref = reference_model(model)
    assert not any(p.requires_grad for p in ref.parameters()) and ref is not model
    assert not UnlearningModule(model, GradAscent(), optimizer, NLLRetain()).frozen
    assert UnlearningModule(model, NPO(), optimizer, None, frozen={"ref": ref}).frozen["ref"] is ref
    with pytest.raises(ConfigError, match=r"frozen model\(s\) \['ref'\] that this stage does not provide"):
        UnlearningModule(model, NPO(), optimizer, None)
